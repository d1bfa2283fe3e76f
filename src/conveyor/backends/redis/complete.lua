-- complete: a waiting job finished by an outside service, fenced by its completion
-- token and deadline. kind: succeeded (with result), retry (attempt left: retrying
-- after delay, or queued at once; else dead) or dead, with error_json.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G   ARGV[3]  job id
-- ARGV[4]  completion token   ARGV[5]  kind   ARGV[6]  result_json ('' = none)
-- ARGV[7]  error_json ('' = none)   ARGV[8]  retry delay (seconds)
-- Returns {'applied'} or the refusal: {'unknown'} (no such job or another token),
-- {'late'} (deadline passed, or the job already timed out), {'closed'} (not waiting).
local now = clock(ARGV[1])
local G, id, token, kind = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local result, err, delay = ARGV[6], ARGV[7], tonumber(ARGV[8])
local key = jkey(G, id)
local f = redis.call('HMGET', key, 'state', 'wait_token', 'lease_expires_at', 'qp', 'tenant',
    'task', 'attempt', 'max_attempts', 'result_ttl', 'key', 'base_priority', 'errors')
if not f[1] or f[2] ~= token then
    return { 'unknown' }
end
if f[1] ~= 'waiting' then
    local ok, errors = pcall(cjson.decode, f[12] or '[]')
    local last = ok and errors[#errors]
    if type(last) == 'table' and last.type == 'ExternalTimeout' then
        return { 'late' }
    end
    return { 'closed' }
end
if tonumber(f[3]) <= now then
    return { 'late' }
end
local QP, tenant, task = f[4], f[5], f[6]
local attempt, max_attempts, base = tonumber(f[7]), tonumber(f[8]), f[11]
local new
if kind == 'succeeded' or kind == 'dead' then
    new = kind
else
    new = retry_state(attempt, max_attempts, delay)
end
redis.call('ZREM', QP .. 'waits', id)
redis.call('HDEL', key, 'lease_expires_at')
if kind == 'succeeded' then
    if result ~= '' then
        redis.call('HSET', key, 'result', result)
    end
else
    append_error(G, id, err)
end
set_state(G, QP, id, tenant, 'waiting', new)
redis.call('HSET', key, 'priority', base)
if new == 'queued' then
    make_ready(G, QP, id, tenant, task, base, now)
    wake(QP)
elseif new == 'retrying' then
    local run_at = fmt(now + delay)
    redis.call('HSET', key, 'run_at', run_at)
    redis.call('ZADD', QP .. 'due', run_at, id)
    wake(QP)
else
    redis.call('HSET', key, 'finished_at', fmt(now))
    if new == 'succeeded' then
        set_expiry(G, QP, id, f[9], now)
    end
    release_key(G, id, f[10])
    settle_dependents(G, id, new, task, now)
end
return { 'applied' }
