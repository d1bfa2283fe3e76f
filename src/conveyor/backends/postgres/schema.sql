-- Conveyor PostgreSQL schema: the current version in one file (what applying every file
-- in migrations/ in order produces; tests/postgres/test_migrations.py checks that the
-- two agree by comparing catalog dumps). Never applied by the backend itself: open() and
-- migrate() apply migrations/NNNN_*.sql, and this file is the readable reference.
--
-- Runs with search_path set to the store's schema (URL option ?schema=, default
-- "conveyor"); every object is created unqualified in it.
--
-- Tables
--   jobs     one row per job (the only table with real data). Times are seconds since
--            the epoch (double precision), like the protocol's floats.
--   queues   per queue: aging setting and the fair-share virtual clock (vclock)
--   tenants  per (queue, tenant): weight, max_running, virtual time (vtime) and whether
--            the tenant had ready jobs at the last claim (active). Rows are written only
--            by claims (under the queue's advisory lock), set_tenant and purge.
--   locks    named leases for singleton loops (reaper, promoter, scheduler)
--   job_deps     dependency edges (parent must finish before child) of blocked jobs
--   key_windows  dedup keys reserved for a unique_for= window, whatever the job's state
--   rate_buckets, rate_reservations  rate limits' state and the slots of deferred jobs
--   job_totals  per (queue, tenant, finished state, shard): how many jobs are in that
--            state, so stats() never counts finished jobs row by row (see below)
--   outbox   events the store produced itself (job.cancelled of jobs no worker held),
--            drained by the maintenance loop (outbox.sql, Backend.take_events)
--
-- Functions
--   conveyor_now(p)       p, or the database clock when p is NULL (tests inject a clock)
--   conveyor_promote(..)  due scheduled/retrying jobs -> queued, then priority aging
--   conveyor_claim(..)    the claim: locks, fairness, caps (see its header)
--   conveyor_finish_state(..)  the state an outcome leads to
--   conveyor_finish(..)        the finish: outcomes applied, fenced by lease tokens
--   conveyor_finish_claim(..)  a finish, then a claim, in one transaction
--   conveyor_notify_insert()   trigger: NOTIFY the queues that got new jobs
--   conveyor_link(..)          enqueue: dependencies of new jobs (after=)
--   conveyor_settle()          trigger: a finished job releases or cancels its dependents
--   conveyor_reserve_key(..)   enqueue: a dedup key reserved for a window (unique_for=)
--   conveyor_take_rate(..)     a start under rate limits, or a deferral to its slot
--   conveyor_outbox_cancelled()  trigger: a job the store cancelled itself -> outbox
--
-- Counts of active jobs (scheduled, queued, running, retrying, blocked) come from the
-- small partial indexes over those states, so enqueue and claim never touch a shared
-- row. Finished jobs (succeeded, dead, cancelled) can number millions, so their counts
-- are kept in job_totals. The hot paths count in the same statement, in bulk: finish
-- and reap add the jobs they move from running to succeeded or dead, purge subtracts
-- the jobs it deletes. Every other change into or out of a finished state, whatever
-- statement makes it (cancel, replay, workflows' settling, rate limits...), is counted
-- by the jobs_count_finished trigger. Each connection writes only rows of its own shard
-- (its backend pid), so counting never waits for another transaction's row lock and
-- never deadlocks; purge folds the shards into shard 0; readers sum them.
-- tests/postgres/test_totals.py checks the totals against real counts after every kind
-- of transition.

CREATE TABLE jobs (
    id                text COLLATE "C" PRIMARY KEY,  -- UUIDv7: ORDER BY id = FIFO
    task              text COLLATE "C" NOT NULL,
    queue             text COLLATE "C" NOT NULL,
    tenant            text COLLATE "C" NOT NULL,     -- '' is the default tenant
    priority          integer NOT NULL,              -- current level; aging lowers it
    base_priority     integer NOT NULL,              -- as enqueued; restored on requeue
    state             text COLLATE "C" NOT NULL CHECK (state IN (
                          'scheduled', 'queued', 'running', 'succeeded',
                          'retrying', 'dead', 'cancelled', 'blocked', 'waiting')),
    args_json         text NOT NULL,
    kwargs_json       text NOT NULL,
    attempt           integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL,
    timeout           double precision,
    result_ttl        double precision,              -- NULL keeps finished records forever
    key               text COLLATE "C",              -- dedup key, unique among active jobs
    run_at            double precision,              -- due time (scheduled or retrying)
    enqueued_at       double precision NOT NULL,
    ready_at          double precision,              -- when it last became queued
    age_at            double precision,              -- when aging next moves it up
    started_at        double precision,
    finished_at       double precision,
    expires_at        double precision,              -- purge after this
    lease_token       text COLLATE "C",
    lease_expires_at  double precision,              -- not indexed: heartbeats stay HOT
    worker            text,
    progress          double precision,
    progress_message  text,
    result_json       text,
    errors            jsonb NOT NULL DEFAULT '[]',   -- one record per failed attempt
    cancel_requested  boolean NOT NULL DEFAULT false,
    after_policy      text COLLATE "C",              -- 'success' or 'always' (after=)
    pending           integer NOT NULL DEFAULT 0,    -- unfinished dependencies (blocked)
    dependents        integer NOT NULL DEFAULT 0,    -- > 0: blocked jobs wait for this one
    wait_token        text COLLATE "C",              -- completion token of its last Await
    wait_until        double precision               -- deadline while waiting
) WITH (fillfactor = 80);  -- room for HOT heartbeat/progress updates on the same page

-- The claim: per (queue, tenant), the next ready job by (priority, id); also the
-- skip scan that lists the tenants with ready jobs in a queue.
CREATE INDEX jobs_ready ON jobs (queue, tenant, priority, id) WHERE state = 'queued';
-- Running jobs (few: one per busy worker slot): task caps (running jobs of a task,
-- store-wide), tenant max_running (running jobs of a tenant in a queue, an index-only
-- scan of this small index) and the reaper.
CREATE INDEX jobs_running ON jobs (task, queue, tenant) WHERE state = 'running';
-- Promotion of due jobs; wait_for_work's next due time.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'retrying');
-- Purge.
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
-- Priority aging.
CREATE INDEX jobs_aging ON jobs (age_at) WHERE state = 'queued' AND age_at IS NOT NULL;
-- Dedup: at most one active job per key (INSERT ... ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX jobs_active_key ON jobs (key)
    WHERE key IS NOT NULL
      AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');
-- Expiry of waiting jobs (external completion) past their deadline. Its own column, so
-- heartbeats (lease_expires_at only) stay HOT.
CREATE INDEX jobs_waits ON jobs (wait_until) WHERE state = 'waiting';
-- Operators: listing by state, newest first.
CREATE INDEX jobs_by_state ON jobs (state, id);
-- stats(): blocked jobs per queue and tenant.
CREATE INDEX jobs_blocked ON jobs (queue, tenant) WHERE state = 'blocked';

CREATE TABLE queues (
    name    text COLLATE "C" PRIMARY KEY,
    vclock  double precision NOT NULL DEFAULT 0,  -- vtime of the tenant last claimed from
    aging   double precision                      -- seconds per priority level; NULL = off
);

CREATE TABLE tenants (
    queue        text COLLATE "C" NOT NULL,
    tenant       text COLLATE "C" NOT NULL,
    weight       double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
    max_running  integer,
    vtime        double precision NOT NULL DEFAULT 0,
    active       boolean NOT NULL DEFAULT false,  -- had ready jobs at the last claim
    PRIMARY KEY (queue, tenant)
);

CREATE TABLE locks (
    name        text COLLATE "C" PRIMARY KEY,
    owner       text NOT NULL,
    expires_at  double precision NOT NULL
);

CREATE TABLE job_totals (
    queue   text COLLATE "C" NOT NULL,
    tenant  text COLLATE "C" NOT NULL,
    state   text COLLATE "C" NOT NULL CHECK (state IN ('succeeded', 'dead', 'cancelled')),
    shard   integer NOT NULL,   -- the writer's pg_backend_pid(), 0 once folded; may be < 0
    n       bigint NOT NULL,
    PRIMARY KEY (queue, tenant, state, shard)
);

CREATE FUNCTION conveyor_now(p double precision) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p, extract(epoch FROM now())::double precision)
$$;

-- The state an outcome (kind: succeeded, retry, dead, cancelled, released) leads to. A
-- cancel request wins over retry and release; a retry with no attempt left is dead.
CREATE FUNCTION conveyor_finish_state(
    kind text, cancel_requested boolean, attempt integer, max_attempts integer,
    delay double precision
) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN kind IN ('succeeded', 'dead', 'cancelled') THEN kind
        WHEN cancel_requested THEN 'cancelled'
        WHEN kind = 'released' THEN 'queued'
        WHEN attempt >= max_attempts THEN 'dead'
        WHEN delay > 0 THEN 'retrying'
        ELSE 'queued'
    END
$$;

-- Due scheduled/retrying jobs -> queued (at most p_limit, NULL = all), then one aging
-- step per queued job that is due for it, covering every level it has earned. Rows
-- locked by someone else are skipped (the next promotion gets them), so concurrent
-- claimers never wait on each other here. Returns the number of rows changed.
CREATE FUNCTION conveyor_promote(p_now double precision, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_promoted integer;
    v_aged integer;
BEGIN
    UPDATE jobs AS j
    SET state = 'queued',
        ready_at = j.run_at,
        priority = j.base_priority,
        age_at = CASE WHEN j.base_priority > 0
                      THEN j.run_at + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue)
                 END
    WHERE j.id IN (
        SELECT d.id FROM jobs AS d
        WHERE d.state IN ('scheduled', 'retrying') AND d.run_at <= p_now
        ORDER BY d.run_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    );
    GET DIAGNOSTICS v_promoted = ROW_COUNT;

    UPDATE jobs AS j
    SET priority = j.priority - s.levels,
        age_at = CASE WHEN j.priority - s.levels > 0 THEN j.age_at + s.levels * s.aging END
    FROM (
        SELECT a.id, q.aging,
               least(a.priority, floor((p_now - a.age_at) / q.aging)::integer + 1) AS levels
        FROM jobs AS a JOIN queues AS q ON q.name = a.queue
        WHERE a.state = 'queued' AND a.age_at IS NOT NULL AND a.age_at <= p_now
          AND q.aging IS NOT NULL
        FOR UPDATE OF a SKIP LOCKED
    ) AS s
    WHERE j.id = s.id AND j.state = 'queued';
    GET DIAGNOSTICS v_aged = ROW_COUNT;
    RETURN v_promoted + v_aged;
END
$$;

-- The claim. Parameters: p_queues (served in this order), p_limit, p_cap_tasks and
-- p_cap_limits (parallel arrays: task -> concurrency), p_worker, p_lease (seconds),
-- p_now (NULL = database clock). Returns the claimed jobs, in claim order, with their
-- new lease tokens.
--
-- Exactness under concurrency comes from transaction-level advisory locks, taken in
-- one global order (every queue of the claim sorted by name, then every capped task
-- sorted by name) so claimers never deadlock: claimers of one queue take turns, so the
-- fairness state (tenants.vtime, queues.vclock) and the tenant caps are read and
-- written by one claimer at a time; claimers sharing a capped task take turns, so the
-- task caps hold store-wide. Each statement here sees what earlier claimers committed
-- (READ COMMITTED takes a new snapshot per statement, after the lock was granted).
--
-- Order: priority (strict) -> the active tenant with the smallest vtime (name breaks
-- ties) -> FIFO. A tenant with no ready job at the previous claim that has one now
-- restarts at max(vtime, the queue's vclock), so idleness banks no credit.
--
-- Picking jobs one at a time (take the best head, advance that tenant's vtime by
-- 1/weight, repeat) is a merge of per-tenant lists that are each already in order:
-- tenant t's k-th next job (k = 0, 1, ...) would be taken at (its priority,
-- vtime_t + k/weight_t). So one query takes each tenant's next few jobs, sorts them all
-- by that key and claims the first ones: the same result as one-by-one picking, in a
-- few statements. Only a task reaching its cap in the middle of a batch changes later
-- picks; the batch then stops just before that task's next job and the next batch
-- runs without the task.
CREATE FUNCTION conveyor_claim(
    p_queues text[], p_limit integer, p_cap_tasks text[], p_cap_limits integer[],
    p_worker text, p_lease double precision, p_now double precision
) RETURNS TABLE (
    id text, task text, queue text, tenant text, priority integer, args_json text,
    kwargs_json text, attempt integer, max_attempts integer, timeout double precision,
    lease_token text, lease_expires_at double precision, enqueued_at double precision
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now double precision := conveyor_now(p_now);
    v_capping boolean := cardinality(p_cap_tasks) > 0;
    v_queue text;
    v_counts integer[];      -- running jobs per capped task (parallel to p_cap_tasks)
    v_capped text[];         -- tasks at their cap
    v_ready integer;         -- how many tenants have ready jobs
    v_vclock double precision;
    v_ids text[];            -- a batch, in claim order ...
    v_tenants text[];        -- ... its tenants
    v_tasks text[];          -- ... its tasks
    v_vtimes double precision[];  -- ... and the tenant's vtime when each is claimed
    v_take integer;
    v_pos integer;
    v_want integer;
    v_got integer;           -- jobs of the batch actually claimed
    v_offered bigint[];      -- ... and how many jobs its tenant offered this round
    v_round text[];          -- tenants a round took jobs from
    v_full text[];           -- ... those of them whose every offered job it took
    v_maybe text[];          -- tenants this claim may have emptied (see below)
    v_claimed integer := 0;
    v_rounds integer;
BEGIN
    -- The claim commits synchronously like every other write: once a worker has been
    -- handed a job, the attempt it burns survives a server crash.
    PERFORM pg_advisory_xact_lock(
        hashtextextended('conveyor:' || current_schema() || ':queue:' || u.n, 0))
    FROM (SELECT DISTINCT q.n FROM unnest(p_queues) AS q(n) ORDER BY 1) AS u;
    -- (The sorted subquery fixes the order in which the locks are taken.)
    IF v_capping THEN
        PERFORM pg_advisory_xact_lock(
            hashtextextended('conveyor:' || current_schema() || ':task:' || u.n, 0))
        FROM (SELECT DISTINCT t.n FROM unnest(p_cap_tasks) AS t(n) ORDER BY 1) AS u;
    END IF;

    -- Promotion first, as the protocol says; two index probes decide that there is
    -- nothing to do, which is the common case on a busy queue.
    IF EXISTS (SELECT 1 FROM jobs AS d
               WHERE d.state IN ('scheduled', 'retrying') AND d.run_at <= v_now)
       OR EXISTS (SELECT 1 FROM jobs AS a
                  WHERE a.state = 'queued' AND a.age_at IS NOT NULL AND a.age_at <= v_now)
    THEN
        PERFORM conveyor_promote(v_now, 1000);
    END IF;

    v_capped := '{}';
    IF v_capping THEN
        SELECT coalesce(array_agg((SELECT count(*) FROM jobs AS r
                                   WHERE r.state = 'running' AND r.task = c.task)::integer
                                  ORDER BY c.ord), '{}')
        INTO v_counts
        FROM unnest(p_cap_tasks) WITH ORDINALITY AS c(task, ord);
        SELECT coalesce(array_agg(c.task), '{}') INTO v_capped
        FROM unnest(p_cap_tasks, p_cap_limits, v_counts) AS c(task, cap, n)
        WHERE c.n >= c.cap;
    END IF;

    FOREACH v_queue IN ARRAY p_queues LOOP
        EXIT WHEN v_claimed >= p_limit;
        SELECT q.vclock INTO v_vclock FROM queues AS q WHERE q.name = v_queue;
        IF NOT FOUND THEN
            INSERT INTO queues (name) VALUES (v_queue) ON CONFLICT (name) DO NOTHING;
            v_vclock := 0;
        END IF;

        -- Tenants with ready jobs: a skip scan over jobs_ready, one probe per tenant.
        -- In the same statement, their fairness rows: a tenant with no ready job is
        -- idle; one that becomes ready again restarts at max(its vtime, the clock).
        -- (The two writes touch disjoint rows: tenants without and with ready jobs.)
        WITH RECURSIVE t(tenant) AS (
            (SELECT j.tenant FROM jobs AS j
             WHERE j.state = 'queued' AND j.queue = v_queue
             ORDER BY j.tenant LIMIT 1)
            UNION ALL
            SELECT (SELECT j.tenant FROM jobs AS j
                    WHERE j.state = 'queued' AND j.queue = v_queue AND j.tenant > t.tenant
                    ORDER BY j.tenant LIMIT 1)
            FROM t WHERE t.tenant IS NOT NULL
        ),
        ready AS MATERIALIZED (SELECT t.tenant FROM t WHERE t.tenant IS NOT NULL),
        idle AS (
            UPDATE tenants AS t SET active = false
            WHERE t.queue = v_queue AND t.active
              AND NOT EXISTS (SELECT 1 FROM ready AS r WHERE r.tenant = t.tenant)
        ),
        woke AS (
            -- (Only tenants not already active: the common case inserts nothing and
            -- so skips ON CONFLICT's speculative insertion.)
            INSERT INTO tenants AS t (queue, tenant, vtime, active)
            SELECT v_queue, r.tenant, v_vclock, true FROM ready AS r
            WHERE NOT EXISTS (SELECT 1 FROM tenants AS a
                              WHERE a.queue = v_queue AND a.tenant = r.tenant AND a.active)
            ORDER BY 2
            ON CONFLICT ON CONSTRAINT tenants_pkey DO UPDATE
            SET vtime = greatest(t.vtime, excluded.vtime), active = true
            WHERE NOT t.active
        )
        SELECT count(*) INTO v_ready FROM ready;
        CONTINUE WHEN v_ready = 0;

        v_maybe := '{}';
        v_rounds := 0;
        WHILE v_claimed < p_limit AND v_rounds <= p_limit LOOP
            v_rounds := v_rounds + 1;
            v_want := p_limit - v_claimed;
            SELECT coalesce(array_agg(c.id ORDER BY c.ord), '{}'),
                   coalesce(array_agg(c.tenant ORDER BY c.ord), '{}'),
                   coalesce(array_agg(c.task ORDER BY c.ord), '{}'),
                   coalesce(array_agg(c.vt ORDER BY c.ord), '{}'),
                   coalesce(array_agg(c.offered ORDER BY c.ord), '{}')
            INTO v_ids, v_tenants, v_tasks, v_vtimes, v_offered
            FROM (
                SELECT h.id, h.task, t.tenant, t.vtime + (h.k - 1) / t.weight AS vt,
                       count(*) OVER (PARTITION BY t.tenant) AS offered,
                       row_number() OVER (
                           ORDER BY h.priority, t.vtime + (h.k - 1) / t.weight, t.tenant, h.k
                       ) AS ord
                FROM tenants AS t
                CROSS JOIN LATERAL (
                    SELECT j.id, j.task, j.priority,
                           row_number() OVER (ORDER BY j.priority, j.id) AS k
                    FROM jobs AS j
                    WHERE j.state = 'queued' AND j.queue = v_queue AND j.tenant = t.tenant
                      AND j.task <> ALL (v_capped)
                    ORDER BY j.priority, j.id
                    -- One more than could be taken: a tenant that offers it still has
                    -- a ready job after this claim, which spares a probe at the end.
                    LIMIT CASE WHEN t.max_running IS NULL THEN v_want + 1
                               ELSE least(v_want + 1, greatest(0, t.max_running - (
                                   SELECT count(*) FROM jobs AS r
                                   WHERE r.state = 'running' AND r.queue = v_queue
                                     AND r.tenant = t.tenant)))
                          END
                ) AS h
                WHERE t.queue = v_queue AND t.active
                ORDER BY ord
                LIMIT v_want
            ) AS c;
            EXIT WHEN cardinality(v_ids) = 0;

            -- The longest prefix that keeps every task within its cap.
            v_take := cardinality(v_ids);
            IF v_capping THEN
                v_take := 0;
                FOR i IN 1 .. cardinality(v_ids) LOOP
                    v_pos := array_position(p_cap_tasks, v_tasks[i]);
                    IF v_pos IS NOT NULL THEN
                        EXIT WHEN v_counts[v_pos] >= p_cap_limits[v_pos];
                        v_counts[v_pos] := v_counts[v_pos] + 1;
                    END IF;
                    v_take := i;
                END LOOP;
                EXIT WHEN v_take = 0;
            END IF;

            -- Claim the batch, and advance the fairness state by what was claimed:
            -- vtime += claimed/weight per tenant, the queue's clock to the vtime at
            -- which its last job was claimed. The rows are found by primary key: the
            -- state test is IS NOT DISTINCT FROM (the same as = here, state is NOT
            -- NULL) so that no plan can scan the whole of jobs_ready for them instead,
            -- which a generic plan did when jobs_ready's statistics were stale.
            RETURN QUERY
            WITH done AS (
                UPDATE jobs AS j
                SET state = 'running',
                    attempt = j.attempt + 1,
                    lease_token = replace(gen_random_uuid()::text, '-', ''),
                    lease_expires_at = v_now + p_lease,
                    started_at = v_now,
                    worker = p_worker,
                    cancel_requested = false,
                    progress = NULL,
                    progress_message = NULL
                WHERE j.id = ANY (v_ids[1:v_take]) AND j.state IS NOT DISTINCT FROM 'queued'
                RETURNING j.id, j.task, j.queue, j.tenant, j.priority, j.args_json,
                          j.kwargs_json, j.attempt, j.max_attempts, j.timeout,
                          j.lease_token, j.lease_expires_at, j.enqueued_at
            ),
            o AS MATERIALIZED (
                SELECT d.*, b.ord FROM done AS d
                JOIN unnest(v_ids[1:v_take]) WITH ORDINALITY AS b(id, ord) ON b.id = d.id
            ),
            fair AS (
                UPDATE tenants AS t SET vtime = t.vtime + g.n / t.weight
                FROM (SELECT o.tenant, count(*) AS n FROM o
                      GROUP BY o.tenant ORDER BY o.tenant) AS g
                WHERE t.queue = v_queue AND t.tenant = g.tenant
            ),
            clock AS (
                UPDATE queues AS q SET vclock = v_vtimes[m.ord]
                FROM (SELECT max(o.ord) AS ord FROM o) AS m
                WHERE q.name = v_queue AND m.ord IS NOT NULL
            )
            SELECT o.id, o.task, o.queue, o.tenant, o.priority, o.args_json, o.kwargs_json,
                   o.attempt, o.max_attempts, o.timeout, o.lease_token, o.lease_expires_at,
                   o.enqueued_at
            FROM o ORDER BY o.ord;
            GET DIAGNOSTICS v_got = ROW_COUNT;

            -- A tenant that offered a job this round did not take keeps it queued; only
            -- one whose every offered job was taken may have run out.
            SELECT coalesce(array_agg(u.tenant), '{}'),
                   coalesce(array_agg(u.tenant) FILTER (WHERE u.taken >= u.offered), '{}')
            INTO v_round, v_full
            FROM (SELECT b.tenant, count(*) AS taken, max(b.offered) AS offered
                  FROM unnest(v_tenants[1:v_take], v_offered[1:v_take]) AS b(tenant, offered)
                  GROUP BY b.tenant) AS u;
            IF v_rounds > 1 THEN  -- a later round decides again for the tenants it took from
                v_maybe := ARRAY(SELECT m FROM unnest(v_maybe) AS m WHERE m <> ALL (v_round));
            END IF;
            v_maybe := v_maybe || v_full;
            v_claimed := v_claimed + v_got;
            IF v_capping THEN
                SELECT coalesce(array_agg(c.task), '{}') INTO v_capped
                FROM unnest(p_cap_tasks, p_cap_limits, v_counts) AS c(task, cap, n)
                WHERE c.n >= c.cap;
            END IF;
            -- Fewer jobs than wanted and no cap in the way: the queue has no more.
            EXIT WHEN v_take = cardinality(v_ids) AND cardinality(v_ids) < v_want
                      AND v_got = v_take;
        END LOOP;

        -- A tenant this claim emptied is idle from now on: when it gets work again, the
        -- next claim restarts it at the queue's clock. Only tenants that may have run
        -- out are probed: each probe walks the index entries that claimed jobs left at
        -- the head of the tenant's range until vacuum removes them.
        -- (A scalar subquery with LIMIT, not NOT EXISTS: the latter may get a generic
        -- plan that hashes every ready job instead of probing jobs_ready per tenant.)
        CONTINUE WHEN cardinality(v_maybe) = 0;
        UPDATE tenants AS t SET active = false
        WHERE t.queue = v_queue AND t.active AND t.tenant = ANY (v_maybe)
          AND (SELECT j.id FROM jobs AS j
               WHERE j.state = 'queued' AND j.queue = v_queue AND j.tenant = t.tenant
               ORDER BY j.tenant LIMIT 1) IS NULL;
    END LOOP;
END
$$;

-- The finish (Backend.finish): applies outcomes (p_outcomes: a JSON array of objects
-- with keys id, token, kind, result, error, delay), each only if its lease token still
-- holds the running job. (One JSON document rather than six arrays: the client encodes
-- it several times faster, see docs/postgres.md, "Performance".) Every column is
-- computed from the row as it is when updated (not from an earlier read), so a cancel
-- request that commits meanwhile still wins. Returns (id, token) of the outcomes
-- applied.
-- Wakes a queue (channel p_chan) only when waiting workers may now claim more there: a
-- job went back to queued, or a slot of a capped task (p_capped_tasks: the tasks with a
-- concurrency cap that the caller's claims know of) or of a tenant with max_running
-- freed up. Plain completions notify nobody: a busy worker claims again as soon as a
-- slot frees, and a NOTIFY per finish costs every listener a wake-up for nothing.
-- Jobs that end succeeded or dead are counted into job_totals here (cancelled ones by
-- the jobs_count_finished trigger).
-- A PL/pgSQL function, not a statement sent by the client, so conveyor_finish_claim
-- runs the very same code, and its plan is cached in the session like every statement
-- of a PL/pgSQL function.
CREATE FUNCTION conveyor_finish(
    p_outcomes json, p_capped_tasks text[], p_chan text, p_now double precision
) RETURNS TABLE (job_id text, job_token text)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_tokens text[];
    v_kinds text[];
    v_results text[];
    v_errors text[];
    v_delays double precision[];
BEGIN
    -- Arrays first: joined to jobs straight from json_to_recordset (which the planner
    -- guesses at 100 rows), the update scanned the table instead of probing the
    -- primary key, 5x slower.
    SELECT array_agg(d.id), array_agg(d.token), array_agg(d.kind), array_agg(d.result),
           array_agg(d.error), array_agg(d.delay)
    INTO v_ids, v_tokens, v_kinds, v_results, v_errors, v_delays
    FROM json_to_recordset(p_outcomes)
        AS d(id text, token text, kind text, result text, error text,
             delay double precision);
    RETURN QUERY
    WITH t AS (SELECT conveyor_now(p_now) AS now),
    o AS (
        SELECT * FROM unnest(v_ids, v_tokens, v_kinds, v_results, v_errors, v_delays)
            AS o(id, token, kind, result, error, delay)
    ),
    done AS (
        UPDATE jobs AS j
        SET state = conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                          j.max_attempts, o.delay),
            attempt = CASE WHEN o.kind = 'released' THEN greatest(j.attempt - 1, 0)
                           ELSE j.attempt END,
            result_json = CASE WHEN o.kind = 'succeeded' THEN o.result ELSE j.result_json END,
            run_at = CASE conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                                j.max_attempts, o.delay)
                         WHEN 'retrying' THEN t.now + o.delay ELSE j.run_at END,
            ready_at = CASE conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                                  j.max_attempts, o.delay)
                           WHEN 'queued' THEN t.now ELSE j.ready_at END,
            priority = CASE WHEN o.kind IN ('retry', 'released') THEN j.base_priority
                            ELSE j.priority END,
            age_at = CASE WHEN j.base_priority > 0
                               AND conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                                         j.max_attempts, o.delay) = 'queued'
                          THEN t.now + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue)
                     END,
            finished_at = CASE WHEN conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                                          j.max_attempts, o.delay)
                                    IN ('succeeded', 'dead', 'cancelled')
                               THEN t.now ELSE j.finished_at END,
            expires_at = CASE WHEN conveyor_finish_state(o.kind, j.cancel_requested, j.attempt,
                                                         j.max_attempts, o.delay)
                                   IN ('succeeded', 'cancelled')
                              THEN t.now + j.result_ttl ELSE j.expires_at END,
            errors = CASE WHEN o.error IS NULL OR o.kind IN ('succeeded', 'released')
                          THEN j.errors ELSE j.errors || jsonb_build_array(o.error::jsonb) END,
            lease_token = NULL,
            lease_expires_at = NULL
        FROM o, t
        WHERE j.id = o.id AND j.lease_token = o.token AND j.state IS NOT DISTINCT FROM 'running'
        RETURNING j.id, o.token, j.queue, j.tenant, j.task, j.state
    ),
    totals AS (
        INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
        SELECT d.queue, d.tenant, d.state, pg_backend_pid(), count(*) FROM done AS d
        WHERE d.state IN ('succeeded', 'dead')
        GROUP BY d.queue, d.tenant, d.state ORDER BY d.queue, d.tenant, d.state
        ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n
    ),
    woken AS (
        SELECT pg_notify(p_chan, w.queue || ' ' || pg_current_xact_id())
        FROM (
            SELECT DISTINCT d.queue FROM done AS d
            WHERE d.state = 'queued'
               OR d.task = ANY (p_capped_tasks)
               OR EXISTS (SELECT 1 FROM tenants AS t
                          WHERE t.queue = d.queue AND t.tenant = d.tenant
                            AND t.max_running IS NOT NULL)
        ) AS w
    )
    SELECT d.id, d.token FROM done AS d WHERE (SELECT count(*) FROM woken) >= 0;
END
$$;

-- The worker's steady state (Backend.finish_and_claim) in one statement and one
-- transaction: conveyor_finish, then conveyor_claim, which sees the slots and caps the
-- outcomes freed. One round trip and one commit (one WAL flush) per cycle instead of
-- two. The outcomes' row locks are taken before the claim's advisory locks and held
-- until the commit, like those of any finish: the claim's statements lock only queued
-- jobs and fairness rows, which no finish locks, so the two cannot deadlock.
-- Rows: the claimed jobs in claim order (one row of NULL job columns when none was
-- claimed); the first row also carries the applied outcomes (applied_ids,
-- applied_tokens), the snapshot the claim started from (as the claim statement's, see
-- queries.sql) and this transaction's id (own_xid, NULL when it wrote nothing): a
-- wake-up that this very finish sent is for work its claim already saw.
CREATE FUNCTION conveyor_finish_claim(
    p_outcomes json, p_capped_tasks text[], p_chan text, p_queues text[], p_limit integer, p_cap_tasks text[], p_cap_limits integer[],
    p_worker text, p_lease double precision, p_now double precision
) RETURNS TABLE (
    applied_ids text[], applied_tokens text[], snapshot text, own_xid text,
    id text, task text, queue text, tenant text, priority integer, args_json text,
    kwargs_json text, attempt integer, max_attempts integer, timeout double precision,
    lease_token text, lease_expires_at double precision, enqueued_at double precision
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids text[];
    v_tokens text[];
BEGIN
    SELECT coalesce(array_agg(f.job_id), '{}'), coalesce(array_agg(f.job_token), '{}')
    INTO v_ids, v_tokens
    FROM conveyor_finish(p_outcomes, p_capped_tasks, p_chan, p_now) AS f;
    RETURN QUERY
    WITH s AS MATERIALIZED (SELECT pg_current_snapshot()::text AS snapshot)
    SELECT CASE WHEN c.n IS NULL OR c.n = 1 THEN v_ids END,
           CASE WHEN c.n IS NULL OR c.n = 1 THEN v_tokens END,
           CASE WHEN c.n IS NULL OR c.n = 1 THEN s.snapshot END,
           CASE WHEN c.n IS NULL OR c.n = 1 THEN pg_current_xact_id_if_assigned()::text END,
           c.id, c.task, c.queue, c.tenant, c.priority, c.args_json, c.kwargs_json,
           c.attempt, c.max_attempts, c.timeout, c.lease_token, c.lease_expires_at,
           c.enqueued_at
    FROM s LEFT JOIN LATERAL conveyor_claim(
        p_queues, p_limit, p_cap_tasks, p_cap_limits, p_worker, p_lease, p_now
    ) WITH ORDINALITY AS c(id, task, queue, tenant, priority, args_json, kwargs_json,
                           attempt, max_attempts, timeout, lease_token, lease_expires_at,
                           enqueued_at, n) ON true
    ORDER BY c.n;
END
$$;

-- NOTIFY the store's channel (conveyor_<schema>) once per queue that got jobs (payload:
-- "<queue> <transaction id>", see _listen.py), for
-- every INSERT into jobs, including one made on a caller's own connection inside the
-- caller's transaction (delivered only if and when it commits).
CREATE FUNCTION conveyor_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conveyor_' || TG_TABLE_SCHEMA, n.queue || ' ' || pg_current_xact_id())
    FROM (SELECT DISTINCT r.queue FROM new_jobs AS r) AS n;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
REFERENCING NEW TABLE AS new_jobs
FOR EACH STATEMENT EXECUTE FUNCTION conveyor_notify_insert();

CREATE TABLE job_deps (
    parent  text COLLATE "C" NOT NULL,
    child   text COLLATE "C" NOT NULL,
    PRIMARY KEY (parent, child)
);

CREATE TABLE key_windows (
    key         text COLLATE "C" PRIMARY KEY,
    id          text COLLATE "C" NOT NULL,
    expires_at  double precision NOT NULL
);
CREATE INDEX key_windows_expiry ON key_windows (expires_at);

-- Records the dependencies of freshly inserted jobs (parallel arrays: job ids, their
-- dependency ids as JSON arrays, their after_policy), in the enqueue's transaction.
-- Dependencies that already finished settle the job at once (cancelled with a
-- DependencyFailed error, or left ready); the others get an edge in job_deps and make
-- the job blocked. Parents are locked in id order, so a finish racing this enqueue
-- either commits first (and is seen as finished here) or waits and then sees the edge.
-- Returns the id of a dependency that does not exist (the caller rolls back), or NULL.
CREATE FUNCTION conveyor_link(
    p_ids text[], p_deps text[], p_policies text[], p_now double precision
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := conveyor_now(p_now);
    v_missing text;
    v_parent record;
    v_pending integer;
    v_failed text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        -- A job refused for its dedup key was not inserted: nothing to link.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM jobs AS c WHERE c.id = p_ids[i]);
        SELECT d.parent INTO v_missing
        FROM jsonb_array_elements_text(p_deps[i]::jsonb) AS d(parent)
        WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = d.parent)
        LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RETURN v_missing;
        END IF;
        v_pending := 0;
        v_failed := NULL;
        FOR v_parent IN
            SELECT j.id, j.state, j.task FROM jobs AS j
            WHERE j.id IN (SELECT jsonb_array_elements_text(p_deps[i]::jsonb))
            ORDER BY j.id
            FOR UPDATE
        LOOP
            CONTINUE WHEN v_parent.state = 'succeeded';
            IF v_parent.state IN ('dead', 'cancelled') THEN
                IF p_policies[i] <> 'always' AND v_failed IS NULL THEN
                    v_failed := 'dependency ' || v_parent.id || ' (' || v_parent.task
                                || ') ended ' || v_parent.state;
                END IF;
                CONTINUE;
            END IF;
            INSERT INTO job_deps (parent, child) VALUES (v_parent.id, p_ids[i])
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                UPDATE jobs AS j SET dependents = j.dependents + 1 WHERE j.id = v_parent.id;
                v_pending := v_pending + 1;
            END IF;
        END LOOP;
        IF v_failed IS NOT NULL THEN
            UPDATE jobs AS j
            SET state = 'cancelled', after_policy = p_policies[i], finished_at = v_now,
                expires_at = v_now + j.result_ttl, ready_at = NULL, age_at = NULL,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', 0, 'type', 'DependencyFailed', 'message', v_failed,
                    'traceback', NULL, 'at', v_now))
            WHERE j.id = p_ids[i];
        ELSIF v_pending > 0 THEN
            UPDATE jobs AS j
            SET state = 'blocked', pending = v_pending, after_policy = p_policies[i],
                ready_at = NULL, age_at = NULL
            WHERE j.id = p_ids[i];
        ELSE
            UPDATE jobs AS j SET after_policy = p_policies[i] WHERE j.id = p_ids[i];
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Trigger: a job with dependents reached a final state; settle them in the same
-- transaction, whatever path finished it (finish, reap, cancel, or this trigger
-- cancelling a dependent, which cascades). The parent's finished_at is now.
--   parent failed, child policy 'success' -> child cancelled (DependencyFailed)
--   otherwise -> the child's pending count drops; at 0 it is queued (or scheduled when
--   its own due time is still ahead) and its queue is notified.
CREATE FUNCTION conveyor_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := NEW.finished_at;
    v_children text[];
    v_woken integer;
BEGIN
    WITH gone AS (DELETE FROM job_deps AS d WHERE d.parent = NEW.id RETURNING d.child)
    SELECT coalesce(array_agg(g.child ORDER BY g.child), '{}') INTO v_children FROM gone AS g;
    -- Children locked in id order: two parents finishing at once never deadlock on them.
    PERFORM 1 FROM jobs AS j WHERE j.id = ANY (v_children) ORDER BY j.id FOR UPDATE;
    IF NEW.state <> 'succeeded' THEN
        UPDATE jobs AS j
        SET state = 'cancelled', finished_at = v_now, expires_at = v_now + j.result_ttl,
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'attempt', j.attempt, 'type', 'DependencyFailed',
                'message', 'dependency ' || NEW.id || ' (' || NEW.task || ') ended '
                           || NEW.state,
                'traceback', NULL, 'at', v_now))
        WHERE j.id = ANY (v_children) AND j.state = 'blocked' AND j.after_policy = 'success';
    END IF;
    UPDATE jobs AS j SET pending = j.pending - 1
    WHERE j.id = ANY (v_children) AND j.state = 'blocked';
    WITH released AS (
        UPDATE jobs AS j
        SET state = CASE WHEN j.run_at > v_now THEN 'scheduled' ELSE 'queued' END,
            ready_at = CASE WHEN j.run_at > v_now THEN NULL ELSE v_now END,
            priority = j.base_priority,
            age_at = CASE WHEN (j.run_at IS NULL OR j.run_at <= v_now) AND j.base_priority > 0
                          THEN v_now + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue)
                     END
        WHERE j.id = ANY (v_children) AND j.state = 'blocked' AND j.pending <= 0
        RETURNING j.queue
    )
    SELECT count(*) INTO v_woken FROM (
        SELECT pg_notify('conveyor_' || TG_TABLE_SCHEMA, r.queue || ' ' || pg_current_xact_id())
        FROM (SELECT DISTINCT w.queue FROM released AS w) AS r
    ) AS n;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_settle_dependents AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (OLD.dependents > 0
      AND NEW.state IN ('succeeded', 'dead', 'cancelled')
      AND OLD.state NOT IN ('succeeded', 'dead', 'cancelled'))
EXECUTE FUNCTION conveyor_settle();

-- Reserves dedup key p_key for job p_id until now + p_ttl, unless another job holds it
-- for a window that has not ended. Returns the holder: p_id when the reservation took.
CREATE FUNCTION conveyor_reserve_key(
    p_key text, p_id text, p_ttl double precision, p_now double precision
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := conveyor_now(p_now);
    v_holder text;
BEGIN
    INSERT INTO key_windows AS w (key, id, expires_at) VALUES (p_key, p_id, v_now + p_ttl)
    ON CONFLICT (key) DO UPDATE SET id = excluded.id, expires_at = excluded.expires_at
    WHERE w.expires_at <= v_now
    RETURNING w.id INTO v_holder;
    IF v_holder IS NULL THEN
        SELECT w.id INTO v_holder FROM key_windows AS w WHERE w.key = p_key;
    END IF;
    RETURN v_holder;
END
$$;

CREATE TABLE rate_buckets (
    name  text COLLATE "C" PRIMARY KEY,
    tat   double precision NOT NULL  -- theoretical arrival time (generic cell rate)
);

CREATE TABLE rate_reservations (
    name    text COLLATE "C" NOT NULL,
    job_id  text COLLATE "C" NOT NULL,
    start   double precision NOT NULL,
    PRIMARY KEY (name, job_id)
);
CREATE INDEX rate_reservations_start ON rate_reservations (start);

-- Backend.take_rate: one start from every bucket (parallel arrays p_names, p_limits,
-- p_periods) for the running job (p_id, p_token). Buckets are locked in name order, so
-- concurrent callers queue instead of deadlocking. Returns 0 (run now) or the seconds
-- until the job's reserved slot, having moved the job back to scheduled until then
-- (attempt given back; cancelled instead if a cancel was requested, and recorded in
-- the outbox: migration 0008).
CREATE FUNCTION conveyor_take_rate(
    p_id text, p_token text, p_names text[], p_limits integer[], p_periods double precision[],
    p_now double precision
) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := conveyor_now(p_now);
    v_start double precision := conveyor_now(p_now);
    v_tat double precision;
    v_fresh text[] := '{}';
    v_tats double precision[] := '{}';
    v_i integer;
    v_state text;
BEGIN
    PERFORM 1 FROM jobs AS j
    WHERE j.id = p_id AND j.lease_token = p_token AND j.state = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    INSERT INTO rate_buckets AS b (name, tat)
    SELECT n.name, v_now FROM unnest(p_names) AS n(name) ORDER BY 1
    ON CONFLICT (name) DO NOTHING;
    FOR v_i IN
        SELECT o.i FROM unnest(p_names) WITH ORDINALITY AS o(name, i) ORDER BY o.name
    LOOP
        SELECT b.tat INTO v_tat FROM rate_buckets AS b WHERE b.name = p_names[v_i] FOR UPDATE;
        DELETE FROM rate_reservations AS r WHERE r.name = p_names[v_i] AND r.job_id = p_id;
        CONTINUE WHEN FOUND;  -- paid when the job was deferred
        v_tat := greatest(v_tat, v_now) + p_periods[v_i] / p_limits[v_i];
        v_fresh := v_fresh || p_names[v_i];
        v_tats := v_tats || v_tat;
        v_start := greatest(v_start, v_tat - p_periods[v_i]);
    END LOOP;
    UPDATE rate_buckets AS b SET tat = f.tat
    FROM unnest(v_fresh, v_tats) AS f(name, tat) WHERE b.name = f.name;
    IF v_start <= v_now THEN
        RETURN 0;
    END IF;
    INSERT INTO rate_reservations AS r (name, job_id, start)
    SELECT n.name, p_id, v_start FROM unnest(p_names) AS n(name)
    ON CONFLICT (name, job_id) DO UPDATE SET start = excluded.start;
    DELETE FROM rate_reservations AS r WHERE r.start < v_now - 86400;
    UPDATE jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'scheduled' END,
        run_at = CASE WHEN j.cancel_requested THEN j.run_at ELSE v_start END,
        attempt = greatest(j.attempt - 1, 0),
        priority = j.base_priority,
        finished_at = CASE WHEN j.cancel_requested THEN v_now ELSE j.finished_at END,
        expires_at = CASE WHEN j.cancel_requested THEN v_now + j.result_ttl
                          ELSE j.expires_at END,
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE j.id = p_id
    RETURNING j.state INTO v_state;
    IF v_state = 'cancelled' THEN
        -- A cancel was pending: no worker outcome will announce it (the attempt was
        -- given back), and the outbox trigger leaves running -> cancelled out.
        INSERT INTO outbox (event, job_id, recorded_at)
        VALUES ('job.cancelled', p_id, v_now);
    END IF;
    RETURN v_start - v_now;
END
$$;

-- Small JSON documents that are not jobs (API tokens, ...): see records.sql.
CREATE TABLE records (
    kind       text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Counts into job_totals every change into or out of a finished state (succeeded, dead,
-- cancelled) that finish and reap do not count themselves: those two count their
-- running -> succeeded / dead moves in bulk, in their own statement (one row per batch
-- instead of one trigger call per job). A job that leaves a finished state (replay)
-- is taken off its old state's total.
CREATE FUNCTION conveyor_count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('succeeded', 'dead', 'cancelled') THEN
        INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
        VALUES (OLD.queue, OLD.tenant, OLD.state, pg_backend_pid(), -1)
        ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    IF NEW.state IN ('succeeded', 'dead', 'cancelled') THEN
        INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
        VALUES (NEW.queue, NEW.tenant, NEW.state, pg_backend_pid(), 1)
        ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_finished AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (OLD.state IS DISTINCT FROM NEW.state
      AND (OLD.state IN ('succeeded', 'dead', 'cancelled')
           OR NEW.state IN ('succeeded', 'dead', 'cancelled'))
      AND NOT (OLD.state = 'running' AND NEW.state IN ('succeeded', 'dead')))
EXECUTE FUNCTION conveyor_count_finished();

-- The outbox (migration 0006). A job that becomes cancelled from any state but running
-- was cancelled by the store on its own (cancel of a job no worker holds, the
-- dependency cascade of conveyor_settle, conveyor_link): no worker reports it, so the
-- trigger records the announcement in the same transaction. running -> cancelled is
-- left out, so nothing is said twice: a live worker announces its own cancels (and a
-- retry or release the store turned into cancelled, worker/loop.py); the reaper
-- records the running jobs of lost workers it cancels itself (queries.sql reap).
CREATE TABLE outbox (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order
    event   text NOT NULL,                                     -- 'job.cancelled'
    job_id  text COLLATE "C" NOT NULL,
    recorded_at  double precision NOT NULL                     -- when it was recorded
);

CREATE FUNCTION conveyor_outbox_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (event, job_id, recorded_at)
    VALUES ('job.cancelled', NEW.id, coalesce(NEW.finished_at, NEW.enqueued_at));
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_outbox_cancelled AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (NEW.state = 'cancelled' AND OLD.state NOT IN ('running', 'cancelled'))
EXECUTE FUNCTION conveyor_outbox_cancelled();
