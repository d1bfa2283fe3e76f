-- Migration 0007: the worker's cycle in one round trip (see docs/postgres.md, "Finish
-- and claim in one statement" and "Performance").
--
-- * conveyor_finish: the finish statement, moved into a function (Backend.finish
--   calls it).
-- * conveyor_finish_claim: finish, then claim, in one statement and one transaction
--   (Backend.finish_and_claim).

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
