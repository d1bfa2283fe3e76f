-- enqueue: insert jobs atomically; returns their ids in order. A job whose dedup key is
-- held by an active job is not inserted: the holder's id is returned in its place.
--
-- KEYS[1]  G..'queues' (routes the call to the node holding the store's slot)
-- ARGV[1]  now ('' = Redis TIME)      ARGV[2]  G (store prefix)
-- ARGV[3]  JSON [[queue name, QP], ...]
-- ARGV[4]  JSON [[id, task, queue index (1-based), tenant ('' = default), priority,
--            args_json, kwargs_json, max_attempts, timeout, result_ttl, key, delay,
--            run_at, after, after_policy, unique_for], ...]   ('' = none for timeout,
--            result_ttl, key, delay, run_at, after (a JSON array of ids), unique_for;
--            numbers as strings)
-- A job with dependencies is inserted blocked, then linked (see link_dependencies in
-- _lib.lua) once the whole batch is in. Every dependency must exist, in the store or
-- earlier in the batch; otherwise the script fails before writing anything.
-- A key reserved for a window (unique_for) lives in G..'kw:'..key = "<id> <expires_at>".
-- Job hash fields: id task queue qp tenant priority base_priority state args kwargs
--   attempt max_attempts errors enqueued_at, and when set: timeout result_ttl key run_at
--   ready_at age_at started_at finished_at expires_at lease_token lease_expires_at worker
--   progress progress_message result cancel_requested
--
-- Speed: a job costs two calls (EXISTS, HSET); every index is written afterwards with
-- one variadic command per key, so 10,000 jobs take one call and a few milliseconds.
local now = clock(ARGV[1])
local G = ARGV[2]
local queues = cjson.decode(ARGV[3])
local jobs = cjson.decode(ARGV[4])
local snow = fmt(now)

local function push(map, key, ...)
    local list = map[key]
    if not list then
        list = {}
        map[key] = list
    end
    for _, v in ipairs({ ... }) do
        list[#list + 1] = v
    end
end

-- Per queue: index key -> {score, member, ...} to add, and counters to apply.
local zadds, counts, lanes, aging = {}, {}, {}, {}
local activated = {}
for qi, q in ipairs(queues) do
    redis.call('HSET', G .. 'qp', q[1], q[2])
    redis.call('SADD', G .. 'queues', q[1])
    aging[qi] = aging_of(q[2])
end

local function window_holder(key)
    local held = redis.call('GET', G .. 'kw:' .. key)
    if held then
        local holder, expires = string.match(held, '^(%S+) (%S+)$')
        if tonumber(expires) > now then
            return holder
        end
    end
    return nil
end

-- Dependencies are checked before anything is written (a script cannot roll back): each
-- must exist in the store or be inserted earlier in this batch, not refused for its key.
local function check_dependencies()
    local known, batch_keys = {}, {}
    for _, job in ipairs(jobs) do
        if job[14] ~= '' then
            for _, parent in ipairs(cjson.decode(job[14])) do
                if not known[parent] and redis.call('EXISTS', jkey(G, parent)) == 0 then
                    return parent
                end
            end
        end
        local key = job[11]
        local refused = key ~= '' and (batch_keys[key] or redis.call('HEXISTS', G .. 'keys', key) == 1
            or (job[16] ~= '' and window_holder(key)))
        if not refused then
            known[job[1]] = true
        end
        if key ~= '' then
            batch_keys[key] = true
        end
    end
    return nil
end

for _, job in ipairs(jobs) do
    if job[14] ~= '' then -- only batches with dependencies pay for the check
        local missing = check_dependencies()
        if missing then
            return redis.error_reply('DependencyNotFound ' .. missing)
        end
        break
    end
end

local ids = {}
local linked = {}
for j, job in ipairs(jobs) do
    local id, task, qi, tenant, prio = job[1], job[2], job[3], job[4], job[5]
    local key, delay, run_at = job[11], job[12], job[13]
    local after, unique_for = job[14], job[16]
    local QP = queues[qi][2]
    local jk = jkey(G, id)
    local holder = nil
    if key ~= '' then
        holder = redis.call('HGET', G .. 'keys', key)
    end
    if not holder and key ~= '' and unique_for ~= '' then
        holder = window_holder(key)
    end
    if holder then
        ids[j] = holder
    elseif redis.call('EXISTS', jk) == 1 then
        -- Inserted by an earlier try of this very call whose reply was lost: enqueue is
        -- idempotent per id, so a retry never duplicates a job.
        ids[j] = id
    else
        ids[j] = id
        if key ~= '' then
            redis.call('HSET', G .. 'keys', key, id)
            if unique_for ~= '' then
                local ttl = tonumber(unique_for)
                redis.call('SET', G .. 'kw:' .. key, id .. ' ' .. fmt(now + ttl),
                    'PX', math.ceil(ttl * 1000) + 60000)
            end
        end
        local due = now
        if run_at ~= '' then
            due = tonumber(run_at)
        elseif delay ~= '' then
            due = now + tonumber(delay)
        end
        local fields = { 'id', id, 'task', task, 'queue', queues[qi][1], 'qp', QP, 'tenant', tenant,
            'priority', prio, 'base_priority', prio, 'args', job[6], 'kwargs', job[7],
            'attempt', 0, 'max_attempts', job[8], 'errors', '[]', 'enqueued_at', snow }
        if job[9] ~= '' then
            fields[#fields + 1] = 'timeout'
            fields[#fields + 1] = job[9]
        end
        if job[10] ~= '' then
            fields[#fields + 1] = 'result_ttl'
            fields[#fields + 1] = job[10]
        end
        if key ~= '' then
            fields[#fields + 1] = 'key'
            fields[#fields + 1] = key
        end
        local state
        if after ~= '' then
            state = 'blocked'
            linked[#linked + 1] = { id, after, job[15] }
            if due > now then
                fields[#fields + 1] = 'run_at'
                fields[#fields + 1] = fmt(due)
            end
        elseif due > now then
            state = 'scheduled'
            local sdue = fmt(due)
            fields[#fields + 1] = 'run_at'
            fields[#fields + 1] = sdue
            push(zadds, QP .. 'due', sdue, id)
        else
            state = 'queued'
            fields[#fields + 1] = 'ready_at'
            fields[#fields + 1] = snow
            local tkey = QP .. '\0' .. tenant
            if not activated[tkey] then
                -- The tenant's first ready job (in this queue): idleness banks no credit.
                activated[tkey] = true
                if redis.call('EXISTS', QP .. 'r:' .. tenant) == 0 then
                    local vclock = tonumber(redis.call('HGET', QP .. 'meta', 'vclock') or '0')
                    local vt = tonumber(redis.call('HGET', QP .. 'tv', tenant) or '0')
                    redis.call('HSET', QP .. 'tv', tenant, fmt(math.max(vt, vclock)))
                end
            end
            push(lanes, lane_key(QP, prio, tenant, task), { QP, prio, tenant, task, id })
            push(zadds, QP .. 'r:' .. tenant, snow, id)
            if aging[qi] and tonumber(prio) > 0 then
                local age_at = fmt(now + aging[qi])
                fields[#fields + 1] = 'age_at'
                fields[#fields + 1] = age_at
                push(zadds, QP .. 'aging', age_at, id)
            end
        end
        fields[#fields + 1] = 'state'
        fields[#fields + 1] = state
        redis.call('HSET', jk, unpack(fields))
        if state ~= 'queued' then
            push(zadds, QP .. 's:' .. state, 0, id)
        end
        local ckey = QP .. '\0' .. state .. ':' .. tenant
        counts[ckey] = (counts[ckey] or 0) + 1
    end
end

-- Variadic writes, in chunks that stay below Lua's unpack() limit.
local function zadd_all(key, flat)
    for i = 1, #flat, 2000 do
        redis.call('ZADD', key, unpack(flat, i, math.min(i + 1999, #flat)))
    end
end
for key, flat in pairs(zadds) do
    zadd_all(key, flat)
end
for ckey, n in pairs(counts) do
    local QP, field = string.match(ckey, '^(.-)%z(.*)$')
    redis.call('HINCRBY', QP .. 'cnt', field, n)
end
for lane, entries in pairs(lanes) do
    local first = entries[1]
    local QP, prio, tenant, task = first[1], first[2], first[3], first[4]
    local flat = {}
    for _, e in ipairs(entries) do
        flat[#flat + 1] = 0
        flat[#flat + 1] = e[5]
    end
    local before = redis.call('ZCARD', lane)
    zadd_all(lane, flat)
    if before == 0 then
        -- The lane was empty: it joins its (prio, tenant), which may join its level.
        local pt = QP .. 't:' .. prio .. ':' .. tenant
        redis.call('ZADD', pt, 0, task)
        if redis.call('ZCARD', pt) == 1 then
            local vt = redis.call('HGET', QP .. 'tv', tenant) or '0'
            redis.call('ZADD', QP .. 'p:' .. prio, vt, tenant)
        end
    end
end
for _, l in ipairs(linked) do
    link_dependencies(G, l[1], cjson.decode(l[2]), l[3], now)
end
-- Scheduled jobs wake waiters too: they recompute when the next job falls due.
for _, q in ipairs(queues) do
    wake(q[2])
end
return ids
