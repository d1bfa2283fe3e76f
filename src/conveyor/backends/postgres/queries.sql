-- Conveyor PostgreSQL statements, one per primitive where possible.
--
-- Tables: jobs, queues, tenants, locks (see schema.sql). Sections start with
-- "-- name: <name>"; parameters are psycopg named placeholders (%(name)s).
--
-- Common parameters
--   %(now)s   the injected test clock's time, or NULL for the database clock: every
--             statement reads the time through conveyor_now(%(now)s), so leases, due
--             times and expiries agree across machines.
--   %(chan)s  the store's NOTIFY channel, conveyor_<schema>; the payload is
--             "<queue> <id of the notifying transaction>".
--
-- Finished-job totals (job_totals, see schema.sql): finish and reap add the jobs they
-- move from running to succeeded or dead, purge subtracts the jobs it deletes, each in
-- the same statement, on rows of their own connection (shard = pg_backend_pid()); the
-- jobs_count_finished trigger counts every other change into or out of a finished state.
--
-- Statements marked "qualified" name their tables as {schema}.table: they also run on a
-- caller's own connection (transactional enqueue), whose search_path is the caller's.
-- The others run on the backend's pool, whose search_path is the store's schema.


-- name: insert_jobs
-- qualified. Arrays (one element per job, in order): ids, tasks, queues, tenants ('' =
-- default), priorities, args, kwargs, max_attempts, timeouts, result_ttls, keys,
-- run_ats (absolute due time or NULL), delays (seconds or NULL). A job is scheduled when
-- its due time is after now, else queued. A key held by an active job (or by an earlier
-- job of this batch) hits jobs_active_key and the row is skipped. The insert trigger
-- sends the wake-up.
WITH t AS (SELECT {schema}.conveyor_now(%(now)s) AS now),
n AS (
    SELECT u.*, coalesce(u.run_at, t.now + coalesce(u.delay, 0)) AS due, t.now
    FROM unnest(
        %(ids)s::text[], %(tasks)s::text[], %(queues)s::text[], %(tenants)s::text[],
        %(priorities)s::integer[], %(args)s::text[], %(kwargs)s::text[],
        %(max_attempts)s::integer[], %(timeouts)s::float8[], %(result_ttls)s::float8[],
        %(keys)s::text[], %(run_ats)s::float8[], %(delays)s::float8[]
    ) WITH ORDINALITY AS u(id, task, queue, tenant, priority, args_json, kwargs_json,
                           max_attempts, timeout, result_ttl, key, run_at, delay, ord),
    t
)
INSERT INTO {schema}.jobs (
    id, task, queue, tenant, priority, base_priority, state, args_json, kwargs_json,
    max_attempts, timeout, result_ttl, key, run_at, enqueued_at, ready_at, age_at
)
SELECT n.id, n.task, n.queue, n.tenant, n.priority, n.priority,
       CASE WHEN n.due > n.now THEN 'scheduled' ELSE 'queued' END,
       n.args_json, n.kwargs_json, n.max_attempts, n.timeout, n.result_ttl, n.key,
       CASE WHEN n.due > n.now THEN n.due END,
       n.now,
       CASE WHEN n.due > n.now THEN NULL ELSE n.now END,
       CASE WHEN n.due <= n.now AND n.priority > 0
            THEN n.now + (SELECT q.aging FROM {schema}.queues AS q WHERE q.name = n.queue)
       END
FROM n
ORDER BY n.ord
ON CONFLICT DO NOTHING
RETURNING id;


-- name: active_jobs_by_key
-- qualified. %(keys)s -> (key, id) of the active jobs holding those dedup keys.
SELECT key, id FROM {schema}.jobs
WHERE key = ANY (%(keys)s::text[])
  AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');


-- name: claim
-- See conveyor_claim in schema.sql. The first column is the statement's snapshot,
-- taken before the claim looked at any job (one row of NULLs when nothing was
-- claimed): wait_for_work ignores notifications from transactions it shows committed,
-- since this claim already saw their work.
WITH s AS MATERIALIZED (SELECT pg_current_snapshot()::text AS snapshot)
SELECT s.snapshot, c.*
FROM s LEFT JOIN LATERAL conveyor_claim(
    %(queues)s::text[], %(limit)s, %(cap_tasks)s::text[], %(cap_limits)s::integer[],
    %(worker)s, %(lease)s::float8, %(now)s::float8
) AS c ON true;


-- name: heartbeat
-- Extends the leases (%(ids)s, %(tokens)s) to now + %(lease)s; ids not returned lost
-- their lease. Only lease_expires_at changes, which no index covers: a HOT update.
-- "state IS NOT DISTINCT FROM" (the same as "=", state is NOT NULL) keeps every plan on
-- the primary key: with "=", a plan may scan all of jobs_running instead.
UPDATE jobs AS j
SET lease_expires_at = conveyor_now(%(now)s) + %(lease)s::float8
FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS h(id, token)
WHERE j.id = h.id AND j.lease_token = h.token AND j.state IS NOT DISTINCT FROM 'running'
RETURNING j.id, j.cancel_requested;


-- name: progress
-- Fenced: only the lease holder (%(id)s, %(token)s) records progress.
UPDATE jobs SET progress = %(fraction)s, progress_message = %(message)s
WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running';


-- name: finish
-- See conveyor_finish in schema.sql: %(outcomes)s (a JSON array of {id, token, kind,
-- result, error, delay}) applied where the lease token still holds; returns (id, token)
-- of the outcomes applied. Wakes %(capped_tasks)s' queues when a slot frees.
SELECT f.job_id, f.job_token
FROM conveyor_finish(%(outcomes)s::json, %(capped_tasks)s::text[], %(chan)s::text,
                     %(now)s::float8) AS f;


-- name: finish_claim
-- See conveyor_finish_claim in schema.sql: the finish's parameters, then the claim's.
-- Rows as the claim's, after four columns that only the first row fills: the applied
-- outcomes' ids and tokens, the claim's snapshot and this transaction's id.
-- Array parameters of the claim (queues, cap_tasks, cap_limits) arrive as array
-- literals (text), which the worker sends unchanged every cycle.
SELECT * FROM conveyor_finish_claim(
    %(outcomes)s::json, %(capped_tasks)s::text[], %(chan)s::text, %(queues)s::text[],
    %(limit)s, %(cap_tasks)s::text[], %(cap_limits)s::integer[], %(worker)s,
    %(lease)s::float8, %(now)s::float8
);


-- name: reap
-- Expired leases (lease_expires_at <= now): back to queued, dead when no attempt is
-- left, cancelled when a cancel was requested; records the WorkerLost error. Found
-- through jobs_running (running jobs are few). Returns how many were reaped, and the
-- ids of those sent to dead (announced as job.dead by the worker). Those cancelled
-- (their worker was lost while a cancel was pending) are recorded in the outbox here:
-- the outbox trigger leaves running -> cancelled out, and no worker will announce them.
-- Dead ones are counted into job_totals here (cancelled ones by the trigger).
WITH t AS (SELECT conveyor_now(%(now)s) AS now),
reaped AS (
    UPDATE jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'dead' END,
        finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts
                           THEN t.now END,
        expires_at = CASE WHEN j.cancel_requested THEN t.now + j.result_ttl END,
        ready_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts
                        THEN t.now ELSE j.ready_at END,
        priority = j.base_priority,
        age_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts
                           AND j.base_priority > 0
                      THEN t.now + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue)
                 END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'type', 'WorkerLost',
            'message', 'worker lost (lease expired)', 'traceback', NULL, 'at', t.now)),
        lease_token = NULL,
        lease_expires_at = NULL
    FROM t
    WHERE j.id IN (
        SELECT r.id FROM jobs AS r, t
        WHERE r.state = 'running' AND r.lease_expires_at <= t.now
        FOR UPDATE OF r SKIP LOCKED
    )
    AND j.state = 'running' AND j.lease_expires_at <= t.now
    RETURNING j.queue, j.tenant, j.state, j.id
),
totals AS (
    INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
    SELECT r.queue, r.tenant, r.state, pg_backend_pid(), count(*) FROM reaped AS r
    WHERE r.state = 'dead'
    GROUP BY r.queue, r.tenant, r.state ORDER BY r.queue, r.tenant, r.state
    ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n
),
announced AS (
    INSERT INTO outbox (event, job_id, recorded_at)
    SELECT 'job.cancelled', r.id, t.now FROM reaped AS r, t WHERE r.state = 'cancelled'
),
woken AS (
    SELECT pg_notify(%(chan)s, w.queue || ' ' || pg_current_xact_id())
    FROM (SELECT DISTINCT r.queue FROM reaped AS r) AS w
)
SELECT (SELECT count(*) FROM reaped)::integer, (SELECT count(*) FROM woken),
       (SELECT coalesce(array_agg(r.id), '{}') FROM reaped AS r WHERE r.state = 'dead');


-- name: promote
-- All due jobs -> queued, then aging (conveyor_promote); wakes every queue that has
-- ready jobs when anything changed.
WITH p AS (SELECT conveyor_promote(conveyor_now(%(now)s), NULL) AS changed)
SELECT p.changed, (SELECT count(*) FROM (
    SELECT pg_notify(%(chan)s, q.name || ' ' || pg_current_xact_id())
    FROM queues AS q WHERE p.changed > 0) AS w)
FROM p;


-- name: next_due
-- Seconds (by the store's clock) until the earliest scheduled/retrying job of
-- %(queues)s falls due; NULL when none waits.
SELECT min(run_at) - conveyor_now(%(now)s) FROM jobs
WHERE state IN ('scheduled', 'retrying') AND queue = ANY (%(queues)s::text[]);


-- name: purge_expired
-- Deletes at most %(limit)s finished jobs whose expires_at has passed (found through
-- jobs_expiry), takes them off job_totals, and returns how many it deleted.
WITH gone AS (
    DELETE FROM jobs
    WHERE id IN (
        SELECT e.id FROM jobs AS e
        WHERE e.expires_at IS NOT NULL AND e.expires_at <= conveyor_now(%(now)s)
          AND e.state IN ('succeeded', 'cancelled', 'dead')
        ORDER BY e.expires_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING queue, tenant, state
),
totals AS (
    INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
    SELECT g.queue, g.tenant, g.state, pg_backend_pid(), -count(*) FROM gone AS g
    GROUP BY g.queue, g.tenant, g.state ORDER BY g.queue, g.tenant, g.state
    ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n
)
SELECT count(*)::integer FROM gone;


-- name: fold_totals
-- Folds the per-connection rows of job_totals into shard 0 (which no connection writes)
-- so the table stays about one row per (queue, tenant, state). Rows a running
-- transaction holds are skipped: folding never waits, they are folded next time.
WITH gone AS (
    DELETE FROM job_totals AS c
    WHERE c.ctid IN (SELECT z.ctid FROM job_totals AS z WHERE z.shard <> 0
                     FOR UPDATE SKIP LOCKED)
    RETURNING c.queue, c.tenant, c.state, c.n
)
INSERT INTO job_totals AS c (queue, tenant, state, shard, n)
SELECT g.queue, g.tenant, g.state, 0, sum(g.n) FROM gone AS g
GROUP BY g.queue, g.tenant, g.state ORDER BY g.queue, g.tenant, g.state
ON CONFLICT (queue, tenant, state, shard) DO UPDATE SET n = c.n + excluded.n;


-- name: prune_totals
-- Then drops the folded rows that sum to nothing (all those jobs were purged).
DELETE FROM job_totals WHERE shard = 0 AND n = 0;


-- name: prune_tenants
-- Forgets tenants that are idle, have default settings and a vtime not ahead of their
-- queue's clock: the next claim would re-create such a row exactly as it is.
DELETE FROM tenants AS t
WHERE NOT t.active AND t.weight = 1 AND t.max_running IS NULL
  AND t.vtime <= coalesce((SELECT q.vclock FROM queues AS q WHERE q.name = t.queue), 0);


-- name: try_lock
-- Takes lock %(name)s for %(owner)s for %(ttl)s seconds, renews it for the same owner,
-- or steals it once expired. A returned row means the caller holds the lock.
WITH t AS (SELECT conveyor_now(%(now)s) AS now)
INSERT INTO locks AS l (name, owner, expires_at)
SELECT %(name)s, %(owner)s, t.now + %(ttl)s::float8 FROM t
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE l.owner = excluded.owner OR l.expires_at <= (SELECT t.now FROM t)
RETURNING owner;


-- name: unlock
DELETE FROM locks WHERE name = %(name)s AND owner = %(owner)s;


-- name: get_job
-- The column order here and in query_* is the one job_from_row reads.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors::text,
       key, timeout, cancel_requested
FROM jobs WHERE id = %(id)s;


-- name: query_jobs
-- Optional filters %(queue)s, %(tenant)s ('' = default), %(task)s; newest first.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors::text,
       key, timeout, cancel_requested
FROM jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
ORDER BY id DESC
LIMIT %(limit)s;


-- name: query_jobs_in_state
-- As query_jobs for one %(state)s, walking jobs_by_state.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors::text,
       key, timeout, cancel_requested
FROM jobs
WHERE state = %(state)s
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
ORDER BY id DESC
LIMIT %(limit)s;


-- name: lock_job
-- The job's state and key, row-locked for the rest of the transaction (cancel, replay).
SELECT state, key, queue FROM jobs WHERE id = %(id)s FOR UPDATE;


-- name: cancel_waiting
-- scheduled/queued/retrying/blocked/waiting -> cancelled; the record expires result_ttl after
-- now. Jobs waiting for this one are settled by the jobs_settle_dependents trigger.
UPDATE jobs
SET state = 'cancelled', finished_at = conveyor_now(%(now)s),
    expires_at = conveyor_now(%(now)s) + result_ttl, lease_expires_at = NULL
WHERE id = %(id)s AND state IN ('scheduled', 'queued', 'retrying', 'blocked', 'waiting');


-- name: request_cancel
-- A running job is cancelled by its worker, which learns of it from its heartbeat.
UPDATE jobs SET cancel_requested = true WHERE id = %(id)s AND state = 'running';


-- name: other_active_with_key
-- Is dedup %(key)s held by an active job other than %(id)s?
SELECT id FROM jobs
WHERE key = %(key)s AND id <> %(id)s
  AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');


-- name: replay
-- dead/cancelled -> queued with a fresh attempt budget; the error history is kept.
UPDATE jobs AS j
SET state = 'queued',
    attempt = 0,
    ready_at = conveyor_now(%(now)s),
    priority = j.base_priority,
    age_at = CASE WHEN j.base_priority > 0
                  THEN conveyor_now(%(now)s)
                       + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue)
             END,
    finished_at = NULL,
    expires_at = NULL,
    result_json = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    cancel_requested = false,
    progress = NULL,
    progress_message = NULL
WHERE j.id = %(id)s AND j.state IN ('dead', 'cancelled');


-- name: notify
-- Wakes the waiters of %(queue)s.
SELECT pg_notify(%(chan)s, %(queue)s::text || ' ' || pg_current_xact_id());


-- name: set_tenant
INSERT INTO tenants AS t (queue, tenant, weight, max_running)
VALUES (%(queue)s, %(tenant)s, %(weight)s, %(max_running)s)
ON CONFLICT (queue, tenant) DO UPDATE
SET weight = excluded.weight, max_running = excluded.max_running;


-- name: set_queue
INSERT INTO queues (name, aging) VALUES (%(queue)s, %(aging)s)
ON CONFLICT (name) DO UPDATE SET aging = excluded.aging;


-- name: reschedule_aging
-- After aging changed for %(queue)s: recompute when each queued job next moves up, from
-- the time it became ready and the levels it has already climbed.
UPDATE jobs
SET age_at = CASE WHEN %(aging)s::float8 IS NULL OR priority <= 0 THEN NULL
                  ELSE ready_at + %(aging)s::float8 * (base_priority - priority + 1) END
WHERE state = 'queued' AND queue = %(queue)s;


-- name: job_counts
-- (queue, tenant, state, count, oldest ready_at of the queued ones). Active states are
-- counted from their partial indexes (each branch's WHERE is an index predicate), so
-- the cost follows the backlog; finished ones are summed from job_totals, so finished
-- jobs, however many are kept, cost nothing here.
SELECT queue, tenant, 'queued', count(*), min(ready_at) FROM jobs
WHERE state = 'queued' GROUP BY queue, tenant
UNION ALL
SELECT queue, tenant, 'running', count(*), NULL FROM jobs
WHERE state = 'running' GROUP BY queue, tenant
UNION ALL
SELECT queue, tenant, state, count(*), NULL FROM jobs
WHERE state IN ('scheduled', 'retrying') GROUP BY queue, tenant, state
UNION ALL
SELECT queue, tenant, 'blocked', count(*), NULL FROM jobs
WHERE state = 'blocked' GROUP BY queue, tenant
UNION ALL
SELECT queue, tenant, 'waiting', count(*), NULL FROM jobs
WHERE state = 'waiting' GROUP BY queue, tenant
UNION ALL
SELECT queue, tenant, state, sum(n)::bigint, NULL FROM job_totals
GROUP BY queue, tenant, state HAVING sum(n) <> 0;


-- name: tenant_settings
SELECT queue, tenant, weight, max_running FROM tenants;


-- name: clock
SELECT conveyor_now(%(now)s);


-- name: waiting_counts
-- Jobs of the waiting states per (queue, tenant, priority, state), for /metrics. Like
-- job_counts, each branch's WHERE is the predicate of a partial index (jobs_ready,
-- jobs_due, jobs_blocked, jobs_waits), so the cost follows the backlog and finished
-- rows are never read.
SELECT queue, tenant, priority, 'queued', count(*) FROM jobs
WHERE state = 'queued' GROUP BY queue, tenant, priority
UNION ALL
SELECT queue, tenant, priority, state, count(*) FROM jobs
WHERE state IN ('scheduled', 'retrying') GROUP BY queue, tenant, priority, state
UNION ALL
SELECT queue, tenant, priority, 'blocked', count(*) FROM jobs
WHERE state = 'blocked' GROUP BY queue, tenant, priority
UNION ALL
SELECT queue, tenant, priority, 'waiting', count(*) FROM jobs
WHERE state = 'waiting' GROUP BY queue, tenant, priority;
