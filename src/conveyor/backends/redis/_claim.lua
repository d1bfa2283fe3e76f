-- claim_jobs(now, G, argv, first, last): claim with the arguments argv[first..last]
-- (token base, worker, lease, caps, promote limit, limit, queue prefixes...; see
-- claim.lua); returns claim.lua's reply. Used by claim.lua and finish_claim.lua.
-- Level names and token suffixes as constants: turning a Lua number into a string costs
-- a sprintf, and the claim would otherwise do several per job.
local PRIO_NAME = { [0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9' }
local TOKEN_SUFFIX = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
-- Popped lanes are found empty later (see lane_head), and those of tenants just served
-- sit at the end of their level's order: when a large backlog drains, one claim would
-- meet all of them, holding the server for O(tenants). A claim drops at most this many
-- and then stops, telling its caller to come back at once (next due time = now).
local EMPTY_LANES_PER_CLAIM = 200

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
    local emptied = 0 -- lanes found empty by this claim (see EMPTY_LANES_PER_CLAIM)
    local taskrun = {}

    local function queue_claim(QP)
        local vt, weight, max_running, tn = {}, {}, {}, {}
        local taken, by_tenant = {}, {}
        local queue_name = nil -- the same for every job of QP: read once
        -- Tenants whose vtime changed at a level: their level score is written once per
        -- claim (or before the level is next read), not once per job.
        local dirty = {} -- prio -> {tenant -> true}
        local vstr = {} -- tenant -> its vtime formatted (a float format costs ~2,000 instructions)
        local function vtime_str(tenant)
            local text = vstr[tenant]
            if text == nil then
                text = fmt(vt[tenant])
                vstr[tenant] = text
            end
            return text
        end

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
        -- lane key -> {ids = ids read from the lane's head, pos, complete, n, [1..n] = the
        -- ids taken}: one table per lane (a claim over many tenants reads many lanes)
        local heads = {}
        -- 'prio:tenant' -> {task -> lane key}, or the lane key itself for a tenant whose
        -- one task is kept in 't1' (its tasks_of entry is then the task name, a string)
        local lanes_of = {}

        local function flush_scores(prio)
            local d = dirty[prio]
            if d == nil then
                return
            end
            dirty[prio] = nil
            local args = {}
            for tenant in pairs(d) do
                args[#args + 1] = vtime_str(tenant)
                args[#args + 1] = tenant
            end
            -- XX: a tenant that left the level meanwhile stays out.
            redis.call('ZADD', QP .. 'p:' .. PRIO_NAME[prio], 'XX', unpack(args))
        end

        local function read_page(prio, offset, size)
            flush_scores(prio)
            local raw = redis.call('ZRANGE', QP .. 'p:' .. PRIO_NAME[prio], offset, offset + size - 1,
                'WITHSCORES')
            local entries, unknown = {}, {}
            for i = 1, #raw, 2 do
                entries[#entries + 1] = { raw[i], tonumber(raw[i + 1]) }
                if vt[raw[i]] == nil then
                    unknown[#unknown + 1] = raw[i]
                end
            end
            -- The vtimes of the page's tenants in one call, not one per tenant.
            if #unknown > 0 then
                local values = redis.call('HMGET', QP .. 'tv', unpack(unknown))
                for i, tenant in ipairs(unknown) do
                    vt[tenant] = tonumber(values[i] or '0')
                end
            end
            -- And the single tasks of those with one (most tenants): a claim spread over
            -- many tenants then reads no task list per tenant.
            local names, untold = PRIO_NAME[prio], {}
            for _, e in ipairs(entries) do
                if tasks_of[names .. ':' .. e[1]] == nil then
                    untold[#untold + 1] = e[1]
                end
            end
            if #untold > 0 then
                local ones = redis.call('HMGET', QP .. 't1:' .. names, unpack(untold))
                for i, tenant in ipairs(untold) do
                    if ones[i] then
                        local k = names .. ':' .. tenant
                        tasks_of[k] = ones[i]
                        lanes_of[k] = lane_key(QP, names, tenant, ones[i])
                    end
                end
            end
            return entries
        end

        -- The cached first page is always a prefix of the level's order (complete: the
        -- whole level). A tenant whose new score may put it beyond the prefix leaves it;
        -- a prefix shorter than a page is read again before going past it.
        local function first_page(prio)
            local page = pages[prio]
            if page == nil or (#page.entries == 0 and not page.complete) then
                -- As many tenants as the claim may still take, and one more (the order
                -- past them), at least 8: with many tenants, a claim takes one job per
                -- tenant and then reads its level once, not once per 8 jobs.
                local size = math.max(8, limit - claimed + 1)
                local entries = read_page(prio, 0, size)
                page = { entries = entries, complete = #entries < size, size = size }
                pages[prio] = page
            end
            return page
        end

        -- The tasks of a (prio, tenant) and their lanes: a task name and its lane key for
        -- a tenant with one task in 't1', else a list of names and a table of lanes.
        local function tasks(prio, tenant)
            local k = PRIO_NAME[prio] .. ':' .. tenant
            local list = tasks_of[k]
            if list == nil then
                local one = redis.call('HGET', QP .. 't1:' .. PRIO_NAME[prio], tenant)
                if one then
                    tasks_of[k] = one
                    lanes_of[k] = lane_key(QP, PRIO_NAME[prio], tenant, one)
                    return one, lanes_of[k]
                end
                list = redis.call('ZRANGE', QP .. 't:' .. k, 0, -1)
                tasks_of[k] = list
                local lanes = {}
                for _, task in ipairs(list) do
                    lanes[task] = lane_key(QP, PRIO_NAME[prio], tenant, task)
                end
                lanes_of[k] = lanes
            end
            return list, lanes_of[k]
        end

        -- The lane's head. A lane visited to be taken from (a tenant with one task) is
        -- popped: ZPOPMIN reads and removes its head in one call (with many tenants a
        -- claim takes one job per lane, and read + remove was two calls per job). That
        -- leaves it unknown whether the lane emptied: a lane found empty later, by this
        -- claim or the next, leaves its (prio, tenant) then ("lazy emptiness"). A lane
        -- visited to be compared (a tenant with several tasks) is read: its first read
        -- takes two ids (the second tells whether the lane empties). A lane read again
        -- reads ahead as many as the claim may take (and one more, for a compared one).
        local function lane_head(lane, pop)
            local h = heads[lane]
            if h == nil then
                h = { pos = 1, complete = false, n = 0, popped = 0 }
                heads[lane] = h
                if pop then
                    local got = redis.call('ZPOPMIN', lane)
                    h.ids, h.complete = { got[1] }, got[1] == nil
                    h.popped = #h.ids
                    return got[1]
                end
            end
            if h.ids == nil or (h.pos > #h.ids and not h.complete) then
                local want
                if h.n == 0 then
                    want = 2
                else
                    want = math.max(limit - claimed, 1) + (h.popped == 0 and 1 or 0)
                end
                -- The ids taken so far and not popped are still in the lane (removed at
                -- the end): skip them.
                local offset = h.n - h.popped
                h.ids = redis.call('ZRANGE', lane, offset, offset + want - 1)
                h.pos = 1
                h.complete = #h.ids < want
            end
            return h.ids[h.pos]
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
                    table.remove(entries, i)
                    if score ~= nil then
                        -- Back into (score, name) order by a scan of the page (at most 8
                        -- entries): table.sort with a Lua comparator cost about 25,000
                        -- instructions, paid per job when every job is another tenant's.
                        e[2] = score
                        local j, n = 1, #entries
                        local last = entries[n]
                        if last and not page.complete and (score > last[2]
                                or (score == last[2] and tenant > last[1])) then
                            -- Past the last of a partial prefix (the common case: the
                            -- tenant just paid for a job): out, without a scan.
                            return
                        end
                        while j <= n and (entries[j][2] < score
                                or (entries[j][2] == score and entries[j][1] < tenant)) do
                            j = j + 1
                        end
                        -- Last of a partial prefix: tenants outside it may come first now.
                        if j <= n or page.complete then
                            table.insert(entries, j, e)
                        end
                    end
                    return
                end
            end
        end

        -- A task has no ready job left at the level: it leaves its (prio, tenant), and the
        -- tenant its level when that was its last task.
        local function drop_task(prio, tenant, task)
            local k = PRIO_NAME[prio] .. ':' .. tenant
            local list = tasks(prio, tenant)
            local left
            if type(list) == 'string' then
                redis.call('HDEL', QP .. 't1:' .. PRIO_NAME[prio], tenant)
                tasks_of[k], lanes_of[k] = {}, {}
                left = 0
            else
                redis.call('ZREM', QP .. 't:' .. k, task)
                for i, name in ipairs(list) do
                    if name == task then
                        table.remove(list, i)
                        break
                    end
                end
                left = #list
            end
            if left == 0 then
                redis.call('ZREM', QP .. 'p:' .. PRIO_NAME[prio], tenant)
                page_update(prio, tenant, nil)
            end
        end

        -- The head of a lane was taken. A compared lane is always read one id ahead of
        -- what the claim took, so a lane this claim empties is known here, at no extra
        -- call in the common cases (a first read of two; a read-ahead of what the claim
        -- may still take, plus one). A popped lane is known empty only once a read of it
        -- comes back short.
        local function lane_take(prio, tenant, task, lane, id)
            local h = heads[lane]
            h.n = h.n + 1
            h[h.n] = id
            h.pos = h.pos + 1
            if h.popped == 0 and h.pos > #h.ids and not h.complete then
                lane_head(lane) -- a compared lane is read one ahead: emptying is known now
            end
            if h.pos > #h.ids and h.complete then
                drop_task(prio, tenant, task)
            end
        end

        local function pick(prio)
            local offset = 0
            while true do
                local entries, partial = nil, false
                if offset == 0 then
                    local page = first_page(prio)
                    entries, partial = page.entries, not page.complete and #page.entries < page.size
                else
                    entries = read_page(prio, offset, 8)
                end
                if #entries == 0 then
                    return nil
                end
                local stale = false
                for _, e in ipairs(entries) do
                    local tenant = e[1]
                    local v = vtime(tenant)
                    if v ~= e[2] then
                        redis.call('ZADD', QP .. 'p:' .. PRIO_NAME[prio], fmt(v), tenant)
                        pages[prio] = nil
                        stale = true
                        break
                    end
                    if eligible(tenant) then
                        local best_id, best_task, best_lane = nil, nil, nil
                        local list, lanes = tasks(prio, tenant)
                        local empty = nil
                        if type(list) == 'string' then
                            -- One task (most tenants): its lane only, no table per tenant.
                            if not capped[list] then
                                local head = lane_head(lanes, true)
                                if head then
                                    best_id, best_task, best_lane = head, list, lanes
                                else -- found empty (see lane_head): it leaves now
                                    empty = { list }
                                end
                            end
                        else
                            for _, task in ipairs(list) do
                                if not capped[task] then
                                    local lane = lanes[task]
                                    local head = lane_head(lane)
                                    if head and (best_id == nil or head < best_id) then
                                        best_id, best_task, best_lane = head, task, lane
                                    elseif head == nil and heads[lane].n == 0 then
                                        -- Listed but empty (left behind by a version that
                                        -- did not always notice a lane emptying): tidy up.
                                        empty = empty or {}
                                        empty[#empty + 1] = task
                                    end
                                end
                            end
                        end
                        if best_id then
                            return tenant, best_task, best_id, best_lane
                        end
                        if empty then
                            for _, task in ipairs(empty) do
                                drop_task(prio, tenant, task)
                            end
                            emptied = emptied + #empty
                            if emptied >= EMPTY_LANES_PER_CLAIM then
                                return nil
                            end
                            stale = true -- the page may have changed: read it again
                            break
                        end
                    end
                end
                if stale then
                    offset = 0 -- a corrected tenant moved back: read the level again
                elseif partial then
                    pages[prio] = nil -- past a shortened prefix: read a full first page
                else
                    offset = offset + #entries
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
            vstr[tenant] = nil
            local d = dirty[prio]
            if d == nil then
                d = {}
                dirty[prio] = d
            end
            d[tenant] = true
            page_update(prio, tenant, v)
            if tn[tenant] ~= nil then
                tn[tenant] = tn[tenant] + 1
            end
            claimed = claimed + 1
            local token
            if claimed <= #TOKEN_SUFFIX then
                token = token_base .. string.sub(TOKEN_SUFFIX, claimed, claimed)
            else
                token = token_base .. '_' .. string.format('%x', claimed)
            end
            -- The job's priority is the level it was found at (a lane holds one level).
            local f = redis.call('HMGET', key, 'attempt', 'args', 'kwargs', 'max_attempts',
                'timeout', 'enqueued_at', 'cancel_requested', 'progress', 'progress_message')
            local attempt = int_text((tonumber(f[1]) or 0) + 1) -- absent: never claimed
            redis.call('HSET', key, 'state', 'running', 'attempt', attempt, 'lease_token', token,
                'lease_expires_at', sexp, 'started_at', snow, 'worker', worker)
            if f[7] or f[8] or f[9] then
                redis.call('HDEL', key, 'cancel_requested', 'progress', 'progress_message')
            end
            if queue_name == nil then
                queue_name = redis.call('HGET', key, 'queue')
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
            local n = #out
            out[n + 1], out[n + 2], out[n + 3], out[n + 4] = id, task, queue_name, tenant
            out[n + 5], out[n + 6], out[n + 7], out[n + 8] = PRIO_NAME[prio], f[2], f[3], attempt
            out[n + 9], out[n + 10], out[n + 11], out[n + 12] = f[4], f[5] or '', token, sexp
            out[n + 13] = f[6]
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
            if claimed >= limit or emptied >= EMPTY_LANES_PER_CLAIM then
                break
            end
        end

        -- Indexes and counters the picking does not read, once per call.
        for prio in pairs(dirty) do
            flush_scores(prio)
        end
        for lane, h in pairs(heads) do
            if h.n > h.popped then
                redis.call('ZREM', lane, unpack(h, h.popped + 1, h.n))
            end
        end
        if #taken > 0 then
            redis.call('ZREM', QP .. 'aging', unpack(taken))
            -- Running jobs are listed from 'leases' (it holds exactly them), so there is
            -- no 's:running' to write.
            local leases = {}
            for _, id in ipairs(taken) do
                leases[#leases + 1] = sexp
                leases[#leases + 1] = id
            end
            redis.call('ZADD', QP .. 'leases', unpack(leases))
        end
        -- Per tenant: its ready index, its vtime and (under tenant caps only, see
        -- counts_running) its running count; the vtimes and counts of all tenants in one
        -- call each (a claim spread over many tenants would otherwise pay several calls
        -- per job). 'queued' is not counted (see count()).
        local vtimes, fields, deltas = {}, {}, {}
        for tenant, ids in pairs(by_tenant) do
            redis.call('ZREM', QP .. 'r:' .. tenant, unpack(ids))
            vtimes[#vtimes + 1] = tenant
            vtimes[#vtimes + 1] = vtime_str(tenant)
            if has_caps then
                fields[#fields + 1] = 'running:' .. tenant
                deltas[#deltas + 1] = #ids
            end
        end
        if #vtimes > 0 then
            redis.call('HSET', QP .. 'tv', unpack(vtimes))
            count_many(QP, fields, deltas)
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
        if emptied >= EMPTY_LANES_PER_CLAIM then
            break
        end
        queue_claim(argv[i])
    end
    if emptied >= EMPTY_LANES_PER_CLAIM then
        next_due = now -- stopped short: more may be ready
    end
    for task, n in pairs(taskrun) do
        redis.call('HINCRBY', G .. 'taskrun', task, n)
    end
    if next_due then
        out[2] = fmt(next_due)
    end
    return out
end
