-- claim_jobs(now, G, argv, first, last): claim with the arguments argv[first..last]
-- (token base, worker, lease, caps, promote limit, limit, queue prefixes...; see
-- claim.lua); returns claim.lua's reply. Used by claim.lua and finish_claim.lua.
local function claim_jobs(now, G, argv, first, last)
    local expires = now + tonumber(argv[first + 2])
    local token_base, worker = argv[first], argv[first + 1]
    local caps = cjson.decode(argv[first + 3])
    local promote_limit = tonumber(argv[first + 4])
    local limit = tonumber(argv[first + 5])
    local sexp, snow = fmt(expires), fmt(now)

    -- Tasks at their cap for the whole claim: counts start from the store and grow with
    -- every job of the task this claim takes.
    local running, capped = {}, {}
    for task, cap in pairs(caps) do
        running[task] = tonumber(redis.call('HGET', G .. 'taskrun', task) or '0')
        capped[task] = running[task] >= cap
    end

    local out = { snow, '' }
    local next_due = nil
    local claimed = 0
    local taskrun = {}

    local function queue_claim(QP)
        local vt, weight, max_running, tn = {}, {}, {}, {}
        local taken, by_tenant = {}, {}

        local function vtime(tenant)
            local v = vt[tenant]
            if v == nil then
                v = tonumber(redis.call('HGET', QP .. 'tv', tenant) or '0')
                vt[tenant] = v
            end
            return v
        end

        -- Most queues have no tenant caps or weights: one HLEN each spares a lookup per tenant.
        local has_caps = redis.call('HLEN', QP .. 'tm') > 0
        local has_weights = redis.call('HLEN', QP .. 'tw') > 0
        local vclock = nil

        local function eligible(tenant)
            if not has_caps then
                return true
            end
            local m = max_running[tenant]
            if m == nil then
                m = tonumber(redis.call('HGET', QP .. 'tm', tenant) or '-1')
                max_running[tenant] = m
            end
            if m < 0 then
                return true
            end
            if tn[tenant] == nil then
                tn[tenant] = tonumber(redis.call('HGET', QP .. 'cnt', 'running:' .. tenant) or '0')
            end
            return tn[tenant] < m
        end

        -- Reads of the ready structures are cached for the length of this claim: only
        -- this script writes them while it runs, and each write below updates its cache.
        -- A claim of n jobs from one lane then reads the lane once, not n times.
        local pages = {} -- prio -> first page of the level: {entries = {{tenant, score}...}, complete}
        local tasks_of = {} -- 'prio:tenant' -> task names with ready jobs (the whole set)
        local heads = {} -- lane key -> {ids, pos, complete, taken}: ids read from the lane's head

        local function read_page(prio, offset)
            local raw = redis.call('ZRANGE', QP .. 'p:' .. prio, offset, offset + 7, 'WITHSCORES')
            local entries = {}
            for i = 1, #raw, 2 do
                entries[#entries + 1] = { raw[i], tonumber(raw[i + 1]) }
            end
            return entries
        end

        -- The cached first page is always a prefix of the level's order (complete: the
        -- whole level). A tenant whose new score may put it beyond the prefix leaves it;
        -- a prefix shorter than a page is read again before going past it.
        local function first_page(prio)
            local page = pages[prio]
            if page == nil or (#page.entries == 0 and not page.complete) then
                local entries = read_page(prio, 0)
                page = { entries = entries, complete = #entries < 8 }
                pages[prio] = page
            end
            return page
        end

        local function tasks(prio, tenant)
            local k = prio .. ':' .. tenant
            local list = tasks_of[k]
            if list == nil then
                list = redis.call('ZRANGE', QP .. 't:' .. k, 0, -1)
                tasks_of[k] = list
            end
            return list
        end

        -- The lane's head. The first read takes one id (with many tenants, a claim takes
        -- one job per lane); a lane read again reads ahead as many as the claim may take.
        local function lane_head(lane)
            local h = heads[lane]
            if h == nil then
                h = { ids = {}, pos = 1, complete = false, taken = {} }
                heads[lane] = h
            end
            if h.pos > #h.ids and not h.complete then
                local want = #h.taken == 0 and 1 or math.max(limit - claimed, 1)
                -- The ids taken so far are still in the lane (removed at the end): skip them.
                local offset = #h.taken
                h.ids = redis.call('ZRANGE', lane, offset, offset + want - 1)
                h.pos = 1
                h.complete = #h.ids < want
            end
            return h.ids[h.pos]
        end

        local function by_score(x, y)
            if x[2] ~= y[2] then
                return x[2] < y[2]
            end
            return x[1] < y[1]
        end

        -- The tenant's score at the level changed (or it left the level: score nil).
        local function page_update(prio, tenant, score)
            local page = pages[prio]
            if page == nil then
                return
            end
            local entries = page.entries
            for i, e in ipairs(entries) do
                if e[1] == tenant then
                    if score == nil then
                        table.remove(entries, i)
                    else
                        e[2] = score
                        table.sort(entries, by_score)
                        -- Last of a partial prefix: tenants outside it may come first now.
                        if not page.complete and entries[#entries][1] == tenant then
                            table.remove(entries)
                        end
                    end
                    return
                end
            end
        end

        -- The head of a lane was taken: the lane may be empty now (it was read to its end),
        -- and then the task leaves its (prio, tenant), and maybe the tenant its level.
        local function lane_take(prio, tenant, task, lane, id)
            local h = heads[lane]
            h.taken[#h.taken + 1] = id
            h.pos = h.pos + 1
            if h.pos <= #h.ids or not h.complete then
                return
            end
            redis.call('ZREM', QP .. 't:' .. prio .. ':' .. tenant, task)
            local list = tasks(prio, tenant)
            for i, name in ipairs(list) do
                if name == task then
                    table.remove(list, i)
                    break
                end
            end
            if #list == 0 then
                redis.call('ZREM', QP .. 'p:' .. prio, tenant)
                page_update(prio, tenant, nil)
            end
        end

        local function pick(prio)
            local offset = 0
            while true do
                local entries, partial = nil, false
                if offset == 0 then
                    local page = first_page(prio)
                    entries, partial = page.entries, not page.complete and #page.entries < 8
                else
                    entries = read_page(prio, offset)
                end
                if #entries == 0 then
                    return nil
                end
                local stale = false
                for _, e in ipairs(entries) do
                    local tenant = e[1]
                    local v = vtime(tenant)
                    if v ~= e[2] then
                        redis.call('ZADD', QP .. 'p:' .. prio, fmt(v), tenant)
                        pages[prio] = nil
                        stale = true
                        break
                    end
                    if eligible(tenant) then
                        local best_id, best_task, best_lane = nil, nil, nil
                        for _, task in ipairs(tasks(prio, tenant)) do
                            if not capped[task] then
                                local lane = lane_key(QP, prio, tenant, task)
                                local head = lane_head(lane)
                                if head and (best_id == nil or head < best_id) then
                                    best_id, best_task, best_lane = head, task, lane
                                end
                            end
                        end
                        if best_id then
                            return tenant, best_task, best_id, best_lane
                        end
                    end
                end
                if stale then
                    offset = 0 -- a corrected tenant moved back: read the level again
                elseif partial then
                    pages[prio] = nil -- past a shortened prefix: read a full first page
                else
                    offset = offset + 8
                end
            end
        end

        local function take(prio, tenant, task, id, lane)
            local key = jkey(G, id)
            lane_take(prio, tenant, task, lane, id)
            -- Fair share: the queue's clock becomes the tenant's vtime, then the tenant pays.
            local v = vtime(tenant)
            vclock = v
            if weight[tenant] == nil then
                weight[tenant] = has_weights and tonumber(redis.call('HGET', QP .. 'tw', tenant) or '1') or 1
            end
            v = v + 1.0 / weight[tenant]
            vt[tenant] = v
            redis.call('ZADD', QP .. 'p:' .. prio, 'XX', fmt(v), tenant)
            page_update(prio, tenant, v)
            if tn[tenant] ~= nil then
                tn[tenant] = tn[tenant] + 1
            end
            claimed = claimed + 1
            local token = token_base .. string.format('%x', claimed)
            local f = redis.call('HMGET', key, 'attempt', 'queue', 'priority', 'args', 'kwargs',
                'max_attempts', 'timeout', 'enqueued_at', 'cancel_requested', 'progress',
                'progress_message')
            local attempt = tonumber(f[1]) + 1
            redis.call('HSET', key, 'state', 'running', 'attempt', attempt, 'lease_token', token,
                'lease_expires_at', sexp, 'started_at', snow, 'worker', worker)
            if f[9] or f[10] or f[11] then
                redis.call('HDEL', key, 'cancel_requested', 'progress', 'progress_message')
            end
            taken[#taken + 1] = id
            local list = by_tenant[tenant]
            if not list then
                list = {}
                by_tenant[tenant] = list
            end
            list[#list + 1] = id
            taskrun[task] = (taskrun[task] or 0) + 1
            if caps[task] then
                running[task] = running[task] + 1
                if running[task] >= caps[task] then
                    capped[task] = true
                end
            end
            local row = { id, task, f[2], tenant, f[3], f[4], f[5], attempt, f[6], f[7] or '', token,
                sexp, f[8] }
            for _, x in ipairs(row) do
                out[#out + 1] = x
            end
        end

        promote_queue(G, QP, now, promote_limit)
        for prio = 0, 9 do
            while claimed < limit do
                local tenant, task, id, lane = pick(prio)
                if not tenant then
                    break
                end
                take(prio, tenant, task, id, lane)
            end
            if claimed >= limit then
                break
            end
        end

        -- Indexes and counters the picking does not read, once per call.
        for lane, h in pairs(heads) do
            if #h.taken > 0 then
                redis.call('ZREM', lane, unpack(h.taken))
            end
        end
        if #taken > 0 then
            redis.call('ZREM', QP .. 'aging', unpack(taken))
            local members, leases = {}, {}
            for _, id in ipairs(taken) do
                members[#members + 1] = 0
                members[#members + 1] = id
                leases[#leases + 1] = sexp
                leases[#leases + 1] = id
            end
            redis.call('ZADD', QP .. 's:running', unpack(members))
            redis.call('ZADD', QP .. 'leases', unpack(leases))
        end
        -- Per tenant: its ready index, its vtime and its queued/running counts; the
        -- vtimes and counts of all tenants in one call each (a claim spread over many
        -- tenants would otherwise pay several calls per job).
        local vtimes, fields, deltas = {}, {}, {}
        for tenant, ids in pairs(by_tenant) do
            local n = #ids
            redis.call('ZREM', QP .. 'r:' .. tenant, unpack(ids))
            vtimes[#vtimes + 1] = tenant
            vtimes[#vtimes + 1] = fmt(vt[tenant])
            fields[#fields + 1] = 'queued:' .. tenant
            deltas[#deltas + 1] = -n
            fields[#fields + 1] = 'running:' .. tenant
            deltas[#deltas + 1] = n
        end
        if #vtimes > 0 then
            redis.call('HSET', QP .. 'tv', unpack(vtimes))
            local current = redis.call('HMGET', QP .. 'cnt', unpack(fields))
            local set, gone = {}, {}
            for i, field in ipairs(fields) do
                local value = tonumber(current[i] or '0') + deltas[i]
                if value > 0 then
                    set[#set + 1] = field
                    set[#set + 1] = value
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
        if vclock ~= nil then
            redis.call('HSET', QP .. 'meta', 'vclock', fmt(vclock))
        end

        local first = redis.call('ZRANGE', QP .. 'due', 0, 0, 'WITHSCORES')
        if first[2] then
            local at = tonumber(first[2])
            if next_due == nil or at < next_due then
                next_due = at
            end
        end
    end

    for i = first + 6, last do
        queue_claim(argv[i])
    end
    for task, n in pairs(taskrun) do
        redis.call('HINCRBY', G .. 'taskrun', task, n)
    end
    if next_due then
        out[2] = fmt(next_due)
    end
    return out
end
