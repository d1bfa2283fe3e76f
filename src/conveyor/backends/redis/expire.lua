-- expire: waiting jobs past their deadline (no external completion) time out. Two
-- calls, since the retry delay comes from the task's backoff, which only the caller
-- knows:
--   'list'   ARGV[4..] queue prefixes QP (drops stale index entries only). Returns
--            a flat list of QP, id, task, attempt for each overdue waiting job.
--   'expire' ARGV[4..] groups of QP, id, attempt, delay. Each job still waiting, past
--            its deadline and on that attempt (a completion or a new claim landing
--            between the two calls wins) goes retrying until now + delay (queued at
--            once when delay is 0) while attempts are left, else dead; the attempt
--            records ExternalTimeout. Returns a flat list: id, new state, ...
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G   ARGV[3]  mode
local now = clock(ARGV[1])
local G = ARGV[2]
local snow = fmt(now)
local out = {}
if ARGV[3] == 'list' then
    for i = 4, #ARGV do
        local QP = ARGV[i]
        for _, id in ipairs(redis.call('ZRANGE', QP .. 'waits', '-inf', snow, 'BYSCORE')) do
            local f = redis.call('HMGET', jkey(G, id), 'state', 'task', 'attempt')
            if f[1] == 'waiting' then
                out[#out + 1] = QP
                out[#out + 1] = id
                out[#out + 1] = f[2]
                out[#out + 1] = f[3]
            else -- stale entry: nothing waits any more
                redis.call('ZREM', QP .. 'waits', id)
            end
        end
    end
    return out
end
local woke = {}
for i = 4, #ARGV, 4 do
    local QP, id, expected, delay = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local deadline = redis.call('ZSCORE', QP .. 'waits', id)
    local key = jkey(G, id)
    local f = redis.call('HMGET', key, 'state', 'tenant', 'task', 'attempt', 'max_attempts',
        'key', 'base_priority')
    if deadline and tonumber(deadline) <= now and f[1] == 'waiting' and f[4] == expected then
        redis.call('ZREM', QP .. 'waits', id)
        local tenant, task, attempt = f[2], f[3], tonumber(f[4])
        append_error(G, id, '{"attempt":' .. attempt .. ',"type":"ExternalTimeout",'
            .. '"message":"no external completion before the deadline","traceback":null,"at":'
            .. snow .. '}')
        redis.call('HDEL', key, 'lease_expires_at')
        local new = retry_state(attempt, tonumber(f[5]), delay)
        set_state(G, QP, id, tenant, 'waiting', new)
        redis.call('HSET', key, 'priority', f[7])
        if new == 'queued' then
            make_ready(G, QP, id, tenant, task, f[7], now)
            woke[QP] = true
        elseif new == 'retrying' then
            local run_at = fmt(now + delay)
            redis.call('HSET', key, 'run_at', run_at)
            redis.call('ZADD', QP .. 'due', run_at, id)
            -- Workers sleeping until the next due job must learn of this one.
            woke[QP] = true
        else
            redis.call('HSET', key, 'finished_at', snow)
            release_key(G, id, f[6])
            settle_dependents(G, id, new, task, now)
        end
        out[#out + 1] = id
        out[#out + 1] = new
    end
end
for QP in pairs(woke) do wake(QP) end
return out
