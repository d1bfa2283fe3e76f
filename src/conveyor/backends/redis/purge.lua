-- purge: delete finished jobs whose expires_at has passed (at most `limit` per call).
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G   ARGV[3]  limit
-- ARGV[4..]  queue prefixes QP
-- Returns the number of jobs deleted. After the last chunk (fewer than `limit` deleted)
-- it also forgets tenants with nothing ready, default settings and a vtime not ahead of
-- the queue's clock: re-activation would give them exactly that vtime, so nothing is
-- lost, and the tenant hash does not grow with every tenant ever seen. (A running job
-- does not need its tenant's vtime: one given back becomes ready through make_ready,
-- which starts the tenant at the queue's clock all the same.) That pass is
-- O(tenants of the queue).
local now = clock(ARGV[1])
local G = ARGV[2]
local limit = tonumber(ARGV[3])
local deleted = 0
for i = 4, #ARGV do
    local QP = ARGV[i]
    if deleted >= limit then
        break
    end
    local ids = redis.call('ZRANGE', QP .. 'exp', '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0, limit - deleted)
    for _, id in ipairs(ids) do
        local key = jkey(G, id)
        local f = redis.call('HMGET', key, 'state', 'tenant')
        redis.call('ZREM', QP .. 'exp', id)
        if f[1] == 'succeeded' or f[1] == 'cancelled' or f[1] == 'dead' then
            redis.call('ZREM', QP .. 's:' .. f[1], id)
            count(QP, f[1], f[2], -1)
            redis.call('DEL', key)
            deleted = deleted + 1
        end
    end
end
if deleted < limit then
    for i = 4, #ARGV do
        local QP = ARGV[i]
        if redis.call('HSETNX', QP .. 'meta', 'counts', '2') == 1 then
            -- Once per queue: count fields that older versions kept and nothing reads
            -- any more (see count() in _lib.lua).
            drop_counts(QP, 'queued:')
            if not counts_running(QP) then
                drop_counts(QP, 'running:')
            end
        end
        local vclock = tonumber(redis.call('HGET', QP .. 'meta', 'vclock') or '0')
        local vt = redis.call('HGETALL', QP .. 'tv')
        for j = 1, #vt, 2 do
            local tenant = vt[j]
            if tonumber(vt[j + 1]) <= vclock
                and redis.call('EXISTS', QP .. 'r:' .. tenant) == 0
                and redis.call('HEXISTS', QP .. 'tw', tenant) == 0
                and redis.call('HEXISTS', QP .. 'tm', tenant) == 0 then
                redis.call('HDEL', QP .. 'tv', tenant)
            end
        end
    end
end
return deleted
