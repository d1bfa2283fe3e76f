-- rate: take one start from every rate bucket for a running job (Backend.take_rate).
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3]  job id   ARGV[4]  lease token   ARGV[5..]  3 per bucket: name, limit, period
-- Keys: G..'rate'  hash  bucket name -> tat (theoretical arrival time)
--       G..'rres'  zset  bucket name..'\0'..job id -> start of the reserved slot
-- Returns '0' (run now) or the seconds until the job's reserved slot (as a string),
-- having moved the job back to scheduled until then, attempt given back (cancelled
-- instead if a cancel was requested, and recorded in the outbox). A lease that no
-- longer holds changes nothing.
local now = clock(ARGV[1])
local G, id, token = ARGV[2], ARGV[3], ARGV[4]
local key = jkey(G, id)
local f = redis.call('HMGET', key, 'state', 'lease_token', 'qp', 'tenant', 'task', 'attempt',
    'cancel_requested', 'result_ttl', 'key', 'base_priority')
if f[1] ~= 'running' or f[2] ~= token then
    return '0'
end
local start = now
local fresh = {}
local names = {}
for i = 5, #ARGV, 3 do
    local name, limit, period = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    names[#names + 1] = name
    local member = name .. '\0' .. id
    if redis.call('ZREM', G .. 'rres', member) == 0 then -- else: paid when deferred
        local tat = tonumber(redis.call('HGET', G .. 'rate', name) or '0')
        local new_tat = math.max(tat, now) + period / limit
        fresh[#fresh + 1] = { name, new_tat }
        start = math.max(start, new_tat - period)
    end
end
for _, b in ipairs(fresh) do
    redis.call('HSET', G .. 'rate', b[1], fmt(b[2]))
end
if start <= now then
    return '0'
end
for _, name in ipairs(names) do
    redis.call('ZADD', G .. 'rres', fmt(start), name .. '\0' .. id)
end
-- Reservations of jobs that never came back for their slot (cancelled meanwhile).
redis.call('ZREMRANGEBYSCORE', G .. 'rres', '-inf', '(' .. fmt(now - 86400))
local QP, tenant, task = f[3], f[4], f[5]
unrun(G, QP, id, tenant, task)
redis.call('HSET', key, 'attempt', math.max(tonumber(f[6]) - 1, 0), 'priority', f[10])
if f[7] == '1' then
    set_state(G, QP, id, tenant, 'running', 'cancelled')
    redis.call('HSET', key, 'finished_at', fmt(now))
    set_expiry(G, QP, id, f[8], now)
    release_key(G, id, f[9])
    -- No worker outcome will announce it (the attempt was given back): the outbox does.
    outbox(G, 'job.cancelled', id)
    settle_dependents(G, id, 'cancelled', task, now)
else
    set_state(G, QP, id, tenant, 'running', 'scheduled')
    redis.call('HSET', key, 'run_at', fmt(start))
    redis.call('ZADD', QP .. 'due', fmt(start), id)
    wake(QP) -- waiters recompute when the next job falls due
end
return fmt(start - now)
