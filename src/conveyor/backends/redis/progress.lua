-- progress: record progress of a running job, fenced by its lease token.
--
-- KEYS[1]  routing key   ARGV[1]  G   ARGV[2]  job id   ARGV[3]  lease token
-- ARGV[4]  fraction ('' = none)   ARGV[5]  message ('' = none)   ARGV[6]  has message (0/1)
-- Returns 1 if recorded, 0 if the lease no longer holds.
local G = ARGV[1]
local key = jkey(G, ARGV[2])
local f = redis.call('HMGET', key, 'state', 'lease_token')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then
    return 0
end
if ARGV[4] ~= '' then
    redis.call('HSET', key, 'progress', ARGV[4])
else
    redis.call('HDEL', key, 'progress')
end
if ARGV[6] == '1' then
    redis.call('HSET', key, 'progress_message', ARGV[5])
else
    redis.call('HDEL', key, 'progress_message')
end
return 1
