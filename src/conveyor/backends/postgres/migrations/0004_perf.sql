-- Migration 0004: throughput and scale (see schema.sql and docs/postgres.md).
--
-- * job_totals: counts of finished jobs per (queue, tenant, state), so that stats()
--   reads a few rows instead of counting every finished job; filled here from the jobs
--   already stored; kept by finish, reap, purge and the jobs_count_finished trigger.
-- * jobs_blocked: stats() counts blocked jobs from it.
-- * conveyor_claim: fewer statements per claim; the batch UPDATE finds its rows by
--   primary key whatever the statistics say; the claim commits synchronously.

CREATE TABLE job_totals (
    queue   text COLLATE "C" NOT NULL,
    tenant  text COLLATE "C" NOT NULL,
    state   text COLLATE "C" NOT NULL CHECK (state IN ('succeeded', 'dead', 'cancelled')),
    shard   integer NOT NULL,   -- the writer's pg_backend_pid(), 0 once folded; may be < 0
    n       bigint NOT NULL,
    PRIMARY KEY (queue, tenant, state, shard)
);

-- The lock keeps writers from finishing jobs between the count and the commit.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO job_totals (queue, tenant, state, shard, n)
SELECT queue, tenant, state, 0, count(*) FROM jobs
WHERE state IN ('succeeded', 'dead', 'cancelled')
GROUP BY queue, tenant, state;

CREATE INDEX jobs_blocked ON jobs (queue, tenant) WHERE state = 'blocked';

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

CREATE OR REPLACE FUNCTION conveyor_claim(
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
