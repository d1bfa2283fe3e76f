-- enqueue: insert jobs atomically. A job whose dedup key is held by an active job is not
-- inserted: the holder's id takes its place. Returns those replacements only, as a flat
-- list {position (1-based, in call order), holder id, ...}: empty in the common case
-- (echoing 1,000 ids the caller made itself cost Redis half a microsecond per job).
--
-- KEYS[1]  G..'queues' (routes the call to the node holding the store's slot)
-- ARGV[1]  now ('' = Redis TIME)      ARGV[2]  G (store prefix)
-- ARGV[3]  JSON [[queue name, QP], ...]
-- ARGV[4]  JSON [group, ...]: runs of consecutive jobs that differ only in id and
--            arguments, in call order. A group is [task, queue index (1-based), tenant
--            ('' = default), priority, max_attempts, timeout, result_ttl, key, delay,
--            run_at, after (a JSON array of ids), after_policy, unique_for,
--            [id, args_json, kwargs_json, id, args_json, kwargs_json, ...]]
--            ('' = none for timeout, result_ttl, key, delay, run_at, after, unique_for;
--            numbers as strings)
-- or, for one job (a single enqueue), no JSON at all:
-- ARGV[3]  queue name      ARGV[4]  QP
-- ARGV[5..16]  the group's fields without the queue index (task, tenant, ... unique_for)
-- ARGV[17..19] id, args_json, kwargs_json
-- A job with dependencies is inserted blocked, then linked (see link_dependencies in
-- _lib.lua) once the whole batch is in. Every dependency must exist, in the store or
-- earlier in the batch; otherwise the script fails before writing anything.
-- A key reserved for a window (unique_for) lives in G..'kw:'..key = "<id> <expires_at>".
-- Job hash fields: id task queue qp tenant priority base_priority state args kwargs
--   max_attempts enqueued_at, and when set: attempt (absent: 0) errors (absent: '[]')
--   ready_at (absent: enqueued_at) timeout result_ttl key run_at age_at started_at
--   finished_at expires_at lease_token lease_expires_at worker progress progress_message
--   result cancel_requested
--
-- Speed: a job of a run of TEMPLATE_FROM or more costs two calls (COPY of a template hash
-- holding the run's shared fields, then HSET of id and arguments) and no Lua table of its
-- own; a shorter run's job costs EXISTS and one HSET of every field, built once per run.
-- COPY fails for a job that exists, so a retried call is caught without asking every
-- job first. Building a hash field by field cost 27,000 instructions per job (each
-- listpack append searches the fields so far and reallocates); COPY and the short HSET
-- cost 6,000.
-- Numbers written per job are strings ('0'): Redis would format a Lua number with
-- %.17g for every argument.
-- Every index is written afterwards with one variadic command per key, so 10,000 jobs
-- take one call and a few milliseconds.
local TEMPLATE_FROM = 4 -- a template costs an HSET and two DELs: paid back from 4 jobs
local now = clock(ARGV[1])
local G = ARGV[2]
local queues, groups
if #ARGV == 19 then -- one job: its 15 plain arguments cost less than decoding two JSON ones
    local a = ARGV
    queues = { { a[3], a[4] } }
    groups = { { a[5], 1, a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
        a[16], { a[17], a[18], a[19] } } }
else
    queues = cjson.decode(ARGV[3])
    groups = cjson.decode(ARGV[4])
end
local snow = fmt(now)
local call = redis.call

local function list_of(map, key)
    local list = map[key]
    if not list then
        list = {}
        map[key] = list
    end
    return list
end

-- Per queue: index key -> {score, member, ...} to add, and counters to apply.
local zadds, counts, lanes, aging = {}, {}, {}, {}
local activated = {}
-- Queues that got news: a ready job in a lane that was empty, or a job that is not ready
-- yet (scheduled, blocked). Only they are registered and woken at the end. A job added
-- to a lane that holds jobs already changes nothing for a waiting worker: the jobs
-- before it would have been claimed were it free to (caps stop the new job as they stop
-- them), and the queue is registered since the lane's first job. So the common single
-- enqueue into a busy queue costs neither a registration check nor a PUBLISH.
local news = {}
for qi, q in ipairs(queues) do
    aging[qi] = aging_of(q[2])
end

local function window_holder(key)
    local held = call('GET', G .. 'kw:' .. key)
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
    for _, g in ipairs(groups) do
        local key, after, unique_for, flat = g[8], g[11], g[13], g[14]
        for i = 1, #flat, 3 do
            if after ~= '' then
                for _, parent in ipairs(cjson.decode(after)) do
                    if not known[parent] and call('EXISTS', jkey(G, parent)) == 0 then
                        return parent
                    end
                end
            end
            local refused = key ~= '' and (batch_keys[key] or call('HEXISTS', G .. 'keys', key) == 1
                or (unique_for ~= '' and window_holder(key)))
            if not refused then
                known[flat[i]] = true
            end
            if key ~= '' then
                batch_keys[key] = true
            end
        end
    end
    return nil
end

for _, g in ipairs(groups) do
    if g[11] ~= '' then -- only batches with dependencies pay for the check
        local missing = check_dependencies()
        if missing then
            return redis.error_reply('DependencyNotFound ' .. missing)
        end
        break
    end
end

local replaced = {}
local n = 0
local linked = {}
for _, g in ipairs(groups) do
    local task, qi, tenant, prio = g[1], g[2], g[3], g[4]
    local key, delay, run_at, after, unique_for = g[8], g[9], g[10], g[11], g[13]
    local flat = g[14]
    local QP = queues[qi][2]
    local due = now
    if run_at ~= '' then
        due = tonumber(run_at)
    elseif delay ~= '' then
        due = now + tonumber(delay)
    end
    local state = 'queued'
    if after ~= '' then
        state = 'blocked'
    elseif due > now then
        state = 'scheduled'
    end
    -- The hash of every job of the group; slots 2, 4 and 6 take each job's id and
    -- arguments. Fields whose value a reader can tell without them are not written:
    -- 'attempt' (0 until the first claim), 'errors' ('[]') and 'ready_at' (enqueued_at
    -- until the job is made ready again); each costs the HSET about 2,600 instructions.
    local fields = { 'id', '', 'args', '', 'kwargs', '', 'task', task, 'queue', queues[qi][1],
        'qp', QP, 'tenant', tenant, 'priority', prio, 'base_priority', prio,
        'max_attempts', g[5], 'enqueued_at', snow, 'state', state }
    local function field(name, value)
        fields[#fields + 1] = name
        fields[#fields + 1] = value
    end
    if g[6] ~= '' then
        field('timeout', g[6])
    end
    if g[7] ~= '' then
        field('result_ttl', g[7])
    end
    if key ~= '' then
        field('key', key)
    end
    local sdue = state == 'queued' and '' or fmt(due) -- %.17g costs: only when written
    local age_at = nil
    if state == 'queued' then
        if aging[qi] and tonumber(prio) > 0 then
            age_at = fmt(now + aging[qi])
            field('age_at', age_at)
        end
    elseif due > now then
        field('run_at', sdue)
    end
    local lane, ready, aged, waiting
    local entry = nil
    if state == 'queued' then
        local lk = lane_key(QP, prio, tenant, task)
        entry = lanes[lk]
        if not entry then
            -- {QP, prio, tenant, task, ids to add, the lane's size before this call}
            entry = { QP, prio, tenant, task, {}, nil }
            lanes[lk] = entry
        end
        lane = entry[5]
        ready = list_of(zadds, QP .. 'r:' .. tenant)
        if age_at then
            aged = list_of(zadds, QP .. 'aging')
        end
    else
        waiting = list_of(zadds, QP .. 's:' .. state)
    end
    local due_list = state == 'scheduled' and list_of(zadds, QP .. 'due') or nil
    -- A run of several jobs copies a template hash of the shared fields (COPY duplicates
    -- its listpack in one piece) and sets only id and arguments: under a quarter of the
    -- cost of building each job's hash field by field. COPY also refuses a job that
    -- exists.
    local template = nil
    if #flat >= 3 * TEMPLATE_FROM then
        template = G .. 'enqueue:template'
        call('DEL', template) -- left over only if an earlier call failed half-way
        fields[6] = '{}' -- no keyword arguments, the common case: nothing to set per job
        call('HSET', template, unpack(fields))
    end
    local inserted = 0
    for i = 1, #flat, 3 do
        local id = flat[i]
        n = n + 1
        local jk = jkey(G, id)
        local holder = nil
        if key ~= '' then
            holder = call('HGET', G .. 'keys', key)
            if not holder and unique_for ~= '' then
                holder = window_holder(key)
            end
        end
        -- A job that exists was inserted by an earlier try of this very call whose reply
        -- was lost (or is given twice, or by an earlier call with the caller's own id):
        -- enqueue is idempotent per id, so a retry never duplicates a job.
        local exists = false
        if holder then
            replaced[#replaced + 1] = n
            replaced[#replaced + 1] = holder
        elseif template then
            exists = call('COPY', template, jk) == 0 -- the copy is the job's hash
        else
            exists = call('EXISTS', jk) == 1
        end
        if not holder and not exists then
            inserted = inserted + 1
            if key ~= '' then
                call('HSET', G .. 'keys', key, id)
                if unique_for ~= '' then
                    local ttl = tonumber(unique_for)
                    call('SET', G .. 'kw:' .. key, id .. ' ' .. fmt(now + ttl),
                        'PX', math.ceil(ttl * 1000) + 60000)
                end
            end
            if template and flat[i + 2] == '{}' then
                call('HSET', jk, 'id', id, 'args', flat[i + 1])
            elseif template then
                call('HSET', jk, 'id', id, 'args', flat[i + 1], 'kwargs', flat[i + 2])
            else
                fields[2], fields[4], fields[6] = id, flat[i + 1], flat[i + 2]
                call('HSET', jk, unpack(fields))
            end
            if lane then
                lane[#lane + 1] = '0'
                lane[#lane + 1] = id
                ready[#ready + 1] = snow
                ready[#ready + 1] = id
                if aged then
                    aged[#aged + 1] = age_at
                    aged[#aged + 1] = id
                end
            else
                waiting[#waiting + 1] = '0'
                waiting[#waiting + 1] = id
                if due_list then
                    due_list[#due_list + 1] = sdue
                    due_list[#due_list + 1] = id
                else
                    linked[#linked + 1] = { id, after, g[12] }
                end
            end
        end
    end
    if template then
        call('DEL', template)
    end
    if inserted > 0 then
        if state ~= 'queued' then -- not counted: stats reads the lanes (see count())
            local ckey = QP .. '\0' .. state .. ':' .. tenant
            counts[ckey] = (counts[ckey] or 0) + inserted
            news[qi] = true
        end
        if entry and not entry[6] then
            entry[6] = call('ZCARD', lane_key(QP, prio, tenant, task)) -- no write to it yet
        end
        if entry and entry[6] == 0 then
            news[qi] = true
        end
        local tkey = QP .. '\0' .. tenant
        if entry and not activated[tkey] then
            -- The tenant's first ready job (in this queue): idleness banks no credit.
            -- (Its ready set is written below, after every such check.) A lane of the
            -- tenant that holds jobs already means the tenant has ready jobs: its ready
            -- set exists, and the common case of a busy lane costs no EXISTS.
            activated[tkey] = true
            if entry[6] == 0 and call('EXISTS', QP .. 'r:' .. tenant) == 0 then
                local vclock = tonumber(call('HGET', QP .. 'meta', 'vclock') or '0')
                local vt = tonumber(call('HGET', QP .. 'tv', tenant) or '0')
                call('HSET', QP .. 'tv', tenant, fmt(math.max(vt, vclock)))
            end
        end
    end
end

-- A sorted set that is new or small is a listpack until it outgrows
-- zset-max-listpack-entries (128), and Redis before 7.2 inserts there one member at a
-- time, walking from the head to the member's place: members in ascending order (ids in
-- call order) would walk the whole list each time. Sent largest first, each stops at
-- once: 13 million instructions fewer for the first 1,000 jobs of a fresh queue (Redis 7.0).
local function largest_first(flat)
    local out = {}
    for i = #flat - 1, 1, -2 do
        out[#out + 1] = flat[i]
        out[#out + 1] = flat[i + 1]
    end
    return out
end
-- Variadic writes, in chunks that stay below Lua's unpack() limit.
local function zadd_all(key, flat)
    if #flat > 2 and call('ZCARD', key) < #flat / 2 then
        flat = largest_first(flat)
    end
    for i = 1, #flat, 2000 do
        call('ZADD', key, unpack(flat, i, math.min(i + 1999, #flat)))
    end
end
for key, flat in pairs(zadds) do
    if #flat > 0 then
        zadd_all(key, flat)
    end
end
for ckey, count_ in pairs(counts) do
    local QP, field = string.match(ckey, '^(.-)%z(.*)$')
    call('HINCRBY', QP .. 'cnt', field, count_)
end
for lane, entry in pairs(lanes) do
    local flat = entry[5]
    if #flat > 0 then
        local QP, prio, tenant, task = entry[1], entry[2], entry[3], entry[4]
        zadd_all(lane, flat)
        if entry[6] == 0 then
            -- The lane was empty: it joins its (prio, tenant), which may join its level.
            if pt_add(QP, prio, tenant, task) then
                local vt = call('HGET', QP .. 'tv', tenant) or '0'
                call('ZADD', QP .. 'p:' .. prio, vt, tenant)
            end
        end
    end
end
for _, l in ipairs(linked) do
    link_dependencies(G, l[1], cjson.decode(l[2]), l[3], now)
end
-- Scheduled jobs wake waiters too: they recompute when the next job falls due.
for qi in pairs(news) do
    local q = queues[qi]
    -- A queue seen before costs one call, not two (its prefix never changes).
    if call('HSETNX', G .. 'qp', q[1], q[2]) == 1 then
        call('SADD', G .. 'queues', q[1])
    end
    wake(q[2])
end
return replaced
