-- Shared helpers, prepended to every script of the Redis backend (see _scripts.py).
--
-- Key layout (all keys of one queue share the queue prefix QP, which carries the hash
-- tag; G is the prefix of store-wide keys, the same tag as the queues in the default
-- layout):
--   G..'j:'..id            hash   one job (fields listed in enqueue.lua)
--   G..'keys'              hash   dedup key -> id of the active job holding it
--   G..'taskrun'           hash   task -> running jobs of the task (task caps)
--   G..'queues'            set    queue name -> its prefix is stored in G..'qp'
--   G..'qp'                hash   queue name -> queue prefix QP
--   G..'lock:'..name       hash   owner, expires_at
--   G..'outbox'            stream events the store produced itself: entries {e = event
--                                 name, id = job id} (see outbox() below)
--   G..'enqueue:template'  hash   exists only inside an enqueue.lua call: the shared
--                                 fields of a run of jobs, copied into each job's hash
--   QP..'meta'             hash   vclock (fair-share clock), aging (seconds per level)
--   QP..'p:'..prio         zset   tenants with a ready job at prio, scored by vtime
--   QP..'t1:'..prio         hash  tenant -> its one task with ready jobs at prio, for a
--                                 tenant with exactly one such task (the common case):
--                                 a claim reads it for a whole page of tenants in one call
--   QP..'t:'..prio..':'..tenant               zset  tasks of that (prio, tenant) with ready
--                                 jobs, for a tenant with two or more (and in stores
--                                 written before 't1' existed, also with one; both are
--                                 read, and a (prio, tenant) is never in both)
--   QP..'l:'..prio..':'..#tenant..':'..tenant..':'..task   zset  lane: ready ids (score 0: id order = FIFO)
--   QP..'tv' / 'tw' / 'tm'  hash  tenant -> vtime / weight / max_running
--   QP..'r:'..tenant        zset  ready ids of the tenant by ready_at (oldest wait);
--                                 it exists exactly while the tenant has ready jobs
--   QP..'s:'..state         zset  ids in that state (score 0: id order, for listing);
--                                 not kept for 'queued' (the lanes list those) nor
--                                 'running' ('leases' holds exactly the running ids):
--                                 a claim then touches two sorted sets fewer
--   QP..'cnt'               hash  state..':'..tenant -> count (stats), for the states
--                                 other than 'queued' (stats counts the lanes) and
--                                 'running' ('leases' holds those); 'running:'..tenant
--                                 is kept only while the queue has tenant caps (QP..'tm'
--                                 not empty), which read it: see counts_running()
--   QP..'due'               zset  scheduled/retrying ids by run_at
--   QP..'leases'            zset  running ids by lease_expires_at
--   QP..'waits'             zset  waiting ids (external completion) by their deadline
--   QP..'aging'             zset  ready ids by age_at (when aging next lifts them a level)
--   QP..'exp'               zset  finished ids by expires_at (purge)
--   QP..'wake'              pub/sub channel: "work may be ready in this queue"
-- Tenants are '' for the default tenant. Times are seconds since the epoch; every
-- number written is formatted with %.17g so that it reads back as the same double.

-- Integers as text, cached per script call: string.format costs about 2,000
-- instructions even for '%d', and a claim or finish spread over many tenants writes
-- the same few counts and vtimes again and again.
local INT_TEXT = {}
local function int_text(n)
    local text = INT_TEXT[n]
    if text == nil then
        text = string.format('%d', n)
        INT_TEXT[n] = text
    end
    return text
end

local function fmt(x)
    -- An integral value (a vtime with weight 1, say) as an integer: the same text as
    -- '%.17g' gives it, without the float formatting.
    if x == math.floor(x) and x > -1e15 and x < 1e15 then
        return int_text(x)
    end
    return string.format('%.17g', x)
end

-- '#name' as text. Lua turns a number into a string with a float format ('%.14g'):
-- cached per script call, since lane keys of many tenants would pay it once each.
local LEN_TEXT = {}
local function len_text(name)
    local n = #name
    local text = LEN_TEXT[n]
    if text == nil then
        text = string.format('%d', n)
        LEN_TEXT[n] = text
    end
    return text
end

-- The store's clock: the injected test clock if the caller passed one, else Redis TIME.
local function clock(arg)
    if arg ~= nil and arg ~= '' then
        return tonumber(arg)
    end
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function jkey(G, id)
    return G .. 'j:' .. id
end

local function lane_key(QP, prio, tenant, task)
    return QP .. 'l:' .. prio .. ':' .. len_text(tenant) .. ':' .. tenant .. ':' .. task
end

-- Counts per (state, tenant) for stats; zero entries are dropped. 'queued' is not
-- counted: a claim spread over many tenants would write a count field per job, and
-- stats reads the lanes instead. 'running' is counted only under tenant caps; a
-- decrement of a count that is not kept finds no field and leaves none.
local function count(QP, state, tenant, delta)
    if state == 'queued' then
        return
    end
    local field = state .. ':' .. tenant
    if redis.call('HINCRBY', QP .. 'cnt', field, delta) <= 0 then
        redis.call('HDEL', QP .. 'cnt', field)
    end
end

-- Where a failed attempt goes: dead when no attempt is left, else retrying until its
-- delay passes, or queued at once.
local function retry_state(attempt, max_attempts, delay)
    if attempt >= max_attempts then
        return 'dead'
    elseif delay > 0 then
        return 'retrying'
    end
    return 'queued'
end

-- Does the queue keep 'running:'..tenant counts? Only while it has tenant caps: a claim
-- then reads them (eligible tenants), and set_tenant.lua recounts them from the leases
-- when the first cap is set. Without caps nothing reads them, and a claim and a finish
-- spread over many tenants would each write one field per job.
local function counts_running(QP)
    return redis.call('HLEN', QP .. 'tm') > 0
end

-- Drops the count fields whose name starts with prefix ('running:', say): O(fields).
local function drop_counts(QP, prefix)
    local gone = {}
    for _, field in ipairs(redis.call('HKEYS', QP .. 'cnt')) do
        if string.sub(field, 1, #prefix) == prefix then
            gone[#gone + 1] = field
        end
    end
    for i = 1, #gone, 1000 do
        redis.call('HDEL', QP .. 'cnt', unpack(gone, i, math.min(i + 999, #gone)))
    end
end

-- Running jobs per tenant, from the leases (which hold exactly the running ids):
-- O(running jobs). For stats, and for set_tenant.lua when counting starts.
local function running_by_tenant(G, QP)
    local n = {}
    for _, id in ipairs(redis.call('ZRANGE', QP .. 'leases', 0, -1)) do
        local tenant = redis.call('HGET', jkey(G, id), 'tenant')
        if tenant then
            n[tenant] = (n[tenant] or 0) + 1
        end
    end
    return n
end

-- Many count changes at once (fields[i] changes by deltas[i]): one read and one write
-- whatever the number of tenants, where count() costs a call or two per change.
local function count_many(QP, fields, deltas)
    if #fields == 0 then
        return
    end
    local current = redis.call('HMGET', QP .. 'cnt', unpack(fields))
    local set, gone = {}, {}
    for i, field in ipairs(fields) do
        local value = tonumber(current[i] or '0') + deltas[i]
        if value > 0 then
            set[#set + 1] = field
            set[#set + 1] = int_text(value) -- no float format
        else -- zero entries are dropped, as count() does
            gone[#gone + 1] = field
        end
    end
    if #set > 0 then
        redis.call('HSET', QP .. 'cnt', unpack(set))
    end
    if #gone > 0 then
        redis.call('HDEL', QP .. 'cnt', unpack(gone))
    end
end

local function set_state(G, QP, id, tenant, old, new)
    if old ~= nil then
        if old ~= 'queued' then
            redis.call('ZREM', QP .. 's:' .. old, id)
        end
        count(QP, old, tenant, -1)
    end
    if new ~= 'queued' then
        redis.call('ZADD', QP .. 's:' .. new, 0, id)
    end
    count(QP, new, tenant, 1)
    redis.call('HSET', jkey(G, id), 'state', new)
end

-- The tasks of a (prio, tenant) with ready jobs: one task sits in the hash 't1' (no
-- key of its own, and a claim reads it for a page of tenants at once); a second task
-- moves both into the sorted set 't:'. Returns true when the (prio, tenant) had no task,
-- i.e. the tenant joins the level.
local function pt_add(QP, prio, tenant, task)
    local pt = QP .. 't:' .. prio .. ':' .. tenant
    if redis.call('EXISTS', pt) == 1 then
        redis.call('ZADD', pt, 0, task)
        return false
    end
    local one_key = QP .. 't1:' .. prio
    if redis.call('HSETNX', one_key, tenant, task) == 1 then
        return true
    end
    local one = redis.call('HGET', one_key, tenant)
    if one ~= task then
        redis.call('HDEL', one_key, tenant)
        redis.call('ZADD', pt, 0, one, 0, task)
    end
    return false
end

-- The task has no ready job left at prio. Returns true when the (prio, tenant) has no
-- task left, i.e. the tenant leaves the level.
local function pt_remove(QP, prio, tenant, task)
    local one_key = QP .. 't1:' .. prio
    local one = redis.call('HGET', one_key, tenant)
    if one then
        if one ~= task then
            return false
        end
        redis.call('HDEL', one_key, tenant)
        return true
    end
    local pt = QP .. 't:' .. prio .. ':' .. tenant
    redis.call('ZREM', pt, task)
    return redis.call('EXISTS', pt) == 0
end

-- Operator paths (depth, query): the tasks of a (prio, tenant), either form.
local function pt_tasks(QP, prio, tenant)
    local one = redis.call('HGET', QP .. 't1:' .. prio, tenant)
    if one then
        return { one }
    end
    return redis.call('ZRANGE', QP .. 't:' .. prio .. ':' .. tenant, 0, -1)
end

-- A job joins its lane; the (prio, tenant) and the tenant's level entry appear when the
-- first job arrives. The level entry is scored by the tenant's current vtime.
local function lane_add(QP, prio, tenant, task, id)
    local lane = lane_key(QP, prio, tenant, task)
    redis.call('ZADD', lane, 0, id)
    if redis.call('ZCARD', lane) == 1 and pt_add(QP, prio, tenant, task) then
        local vt = redis.call('HGET', QP .. 'tv', tenant) or '0'
        redis.call('ZADD', QP .. 'p:' .. prio, vt, tenant)
    end
end

local function lane_remove(QP, prio, tenant, task, id)
    local lane = lane_key(QP, prio, tenant, task)
    if redis.call('ZREM', lane, id) == 1 and redis.call('ZCARD', lane) == 0
        and pt_remove(QP, prio, tenant, task) then
        redis.call('ZREM', QP .. 'p:' .. prio, tenant)
    end
end

local function aging_of(QP)
    local a = redis.call('HGET', QP .. 'meta', 'aging')
    if a then
        return tonumber(a)
    end
    return nil
end

-- A job becomes queued (state already set by the caller). A tenant that had no ready
-- job starts at max(its vtime, the queue's vclock): idleness banks no credit.
-- The job's priority is reset to its base level and aging starts over from ready_at.
local function make_ready(G, QP, id, tenant, task, base, ready_at)
    if redis.call('EXISTS', QP .. 'r:' .. tenant) == 0 then
        local vclock = tonumber(redis.call('HGET', QP .. 'meta', 'vclock') or '0')
        local current = redis.call('HGET', QP .. 'tv', tenant)
        local vt = tonumber(current or '0')
        if not current or vclock > vt then
            redis.call('HSET', QP .. 'tv', tenant, fmt(math.max(vt, vclock)))
        end
    end
    lane_add(QP, base, tenant, task, id)
    redis.call('ZADD', QP .. 'r:' .. tenant, fmt(ready_at), id)
    local key = jkey(G, id)
    local aging = aging_of(QP)
    if aging and tonumber(base) > 0 then
        local age_at = ready_at + aging
        redis.call('HSET', key, 'priority', base, 'ready_at', fmt(ready_at), 'age_at', fmt(age_at))
        redis.call('ZADD', QP .. 'aging', fmt(age_at), id)
    else
        redis.call('HSET', key, 'priority', base, 'ready_at', fmt(ready_at))
        redis.call('HDEL', key, 'age_at')
    end
end

-- A queued job leaves the ready structures (claim or cancel).
local function unready(QP, id, tenant, task, prio)
    lane_remove(QP, prio, tenant, task, id)
    redis.call('ZREM', QP .. 'r:' .. tenant, id)
    redis.call('ZREM', QP .. 'aging', id)
end

-- A running job stops running (any path): its lease and its cap slots are freed.
local function unrun(G, QP, id, tenant, task)
    redis.call('ZREM', QP .. 'leases', id)
    if redis.call('HINCRBY', G .. 'taskrun', task, -1) <= 0 then
        redis.call('HDEL', G .. 'taskrun', task)
    end
    redis.call('HDEL', jkey(G, id), 'lease_token', 'lease_expires_at')
end

-- A job reached a final state: its dedup key is free again.
local function release_key(G, id, key)
    if key and key ~= '' and redis.call('HGET', G .. 'keys', key) == id then
        redis.call('HDEL', G .. 'keys', key)
    end
end

-- Finished (succeeded or cancelled): the record expires result_ttl after now.
local function set_expiry(G, QP, id, ttl, now)
    if ttl and ttl ~= '' then
        local at = now + tonumber(ttl)
        redis.call('HSET', jkey(G, id), 'expires_at', fmt(at))
        redis.call('ZADD', QP .. 'exp', fmt(at), id)
    end
end

local function append_error(G, id, err)
    if err == nil or err == '' then
        return
    end
    local key = jkey(G, id)
    local errors = redis.call('HGET', key, 'errors')
    if not errors or errors == '[]' then
        errors = '[' .. err .. ']'
    else
        errors = string.sub(errors, 1, -2) .. ',' .. err .. ']'
    end
    redis.call('HSET', key, 'errors', errors)
end

-- Due scheduled/retrying jobs -> queued (at most limit; -1 for all), then aging steps.
-- Returns the number of changes (promotions plus one per level a job moved up).
local function promote_queue(G, QP, now, limit)
    local changed = 0
    local due
    if limit < 0 then
        due = redis.call('ZRANGE', QP .. 'due', '-inf', fmt(now), 'BYSCORE')
    else
        due = redis.call('ZRANGE', QP .. 'due', '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0, limit)
    end
    for _, id in ipairs(due) do
        local key = jkey(G, id)
        local f = redis.call('HMGET', key, 'state', 'tenant', 'task', 'base_priority', 'run_at')
        redis.call('ZREM', QP .. 'due', id)
        if f[1] == 'scheduled' or f[1] == 'retrying' then
            set_state(G, QP, id, f[2], f[1], 'queued')
            -- It has been ready since it fell due, even when promotion runs late.
            make_ready(G, QP, id, f[2], f[3], f[4], tonumber(f[5]))
            changed = changed + 1
        end
    end
    local aging = aging_of(QP)
    if aging then
        local aged = redis.call('ZRANGE', QP .. 'aging', '-inf', fmt(now), 'BYSCORE')
        for _, id in ipairs(aged) do
            local key = jkey(G, id)
            local f = redis.call('HMGET', key, 'tenant', 'task', 'priority', 'age_at')
            local prio = tonumber(f[3])
            local age_at = tonumber(f[4])
            local lifted = prio
            while lifted > 0 and age_at <= now do
                lifted = lifted - 1
                age_at = age_at + aging
                changed = changed + 1
            end
            lane_remove(QP, prio, f[1], f[2], id)
            lane_add(QP, lifted, f[1], f[2], id)
            if lifted > 0 then
                redis.call('HSET', key, 'priority', lifted, 'age_at', fmt(age_at))
                redis.call('ZADD', QP .. 'aging', fmt(age_at), id)
            else
                redis.call('HSET', key, 'priority', lifted)
                redis.call('HDEL', key, 'age_at')
                redis.call('ZREM', QP .. 'aging', id)
            end
        end
    end
    return changed
end

-- Ids of every ready job of a queue (operator paths only: O(ready jobs)).
local function ready_ids(QP)
    local ids, seen = {}, {}
    for prio = 0, 9 do
        for _, tenant in ipairs(redis.call('ZRANGE', QP .. 'p:' .. prio, 0, -1)) do
            if not seen[tenant] then
                seen[tenant] = true
                for _, id in ipairs(redis.call('ZRANGE', QP .. 'r:' .. tenant, 0, -1)) do
                    ids[#ids + 1] = id
                end
            end
        end
    end
    return ids
end

-- Is any job ready in the queue? (Some tenant is at some priority level.)
local function any_ready(QP)
    local levels = {}
    for prio = 0, 9 do
        levels[#levels + 1] = QP .. 'p:' .. prio
    end
    return redis.call('EXISTS', unpack(levels)) > 0
end

local function wake(QP)
    redis.call('PUBLISH', QP .. 'wake', '1')
end

-- Dependencies (after=). Keys:
--   G..'dn:'..id   set   ids of blocked jobs waiting for job id (deleted once settled)
-- Job hash fields of a job with dependencies: pending (unfinished dependencies),
-- after_policy ('success' or 'always').
-- A job reaching a final state settles its dependents in the same script, whatever
-- path finished it (finish, reap, cancel, or a cascade of this very helper).
local settle_dependents

local function dependency_error(attempt, message, now)
    return cjson.encode({ attempt = tonumber(attempt) or 0, type = 'DependencyFailed',
        message = message, traceback = cjson.null, at = now })
end

-- The outbox (Backend.take_events): a job cancelled from any state but running was
-- cancelled by the store itself (cancel.lua, the cascade below), so no worker will
-- announce it; the same script records the announcement it owes. running -> cancelled
-- is its worker's own outcome and never comes here, except where no outcome will come:
-- the reaper's (reap.lua: the job's worker is lost) and a rate-limit deferral's
-- (rate.lua: the attempt was given back). The stream is
-- capped (the oldest entries go first) in case no worker drains it for a long time.
local OUTBOX_MAX = 100000
local function outbox(G, event, id)
    redis.call('XADD', G .. 'outbox', 'MAXLEN', '~', OUTBOX_MAX, '*', 'e', event, 'id', id)
end

-- A blocked job is cancelled because a dependency failed; its own dependents follow.
local function cancel_blocked(G, id, message, now)
    local key = jkey(G, id)
    local f = redis.call('HMGET', key, 'qp', 'tenant', 'task', 'result_ttl', 'key', 'attempt')
    set_state(G, f[1], id, f[2], 'blocked', 'cancelled')
    redis.call('HSET', key, 'finished_at', fmt(now))
    set_expiry(G, f[1], id, f[4], now)
    release_key(G, id, f[5])
    append_error(G, id, dependency_error(f[6], message, now))
    outbox(G, 'job.cancelled', id)
    settle_dependents(G, id, 'cancelled', f[3], now)
end

-- Every dependency of a blocked job finished: queued, or scheduled when its own due
-- time is still ahead.
local function release_blocked(G, id, now)
    local key = jkey(G, id)
    local f = redis.call('HMGET', key, 'qp', 'tenant', 'task', 'base_priority', 'run_at')
    local QP = f[1]
    local run_at = tonumber(f[5] or '')
    if run_at and run_at > now then
        set_state(G, QP, id, f[2], 'blocked', 'scheduled')
        redis.call('ZADD', QP .. 'due', fmt(run_at), id)
    else
        set_state(G, QP, id, f[2], 'blocked', 'queued')
        make_ready(G, QP, id, f[2], f[3], f[4], now)
    end
    wake(QP)
end

settle_dependents = function(G, id, state, task, now)
    local dk = G .. 'dn:' .. id
    local children = redis.call('SMEMBERS', dk)
    if #children == 0 then
        return
    end
    redis.call('DEL', dk)
    table.sort(children) -- a deterministic order (ids sort by creation)
    for _, child in ipairs(children) do
        local ck = jkey(G, child)
        local f = redis.call('HMGET', ck, 'state', 'after_policy')
        if f[1] == 'blocked' then
            if state ~= 'succeeded' and f[2] ~= 'always' then
                cancel_blocked(G, child, 'dependency ' .. id .. ' (' .. task .. ') ended ' .. state, now)
            elseif redis.call('HINCRBY', ck, 'pending', -1) <= 0 then
                release_blocked(G, child, now)
            end
        end
    end
end

-- A freshly inserted blocked job: record its dependencies (every one exists, checked
-- before anything was written) or settle it at once when they already finished.
local function link_dependencies(G, id, deps, policy, now)
    local pending, failed = 0, nil
    for _, parent in ipairs(deps) do
        local f = redis.call('HMGET', jkey(G, parent), 'state', 'task')
        if f[1] == 'succeeded' then
            -- nothing to wait for
        elseif f[1] == 'dead' or f[1] == 'cancelled' then
            if policy ~= 'always' and not failed then
                failed = 'dependency ' .. parent .. ' (' .. f[2] .. ') ended ' .. f[1]
            end
        elseif redis.call('SADD', G .. 'dn:' .. parent, id) == 1 then
            pending = pending + 1
        end
    end
    redis.call('HSET', jkey(G, id), 'pending', pending, 'after_policy', policy)
    if failed then
        cancel_blocked(G, id, failed, now)
    elseif pending == 0 then
        release_blocked(G, id, now)
    end
end
