-- cancel: jobs not running (scheduled, queued, retrying, blocked, waiting) become
-- cancelled at once,
-- and the jobs waiting for them are settled; a running job gets a cancel request.
-- A job cancelled here is recorded in the outbox (no worker will announce it).
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G   ARGV[3]  job id
-- Returns the job's state afterwards, or nil if there is no such job.
local now = clock(ARGV[1])
local G, id = ARGV[2], ARGV[3]
local key = jkey(G, id)
local f = redis.call('HMGET', key, 'state', 'qp', 'tenant', 'task', 'priority', 'result_ttl', 'key')
local state = f[1]
if not state then
    return nil
end
local QP, tenant = f[2], f[3]
if state == 'queued' or state == 'scheduled' or state == 'retrying' or state == 'blocked'
    or state == 'waiting' then
    if state == 'queued' then
        unready(QP, id, tenant, f[4], f[5])
    elseif state == 'waiting' then
        redis.call('ZREM', QP .. 'waits', id)
        redis.call('HDEL', key, 'lease_expires_at')
    elseif state ~= 'blocked' then
        redis.call('ZREM', QP .. 'due', id)
    end
    set_state(G, QP, id, tenant, state, 'cancelled')
    redis.call('HSET', key, 'finished_at', fmt(now))
    set_expiry(G, QP, id, f[6], now)
    release_key(G, id, f[7])
    outbox(G, 'job.cancelled', id)
    settle_dependents(G, id, 'cancelled', f[4], now)
    return 'cancelled'
end
if state == 'running' then
    redis.call('HSET', key, 'cancel_requested', '1')
end
return state
