-- depth: waiting jobs of one queue per (tenant, priority) in one state, for /metrics.
-- Reads only. 'queued' is answered from the lanes (ZCARD of each: O(lanes), whatever
-- the backlog); the other waiting states keep no per-priority structure, so their index
-- QP..'s:'..state is read one page at a time (each call O(page)) and the caller loops,
-- never blocking the server for the whole backlog.
--
-- KEYS[1]  routing key   ARGV[1]  G   ARGV[2]  QP   ARGV[3]  state
-- ARGV[4]  offset   ARGV[5]  page size (ignored for 'queued')
-- Returns {ids read (0 for 'queued'), tenant, priority, count, tenant, priority, ...}
local G, QP, state = ARGV[1], ARGV[2], ARGV[3]
local out = { 0 }
if state == 'queued' then
    for prio = 0, 9 do
        for _, tenant in ipairs(redis.call('ZRANGE', QP .. 'p:' .. prio, 0, -1)) do
            local n = 0
            for _, task in ipairs(pt_tasks(QP, prio, tenant)) do
                n = n + redis.call('ZCARD', lane_key(QP, prio, tenant, task))
            end
            out[#out + 1] = tenant
            out[#out + 1] = prio
            out[#out + 1] = n
        end
    end
    return out
end
local offset, size = tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = redis.call('ZRANGE', QP .. 's:' .. state, offset, offset + size - 1)
local found, order = {}, {}
for _, id in ipairs(ids) do
    local f = redis.call('HMGET', jkey(G, id), 'tenant', 'priority')
    if f[1] and f[2] then
        local pair = f[1] .. '\0' .. f[2]
        if not found[pair] then
            found[pair] = { f[1], tonumber(f[2]), 0 }
            order[#order + 1] = pair
        end
        found[pair][3] = found[pair][3] + 1
    end
end
out[1] = #ids
for _, pair in ipairs(order) do
    local row = found[pair]
    out[#out + 1] = row[1]
    out[#out + 1] = row[2]
    out[#out + 1] = row[3]
end
return out
