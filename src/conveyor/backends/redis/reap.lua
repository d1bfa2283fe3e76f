-- reap: expired leases go back to queued, or dead when out of attempts, or cancelled
-- when a cancel was requested (recorded in the outbox: the lost worker will never
-- announce it); the attempt records WorkerLost.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3..]  queue prefixes QP
-- Returns {the number of jobs reaped, the ids of those sent to dead...}.
local now = clock(ARGV[1])
local G = ARGV[2]
local snow = fmt(now)
local reaped = 0
local dead = {}
for i = 3, #ARGV do
    local QP = ARGV[i]
    local woke = false
    for _, id in ipairs(redis.call('ZRANGE', QP .. 'leases', '-inf', snow, 'BYSCORE')) do
        local key = jkey(G, id)
        local f = redis.call('HMGET', key, 'state', 'tenant', 'task', 'attempt', 'max_attempts',
            'cancel_requested', 'result_ttl', 'key', 'base_priority')
        if f[1] ~= 'running' then
            redis.call('ZREM', QP .. 'leases', id)
        else
            reaped = reaped + 1
            local tenant, task, attempt = f[2], f[3], tonumber(f[4])
            unrun(G, QP, id, tenant, task)
            append_error(G, id, '{"attempt":' .. attempt ..
                ',"type":"WorkerLost","message":"worker lost (lease expired)","traceback":null,"at":'
                .. snow .. '}')
            local new
            if f[6] == '1' then
                new = 'cancelled'
            elseif attempt < tonumber(f[5]) then
                new = 'queued'
            else
                new = 'dead'
            end
            set_state(G, QP, id, tenant, 'running', new)
            redis.call('HSET', key, 'priority', f[9])
            if new == 'queued' then
                make_ready(G, QP, id, tenant, task, f[9], now)
                woke = true
            else
                redis.call('HSET', key, 'finished_at', snow)
                if new == 'cancelled' then
                    set_expiry(G, QP, id, f[7], now)
                    -- Its worker is gone and will not announce it: the outbox does.
                    outbox(G, 'job.cancelled', id)
                end
                release_key(G, id, f[8])
                settle_dependents(G, id, new, task, now)
                if new == 'dead' then
                    dead[#dead + 1] = id
                end
            end
        end
    end
    if woke then wake(QP) end
end
table.insert(dead, 1, reaped)
return dead
