-- finish_outcomes(now, G, outcomes, caps): apply the outcomes, each a list of 6 fields
-- (see finish.lua); returns one 1/0 per outcome. Used by finish.lua and finish_claim.lua.
-- caps: the finishing worker's task caps ({task: cap}), or nil when unknown. A freed
-- slot wakes waiting workers only if it may unblock a capped job: always when caps are
-- unknown, else when the queue has tenant caps or a finished job's task is capped.
local function finish_outcomes(now, G, outcomes, caps)
    local snow = fmt(now)
    local applied = {}
    local wake_queues = {}
    -- Per queue: ids leaving running, per-(state, tenant) count changes, index additions.
    local per_queue = {}
    local taskrun = {}

    local function bucket(QP)
        local b = per_queue[QP]
        if not b then
            b = { left = {}, counts = {}, adds = {}, tenant_caps = counts_running(QP) }
            per_queue[QP] = b
        end
        return b
    end

    local function add(map, key, score, member)
        local list = map[key]
        if not list then
            list = {}
            map[key] = list
        end
        list[#list + 1] = score
        list[#list + 1] = member
    end

    -- Most finished jobs have no dependents: one EXISTS for the batch spares a lookup
    -- per job. (Dependents are only ever registered by enqueue, never by a finish, so
    -- a batch without any stays without while it is applied.)
    local has_dependents = false
    if #outcomes > 0 then
        local dn = {}
        for i, o in ipairs(outcomes) do
            dn[i] = G .. 'dn:' .. o[1]
        end
        has_dependents = redis.call('EXISTS', unpack(dn)) > 0
    end
    local expiry = {} -- result_ttl -> formatted expires_at (one format per distinct ttl)

    for _, o in ipairs(outcomes) do
        local id, token, kind = o[1], o[2], o[3]
        local result, err, delay = o[4], o[5], tonumber(o[6])
        local key = jkey(G, id)
        -- A success needs these fields only; the other outcomes read five more (each
        -- field read scans the job's hash).
        local f = redis.call('HMGET', key, 'state', 'lease_token', 'qp', 'tenant', 'task',
            'result_ttl', 'key')
        if f[1] ~= 'running' or f[2] ~= token then
            applied[#applied + 1] = 0
        else
            applied[#applied + 1] = 1
            local QP, tenant, task = f[3], f[4], f[5]
            local ttl, dkey = f[6], f[7]
            local attempt, max_attempts, cancel_requested, base, errors
            if kind ~= 'succeeded' then
                local g = redis.call('HMGET', key, 'attempt', 'max_attempts', 'cancel_requested',
                    'base_priority', 'errors')
                attempt, max_attempts = tonumber(g[1]), tonumber(g[2])
                cancel_requested = g[3] == '1'
                base, errors = g[4], g[5]
            end
            local b = bucket(QP)
            local fields = {}
            local new
            if kind == 'succeeded' then
                new = 'succeeded'
                if result ~= '' then -- '' is never valid JSON: it stands for "no result"
                    fields = { 'result', result }
                end
            elseif kind == 'dead' or kind == 'cancelled' then
                new = kind
            elseif kind == 'retry' then
                if cancel_requested then
                    new = 'cancelled'
                else
                    new = retry_state(attempt, max_attempts, delay)
                end
            else -- released: the attempt is given back
                fields = { 'attempt', math.max(attempt - 1, 0) }
                new = cancel_requested and 'cancelled' or 'queued'
            end
            -- Errors are recorded for failed attempts (retry, dead, cancelled) only, as the
            -- reference engine does: a success or a release has no error of its own.
            if err ~= '' and kind ~= 'succeeded' and kind ~= 'released' then
                if not errors or errors == '[]' then
                    errors = '[' .. err .. ']'
                else
                    errors = string.sub(errors, 1, -2) .. ',' .. err .. ']'
                end
                fields[#fields + 1] = 'errors'
                fields[#fields + 1] = errors
            end
            fields[#fields + 1] = 'state'
            fields[#fields + 1] = new
            if kind == 'retry' or kind == 'released' then
                -- Whatever comes next, the job leaves its aged priority behind.
                fields[#fields + 1] = 'priority'
                fields[#fields + 1] = base
            end
            if new == 'retrying' then
                local run_at = fmt(now + delay)
                fields[#fields + 1] = 'run_at'
                fields[#fields + 1] = run_at
                add(b.adds, QP .. 'due', run_at, id)
                wake_queues[QP] = true
            elseif new ~= 'queued' then
                fields[#fields + 1] = 'finished_at'
                fields[#fields + 1] = snow
                if new ~= 'dead' and ttl and ttl ~= '' then
                    local at = expiry[ttl]
                    if at == nil then
                        at = fmt(now + tonumber(ttl))
                        expiry[ttl] = at
                    end
                    fields[#fields + 1] = 'expires_at'
                    fields[#fields + 1] = at
                    add(b.adds, QP .. 'exp', at, id)
                end
                release_key(G, id, dkey)
            end
            redis.call('HSET', key, unpack(fields))
            if has_dependents and (new == 'succeeded' or new == 'dead' or new == 'cancelled') then
                settle_dependents(G, id, new, task, now)
            end
            redis.call('HDEL', key, 'lease_token', 'lease_expires_at')
            if new == 'queued' then
                make_ready(G, QP, id, tenant, task, base, now)
                wake_queues[QP] = true
            end
            b.left[#b.left + 1] = id
            if new ~= 'queued' then
                add(b.adds, QP .. 's:' .. new, '0', id)
            end
            -- Counts (see count()): 'running' only under tenant caps, never 'queued'.
            if b.tenant_caps then
                b.counts['running:' .. tenant] = (b.counts['running:' .. tenant] or 0) - 1
            end
            if new ~= 'queued' then
                b.counts[new .. ':' .. tenant] = (b.counts[new .. ':' .. tenant] or 0) + 1
            end
            taskrun[task] = (taskrun[task] or 0) + 1
            if caps == nil or caps[task] then
                b.freed_cap = true
            end
        end
    end

    for QP, b in pairs(per_queue) do
        redis.call('ZREM', QP .. 'leases', unpack(b.left))
        -- 's:running' is no longer written (running jobs are listed from 'leases'); a
        -- store written by an older version may still hold entries: drop them as they end.
        redis.call('ZREM', QP .. 's:running', unpack(b.left))
        for key, flat in pairs(b.adds) do
            redis.call('ZADD', key, unpack(flat))
        end
        -- All count changes in one read and one write (a batch spread over many
        -- tenants would otherwise pay two calls per job).
        local fields, deltas = {}, {}
        for field, n in pairs(b.counts) do
            if n ~= 0 then
                fields[#fields + 1] = field
                deltas[#deltas + 1] = n
            end
        end
        count_many(QP, fields, deltas)
        -- A freed slot may unblock a capped job: worth a wake-up if anything is ready.
        local freed_cap = b.freed_cap or b.tenant_caps
        if wake_queues[QP] or (freed_cap and any_ready(QP)) then
            wake(QP)
        end
    end
    for task, n in pairs(taskrun) do
        if redis.call('HINCRBY', G .. 'taskrun', task, -n) <= 0 then
            redis.call('HDEL', G .. 'taskrun', task)
        end
    end
    return applied
end
