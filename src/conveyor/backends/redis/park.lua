-- park: Await. A running job held by lease (id, token) waits for an outside service
-- until now + delay: its lease token becomes its completion token (wait_token) and its
-- deadline is kept in lease_expires_at and QP..'waits'. The worker slot is freed.
-- Cancelled instead if a cancel was requested while it ran.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3]  job id   ARGV[4]  lease token   ARGV[5]  delay (seconds to the deadline)
-- Returns 1 if applied, 0 if the lease no longer held.
local now = clock(ARGV[1])
local G, id, token = ARGV[2], ARGV[3], ARGV[4]
local key = jkey(G, id)
local f = redis.call('HMGET', key, 'state', 'lease_token', 'qp', 'tenant', 'task',
    'cancel_requested', 'result_ttl', 'key')
if f[1] ~= 'running' or f[2] ~= token then
    return 0
end
local QP, tenant, task = f[3], f[4], f[5]
unrun(G, QP, id, tenant, task)
if f[6] == '1' then
    set_state(G, QP, id, tenant, 'running', 'cancelled')
    redis.call('HSET', key, 'finished_at', fmt(now))
    set_expiry(G, QP, id, f[7], now)
    release_key(G, id, f[8])
    settle_dependents(G, id, 'cancelled', task, now)
else
    local deadline = fmt(now + tonumber(ARGV[5]))
    set_state(G, QP, id, tenant, 'running', 'waiting')
    redis.call('HSET', key, 'wait_token', token, 'lease_expires_at', deadline)
    redis.call('ZADD', QP .. 'waits', deadline, id)
end
-- A freed slot may unblock a capped job.
if any_ready(QP) then
    wake(QP)
end
return 1
