-- try_lock: take lock `name` for `owner` until now + ttl, renew it for the same owner, or
-- take it over once expired.
--
-- KEYS[1]  the lock's hash (owner, expires_at)   ARGV[1]  now ('' = Redis TIME)
-- ARGV[2]  owner   ARGV[3]  ttl seconds
-- Returns 1 if the caller holds the lock afterwards, else 0.
local now = clock(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'owner', 'expires_at')
if f[1] and f[1] ~= ARGV[2] and tonumber(f[2]) > now then
    return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'expires_at', fmt(now + tonumber(ARGV[3])))
return 1
