-- Workflow statements: dependencies (after=), dedup windows (unique_for=), rate limits.
--
-- Tables: jobs (dependency columns pending, dependents, after_policy), job_deps (edges
-- parent -> child), key_windows (reserved dedup keys). A blocked job is released or
-- cancelled by the jobs_settle_dependents trigger (schema.sql) when its dependencies
-- finish; the statements here run at enqueue, for dependencies that finished before.
-- Parameters are named; :now is the backend's clock for the primitive.


-- name: dependency_state
SELECT state, task FROM jobs WHERE id = :id;


-- name: insert_dependency
-- A row back: the edge is new (the same parent named twice counts once).
INSERT INTO job_deps (parent, child) VALUES (:parent, :child)
ON CONFLICT DO NOTHING
RETURNING parent;


-- name: add_dependent
UPDATE jobs SET dependents = dependents + 1 WHERE id = :parent;


-- name: set_pending
UPDATE jobs SET pending = :pending, after_policy = :policy WHERE id = :id;


-- name: release_blocked
-- Every dependency had already finished when the job was enqueued.
UPDATE jobs
SET state = CASE WHEN run_at > :now THEN 'scheduled' ELSE 'queued' END,
    after_policy = :policy,
    ready_at = CASE WHEN run_at > :now THEN NULL ELSE :now END,
    age_at = CASE WHEN (run_at IS NULL OR run_at <= :now) AND base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END
WHERE id = :id AND state = 'blocked';


-- name: cancel_blocked
-- A dependency had already failed: cancelled at once, :error (JSON record) appended.
UPDATE jobs
SET state = 'cancelled',
    after_policy = :policy,
    finished_at = :now,
    expires_at = :now + result_ttl,
    errors_json = json_insert(errors_json, '$[#]', json(:error))
WHERE id = :id AND state = 'blocked';


-- name: key_window_holder
SELECT id FROM key_windows WHERE key = :key AND expires_at > :now;


-- name: reserve_key_window
INSERT INTO key_windows (key, id, expires_at) VALUES (:key, :id, :expires)
ON CONFLICT (key) DO UPDATE SET id = excluded.id, expires_at = excluded.expires_at;


-- name: purge_key_windows
DELETE FROM key_windows WHERE expires_at <= :now;


-- name: holds_lease
SELECT 1 FROM jobs WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: rate_tat
SELECT tat FROM rate_buckets WHERE name = :name;


-- name: set_rate_tat
INSERT INTO rate_buckets (name, tat) VALUES (:name, :tat)
ON CONFLICT (name) DO UPDATE SET tat = excluded.tat;


-- name: take_reservation
-- A row back: the job had reserved a slot in this bucket (now used).
DELETE FROM rate_reservations WHERE name = :name AND job_id = :id RETURNING start;


-- name: reserve_rate
INSERT INTO rate_reservations (name, job_id, start) VALUES (:name, :id, :start)
ON CONFLICT (name, job_id) DO UPDATE SET start = excluded.start;


-- name: forget_old_reservations
-- Reservations of jobs that never came back (cancelled while deferred).
DELETE FROM rate_reservations WHERE start < :before;


-- name: defer_running
-- A running job over its rate limit waits for its reserved slot: scheduled until
-- :start with its attempt given back (cancelled if a cancel was requested meanwhile:
-- the caller then records it in the outbox, as no worker outcome will announce it).
UPDATE jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'scheduled' END,
    run_at = CASE WHEN cancel_requested THEN run_at ELSE :start END,
    attempt = max(attempt - 1, 0),
    priority = base_priority,
    finished_at = CASE WHEN cancel_requested THEN :now ELSE finished_at END,
    expires_at = CASE WHEN cancel_requested THEN :now + result_ttl ELSE expires_at END,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING state;
