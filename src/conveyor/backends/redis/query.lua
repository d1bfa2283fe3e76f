-- query: jobs matching every given filter with an id below `before`, newest first, at
-- most `limit` per (queue, state); the caller merges, and pages with `before` (so that
-- one call's work stays bounded however many jobs the caller wants). Operator tool:
-- walks the state indexes, for 'queued' the lanes (each already one tenant's jobs of one
-- task, in id order), and for 'running' the leases. Lanes and state indexes score every
-- id 0, so BYLEX ranges of them are id ranges.
--
-- KEYS[1]  routing key   ARGV[1]  G   ARGV[2]  limit
-- ARGV[3]  tenant filter ('1' = on)   ARGV[4]  tenant   ARGV[5]  task filter ('1' = on)
-- ARGV[6]  task   ARGV[7]  n states, then the states, then queue prefixes QP
-- ARGV[8 + n + number of queues]  before ('' = no bound; else ids below it only)
-- Returns a list of jobs, each the flat field/value list of its hash.
local G, limit = ARGV[1], tonumber(ARGV[2])
local by_tenant, want_tenant = ARGV[3] == '1', ARGV[4]
local by_task, want_task = ARGV[5] == '1', ARGV[6]
local ns = tonumber(ARGV[7])
local before = ARGV[#ARGV]
local top = before == '' and '+' or '(' .. before -- BYLEX bound: ids below `before`
local out = {}
local page = math.max(limit, 50)

-- The newest `limit` ready ids of a queue: the newest of each matching lane, merged.
local function ready_newest(QP)
    local found = {}
    for prio = 0, 9 do
        for _, tenant in ipairs(redis.call('ZRANGE', QP .. 'p:' .. prio, 0, -1)) do
            if not by_tenant or tenant == want_tenant then
                for _, task in ipairs(pt_tasks(QP, prio, tenant)) do
                    if not by_task or task == want_task then
                        local lane = lane_key(QP, prio, tenant, task)
                        local newest = redis.call('ZRANGE', lane, top, '-', 'BYLEX', 'REV',
                            'LIMIT', 0, limit)
                        for _, id in ipairs(newest) do
                            found[#found + 1] = id
                        end
                    end
                end
            end
        end
    end
    table.sort(found, function(a, b) return a > b end)
    for i = 1, math.min(limit, #found) do
        out[#out + 1] = redis.call('HGETALL', jkey(G, found[i]))
    end
end

-- The newest `limit` running jobs of a queue: 'leases' holds exactly the running ids,
-- ordered by lease expiry, so sort them by id (running jobs are bounded by the slots).
local function running_newest(QP)
    local ids = redis.call('ZRANGE', QP .. 'leases', 0, -1)
    table.sort(ids, function(a, b) return a > b end)
    local found = 0
    for _, id in ipairs(ids) do
        if found >= limit then
            break
        end
        local key = jkey(G, id)
        local ok = before == '' or id < before
        if ok and (by_tenant or by_task) then
            local f = redis.call('HMGET', key, 'tenant', 'task')
            ok = (not by_tenant or f[1] == want_tenant) and (not by_task or f[2] == want_task)
        end
        if ok then
            out[#out + 1] = redis.call('HGETALL', key)
            found = found + 1
        end
    end
end

for q = 8 + ns, #ARGV - 1 do
    local QP = ARGV[q]
    for s = 8, 7 + ns do
        if ARGV[s] == 'queued' then
            ready_newest(QP)
        elseif ARGV[s] == 'running' then
            running_newest(QP)
        else
            local index = QP .. 's:' .. ARGV[s]
            local found, offset = 0, 0
            while found < limit do
                local ids = redis.call('ZRANGE', index, top, '-', 'BYLEX', 'REV', 'LIMIT', offset, page)
                if #ids == 0 then
                    break
                end
                for _, id in ipairs(ids) do
                    local key = jkey(G, id)
                    local ok = true
                    if by_tenant or by_task then
                        local f = redis.call('HMGET', key, 'tenant', 'task')
                        ok = (not by_tenant or f[1] == want_tenant) and (not by_task or f[2] == want_task)
                    end
                    if ok then
                        out[#out + 1] = redis.call('HGETALL', key)
                        found = found + 1
                        if found >= limit then
                            break
                        end
                    end
                end
                offset = offset + page
            end
        end
    end
end
return out
