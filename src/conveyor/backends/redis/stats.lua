-- stats: counts per (queue, tenant, state), tenant settings, and the oldest ready time
-- per tenant with ready jobs. Operator tool: O(tenants), reads only.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2..]  pairs (queue, QP)
-- Returns {now, then per queue: {name, counts (field/value list, field = state:tenant),
--   weights (tenant/weight list), max_running (tenant/value list),
--   oldest (tenant/ready_at list)}}
local out = { fmt(clock(ARGV[1])) }
for i = 2, #ARGV, 2 do
    local QP = ARGV[i + 1]
    local counts = redis.call('HGETALL', QP .. 'cnt')
    local oldest = {}
    for j = 1, #counts, 2 do
        local state, tenant = string.match(counts[j], '^(%a+):(.*)$')
        if state == 'queued' then
            local first = redis.call('ZRANGE', QP .. 'r:' .. tenant, 0, 0, 'WITHSCORES')
            if first[2] then
                oldest[#oldest + 1] = tenant
                oldest[#oldest + 1] = first[2]
            end
        end
    end
    out[#out + 1] = { ARGV[i], counts, redis.call('HGETALL', QP .. 'tw'),
        redis.call('HGETALL', QP .. 'tm'), oldest }
end
return out
