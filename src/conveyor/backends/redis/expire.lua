-- expire: waiting jobs past their deadline (no external completion) time out: queued
-- again while attempts are left, else dead; the attempt records ExternalTimeout.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3..]  queue prefixes QP
-- Returns a flat list: id, new state, id, new state, ...
local now = clock(ARGV[1])
local G = ARGV[2]
local snow = fmt(now)
local out = {}
for i = 3, #ARGV do
    local QP = ARGV[i]
    local woke = false
    for _, id in ipairs(redis.call('ZRANGE', QP .. 'waits', '-inf', snow, 'BYSCORE')) do
        redis.call('ZREM', QP .. 'waits', id)
        local key = jkey(G, id)
        local f = redis.call('HMGET', key, 'state', 'tenant', 'task', 'attempt', 'max_attempts',
            'key', 'base_priority')
        if f[1] == 'waiting' then
            local tenant, task, attempt = f[2], f[3], tonumber(f[4])
            append_error(G, id, '{"attempt":' .. attempt .. ',"type":"ExternalTimeout",'
                .. '"message":"no external completion before the deadline","traceback":null,"at":'
                .. snow .. '}')
            redis.call('HDEL', key, 'lease_expires_at')
            local new = attempt < tonumber(f[5]) and 'queued' or 'dead'
            set_state(G, QP, id, tenant, 'waiting', new)
            redis.call('HSET', key, 'priority', f[7])
            if new == 'queued' then
                make_ready(G, QP, id, tenant, task, f[7], now)
                woke = true
            else
                redis.call('HSET', key, 'finished_at', snow)
                release_key(G, id, f[6])
                settle_dependents(G, id, new, task, now)
            end
            out[#out + 1] = id
            out[#out + 1] = new
        end
    end
    if woke then wake(QP) end
end
return out
