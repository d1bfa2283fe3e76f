-- replay: dead or cancelled -> queued with a fresh attempt budget; errors are kept.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G   ARGV[3]  job id
-- Returns 1 if replayed, 0 if there is no such job or it is in another state, or
-- {holder id, key} when its dedup key is held by another active job (nothing changes).
local now = clock(ARGV[1])
local G, id = ARGV[2], ARGV[3]
local key = jkey(G, id)
local f = redis.call('HMGET', key, 'state', 'qp', 'tenant', 'task', 'base_priority', 'key')
local state = f[1]
if state ~= 'dead' and state ~= 'cancelled' then
    return 0
end
local QP, tenant, dkey = f[2], f[3], f[6]
if dkey and dkey ~= '' then
    local holder = redis.call('HGET', G .. 'keys', dkey)
    if holder and holder ~= id then
        return { holder, dkey }
    end
    redis.call('HSET', G .. 'keys', dkey, id)
end
redis.call('ZREM', QP .. 'exp', id)
redis.call('HDEL', key, 'finished_at', 'expires_at', 'result', 'lease_token', 'lease_expires_at',
    'cancel_requested', 'progress', 'progress_message')
redis.call('HSET', key, 'attempt', 0)
set_state(G, QP, id, tenant, state, 'queued')
make_ready(G, QP, id, tenant, f[4], f[5], now)
wake(QP)
return 1
