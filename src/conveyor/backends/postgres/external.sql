-- External completion (conveyor.Await): park, complete from outside, expire. Run on the
-- backend's pool (search_path = the store's schema); parameters as in queries.sql.
-- A waiting job keeps its deadline in wait_until (indexed by jobs_waits) and, for
-- readers, in lease_expires_at; wait_token is its completion token (the lease token of
-- the attempt that parked it), kept after it leaves 'waiting' so that a late or repeated
-- completion is told apart from a wrong token. Dependents are settled by the
-- jobs_settle_dependents trigger as on any finish.


-- name: park
-- running -> waiting until now + %(delay)s, fenced by the lease (%(id)s, %(token)s);
-- cancelled instead if a cancel was requested while it ran. Returns the job's queue if
-- applied (its waiters are notified: the freed slot may unblock a capped job).
WITH t AS (SELECT conveyor_now(%(now)s) AS now)
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'waiting' END,
    wait_token = CASE WHEN j.cancel_requested THEN j.wait_token ELSE j.lease_token END,
    wait_until = CASE WHEN j.cancel_requested THEN NULL ELSE t.now + %(delay)s::float8 END,
    lease_expires_at = CASE WHEN j.cancel_requested THEN NULL
                            ELSE t.now + %(delay)s::float8 END,
    finished_at = CASE WHEN j.cancel_requested THEN t.now ELSE j.finished_at END,
    expires_at = CASE WHEN j.cancel_requested THEN t.now + j.result_ttl ELSE j.expires_at END,
    lease_token = NULL
FROM t
WHERE j.id = %(id)s AND j.lease_token = %(token)s AND j.state = 'running'
RETURNING j.queue;


-- name: complete_external
-- waiting -> succeeded / retrying / queued / dead (%(kind)s: succeeded, retry or dead,
-- with %(result)s, %(error)s, %(delay)s as in finish), only with the completion token
-- and before the deadline. Returns the new state and queue when applied.
WITH t AS (SELECT conveyor_now(%(now)s) AS now),
s AS (
    SELECT j.id,
           conveyor_finish_state(%(kind)s, false, j.attempt, j.max_attempts,
                                 %(delay)s::float8) AS state
    FROM jobs AS j
    WHERE j.id = %(id)s
)
UPDATE jobs AS j
SET state = s.state,
    result_json = CASE WHEN %(kind)s = 'succeeded' THEN %(result)s ELSE j.result_json END,
    run_at = CASE WHEN s.state = 'retrying' THEN t.now + %(delay)s::float8 ELSE j.run_at END,
    ready_at = CASE WHEN s.state = 'queued' THEN t.now ELSE j.ready_at END,
    priority = j.base_priority,
    age_at = CASE WHEN s.state = 'queued' AND j.base_priority > 0
                  THEN t.now + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue) END,
    finished_at = CASE WHEN s.state IN ('succeeded', 'dead') THEN t.now ELSE j.finished_at END,
    expires_at = CASE WHEN s.state = 'succeeded' THEN t.now + j.result_ttl
                      ELSE j.expires_at END,
    errors = CASE WHEN %(error)s::text IS NULL OR %(kind)s = 'succeeded' THEN j.errors
                  ELSE j.errors || jsonb_build_array(%(error)s::jsonb) END,
    wait_until = NULL,
    lease_expires_at = NULL
FROM t, s
WHERE j.id = s.id AND j.state = 'waiting' AND j.wait_token = %(token)s
  AND j.wait_until > t.now
RETURNING j.state, j.queue;


-- name: wait_status
-- Read first, row-locked, by complete_external: so a park committing meanwhile is
-- either seen here or waits; then the job's state, completion token, deadline and last
-- error's type say whether complete_external applies or why it is refused.
SELECT state, wait_token, wait_until, errors -> -1 ->> 'type' FROM jobs WHERE id = %(id)s
FOR UPDATE;


-- name: overdue_waits
-- Waiting jobs whose deadline passed, row-locked until the transaction ends (so a
-- completion landing meanwhile waits, then finds them expired; rows another
-- transaction holds are left for the next pass): (id, task, attempt) of each, from
-- which the caller computes each job's retry delay.
SELECT id, task, attempt FROM jobs
WHERE state = 'waiting' AND wait_until <= conveyor_now(%(now)s)
FOR UPDATE SKIP LOCKED;


-- name: expire_waiting
-- The jobs overdue_waits locked (%(ids)s), each with its retry delay (%(delays)s):
-- retrying until now + delay (queued at once when it is 0) while attempts are left, else
-- dead; records the ExternalTimeout error. Returns (id, new state, queue) of each.
WITH t AS (SELECT conveyor_now(%(now)s) AS now),
d AS (SELECT * FROM unnest(%(ids)s::text[], %(delays)s::float8[]) AS d(id, delay))
UPDATE jobs AS j
SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead'
                 WHEN d.delay > 0 THEN 'retrying' ELSE 'queued' END,
    finished_at = CASE WHEN j.attempt >= j.max_attempts THEN t.now END,
    run_at = CASE WHEN j.attempt < j.max_attempts AND d.delay > 0 THEN t.now + d.delay
                  ELSE j.run_at END,
    ready_at = CASE WHEN j.attempt < j.max_attempts AND d.delay <= 0 THEN t.now
                    ELSE j.ready_at END,
    priority = j.base_priority,
    age_at = CASE WHEN j.attempt < j.max_attempts AND d.delay <= 0 AND j.base_priority > 0
                  THEN t.now + (SELECT q.aging FROM queues AS q WHERE q.name = j.queue) END,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'type', 'ExternalTimeout',
        'message', 'no external completion before the deadline', 'traceback', NULL,
        'at', t.now)),
    wait_until = NULL,
    lease_expires_at = NULL
FROM t, d
WHERE j.id = d.id AND j.state = 'waiting' AND j.wait_until <= t.now
RETURNING j.id, j.state, j.queue;
