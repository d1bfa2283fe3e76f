-- Workflow statements: dependencies (after=) and dedup windows (unique_for=).
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
