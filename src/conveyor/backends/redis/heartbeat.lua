-- heartbeat: extend each held lease to now + lease.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3]  lease seconds   ARGV[4..]  pairs (job id, lease token)
-- Returns {lost ids..., '|', cancel-requested ids...}: a lease is lost when the job is
-- gone, not running, or running under another token.
local now = clock(ARGV[1])
local G = ARGV[2]
local sexp = fmt(now + tonumber(ARGV[3]))
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
    local id, token = ARGV[i], ARGV[i + 1]
    local key = jkey(G, id)
    local f = redis.call('HMGET', key, 'state', 'lease_token', 'cancel_requested', 'qp')
    if f[1] == 'running' and f[2] == token then
        redis.call('HSET', key, 'lease_expires_at', sexp)
        redis.call('ZADD', f[4] .. 'leases', sexp, id)
        if f[3] == '1' then
            cancel[#cancel + 1] = id
        end
    else
        lost[#lost + 1] = id
    end
end
lost[#lost + 1] = '|'
for _, id in ipairs(cancel) do
    lost[#lost + 1] = id
end
return lost
