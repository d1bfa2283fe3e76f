-- stats: counts per (queue, tenant, state), tenant settings, and the oldest ready time
-- per tenant with ready jobs. Operator tool: O(tenants + lanes + running jobs), reads only.
-- 'queued' is counted from the lanes and 'running' from the leases: the count hash does
-- not keep them (see count() in _lib.lua); fields of those states it may still hold
-- (kept by older versions, or under tenant caps) are not read.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3..]  pairs (queue, QP)
-- Returns {now, then per queue: {name, counts (field/value list, field = state:tenant),
--   weights (tenant/weight list), max_running (tenant/value list),
--   oldest (tenant/ready_at list)}}
local G = ARGV[2]
local out = { fmt(clock(ARGV[1])) }
for i = 3, #ARGV, 2 do
    local QP = ARGV[i + 1]
    local counts = {}
    local stored = redis.call('HGETALL', QP .. 'cnt')
    for j = 1, #stored, 2 do
        local state = string.match(stored[j], '^(%a+):')
        if state ~= 'queued' and state ~= 'running' then
            counts[#counts + 1] = stored[j]
            counts[#counts + 1] = stored[j + 1]
        end
    end
    local queued = {}
    for prio = 0, 9 do
        for _, tenant in ipairs(redis.call('ZRANGE', QP .. 'p:' .. prio, 0, -1)) do
            for _, task in ipairs(pt_tasks(QP, prio, tenant)) do
                queued[tenant] = (queued[tenant] or 0)
                    + redis.call('ZCARD', lane_key(QP, prio, tenant, task))
            end
        end
    end
    local oldest = {}
    for tenant, n in pairs(queued) do
        if n > 0 then
            counts[#counts + 1] = 'queued:' .. tenant
            counts[#counts + 1] = n
            local first = redis.call('ZRANGE', QP .. 'r:' .. tenant, 0, 0, 'WITHSCORES')
            if first[2] then
                oldest[#oldest + 1] = tenant
                oldest[#oldest + 1] = first[2]
            end
        end
    end
    for tenant, n in pairs(running_by_tenant(G, QP)) do
        counts[#counts + 1] = 'running:' .. tenant
        counts[#counts + 1] = n
    end
    out[#out + 1] = { ARGV[i], counts, redis.call('HGETALL', QP .. 'tw'),
        redis.call('HGETALL', QP .. 'tm'), oldest }
end
return out
