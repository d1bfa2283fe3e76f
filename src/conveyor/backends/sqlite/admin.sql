-- Maintenance and operator statements: reaper, purge, locks, reads, cancel, replay,
-- tenant and queue settings, stats.
--
-- Tables: jobs (read and written), tenants and queues (settings), locks, outbox. As in
-- worker.sql, the counters in lanes/tenants/task_running are kept by the triggers in
-- schema.sql.
--
-- Sections start with "-- name: <name>"; parameters are named. :now is seconds since
-- the epoch from the backend's clock, computed once per primitive. As in worker.sql,
-- statements that must use a partial index name it with INDEXED BY.


-- name: expired_leases
-- Running jobs whose lease ended at or before :now (and whether reaping sends them to
-- dead: no attempt left and no cancel request; and whether it cancels them).
SELECT id, lease_token, attempt, attempt >= max_attempts AND NOT cancel_requested,
       cancel_requested
FROM jobs INDEXED BY jobs_leases
WHERE state = 'running' AND lease_expires_at <= :now;


-- name: reap_one
-- Worker lost: record :error, then queued again, or dead when no attempt is left, or
-- cancelled when someone asked to cancel it while it ran.
UPDATE jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN attempt < max_attempts THEN 'queued' ELSE 'dead' END,
    finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN :now END,
    expires_at = CASE WHEN cancel_requested THEN :now + result_ttl END,
    ready_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts
                    THEN :now ELSE ready_at END,
    priority = base_priority,
    age_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts AND base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END,
    errors_json = json_insert(errors_json, '$[#]', json(:error)),
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: expired_waits
-- Waiting jobs (external completion) whose deadline is at or before :now.
SELECT id, attempt, task FROM jobs INDEXED BY jobs_waits
WHERE state = 'waiting' AND lease_expires_at <= :now;


-- name: expire_wait
-- Deadline passed: record :error, then retrying until :now + :delay (the task's
-- backoff, chosen by the caller) or queued at once when :delay is 0, or dead when no
-- attempt is left.
UPDATE jobs
SET state = CASE WHEN attempt >= max_attempts THEN 'dead'
                 WHEN :delay > 0 THEN 'retrying' ELSE 'queued' END,
    finished_at = CASE WHEN attempt >= max_attempts THEN :now END,
    run_at = CASE WHEN attempt < max_attempts AND :delay > 0 THEN :now + :delay
                  ELSE run_at END,
    ready_at = CASE WHEN attempt < max_attempts AND :delay <= 0 THEN :now ELSE ready_at END,
    priority = base_priority,
    age_at = CASE WHEN attempt < max_attempts AND :delay <= 0 AND base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END,
    errors_json = json_insert(errors_json, '$[#]', json(:error)),
    lease_expires_at = NULL
WHERE id = :id AND state = 'waiting' AND lease_expires_at <= :now
RETURNING state;


-- name: purge_expired
-- Deletes at most :limit finished jobs whose expires_at is at or before :now.
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_expiry
    WHERE expires_at IS NOT NULL AND expires_at <= :now
      AND state IN ('succeeded', 'cancelled', 'dead')
    ORDER BY expires_at
    LIMIT :limit
);


-- name: prune_tenants
-- Forgets tenants with nothing ready or running, default settings, and a virtual time
-- not ahead of their queue's clock: such a row would be re-created exactly as it is
-- (vtime = the queue's clock), so deleting it loses nothing, and the table does not
-- grow with every tenant ever seen. A tenant ahead of the clock keeps its debt.
DELETE FROM tenants
WHERE ready = 0 AND running = 0 AND weight = 1 AND max_running IS NULL
  AND vtime <= coalesce((SELECT vclock FROM queues WHERE name = tenants.queue), 0);


-- name: try_lock
-- Takes lock :name for :owner until :expires, renews it for the same owner, or steals
-- it once expired. A returned row means the caller holds the lock.
INSERT INTO locks (name, owner, expires_at) VALUES (:name, :owner, :expires)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE locks.owner = excluded.owner OR locks.expires_at <= :now
RETURNING owner;


-- name: unlock
DELETE FROM locks WHERE name = :name AND owner = :owner;


-- name: get_job
-- The column order here and in the query_* sections is the one records.job_from_row reads.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors_json,
       key, timeout, cancel_requested
FROM jobs WHERE id = :id;


-- name: query_jobs
-- Every state; optional filters :queue, :tenant ('' = default), :task; newest first.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors_json,
       key, timeout, cancel_requested
FROM jobs
WHERE (:queue IS NULL OR queue = :queue)
  AND (:tenant IS NULL OR tenant = :tenant)
  AND (:task IS NULL OR task = :task)
ORDER BY id DESC
LIMIT :limit;


-- name: query_jobs_in_state
-- As query_jobs for one :state, walking the jobs_by_state index.
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors_json,
       key, timeout, cancel_requested
FROM jobs
WHERE state = :state
  AND (:queue IS NULL OR queue = :queue)
  AND (:tenant IS NULL OR tenant = :tenant)
  AND (:task IS NULL OR task = :task)
ORDER BY id DESC
LIMIT :limit;


-- name: job_state
SELECT state, key FROM jobs WHERE id = :id;


-- name: cancel_waiting
-- scheduled/queued/retrying/blocked/waiting -> cancelled; the record expires result_ttl after
-- :now. Jobs waiting for this one are settled by the jobs_settle_dependents trigger.
UPDATE jobs
SET state = 'cancelled', finished_at = :now, expires_at = :now + result_ttl,
    lease_expires_at = NULL
WHERE id = :id AND state IN ('scheduled', 'queued', 'retrying', 'blocked', 'waiting');


-- name: request_cancel
-- A running job is cancelled by its worker, which learns of it from its heartbeat.
UPDATE jobs SET cancel_requested = 1 WHERE id = :id AND state = 'running';


-- name: other_active_with_key
-- Is dedup :key held by an active job other than :id?
SELECT id FROM jobs INDEXED BY jobs_active_key
WHERE key = :key AND id <> :id
  AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');


-- name: replay
-- dead/cancelled -> queued with a fresh attempt budget; the error history is kept.
UPDATE jobs
SET state = 'queued',
    attempt = 0,
    ready_at = :now,
    priority = base_priority,
    age_at = CASE WHEN base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END,
    finished_at = NULL,
    expires_at = NULL,
    result_json = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    cancel_requested = 0,
    progress = NULL,
    progress_message = NULL
WHERE id = :id AND state IN ('dead', 'cancelled');


-- name: set_tenant
INSERT INTO tenants (queue, tenant, weight, max_running)
VALUES (:queue, :tenant, :weight, :max_running)
ON CONFLICT (queue, tenant) DO UPDATE
SET weight = excluded.weight, max_running = excluded.max_running;


-- name: set_queue
INSERT INTO queues (name, aging) VALUES (:queue, :aging)
ON CONFLICT (name) DO UPDATE SET aging = excluded.aging;


-- name: reschedule_aging
-- After :aging changed for :queue: recompute when each queued job next moves up, from
-- the time it became ready and the levels it has already climbed.
UPDATE jobs INDEXED BY jobs_ready
SET age_at = CASE WHEN :aging IS NULL OR priority <= 0 THEN NULL
                  ELSE ready_at + :aging * (base_priority - priority + 1) END
WHERE state = 'queued' AND queue = :queue;


-- name: job_counts
-- Counts per (queue, tenant) and state, plus the oldest ready_at of queued jobs.
SELECT queue, tenant,
       sum(state = 'scheduled'), sum(state = 'queued'), sum(state = 'running'),
       sum(state = 'retrying'), sum(state = 'dead'), sum(state = 'succeeded'),
       sum(state = 'cancelled'),
       min(CASE WHEN state = 'queued' THEN ready_at END),
       sum(state = 'blocked'), sum(state = 'waiting')
FROM jobs
GROUP BY queue, tenant;


-- name: tenant_settings
SELECT queue, tenant, weight, max_running FROM tenants;


-- name: waiting_counts
-- Jobs of the waiting states per (queue, tenant, priority, state), for /metrics. The
-- state filter is a range of jobs_by_state (state, id) per state, so finished jobs,
-- however many are kept, are never read.
SELECT queue, tenant, priority, state, count(*) FROM jobs
WHERE state IN ('blocked', 'scheduled', 'queued', 'waiting', 'retrying')
GROUP BY queue, tenant, priority, state;


-- name: take_events
-- The oldest :limit outbox entries (left in place until ack_event deletes them).
SELECT seq, event, job_id FROM outbox ORDER BY seq LIMIT :limit;


-- name: record_cancelled
-- A running job cancelled with no worker outcome to announce it: the reaper's (its
-- worker was lost while a cancel was pending) and a rate-limit deferral's (take_rate,
-- a cancel pending). The outbox trigger leaves running -> cancelled out (a live worker
-- announces its own cancels), so these callers record it here.
INSERT INTO outbox (event, job_id, recorded_at) VALUES ('job.cancelled', :id, :now);


-- name: ack_event
DELETE FROM outbox WHERE seq = :seq;


-- name: purge_outbox
-- Entries nobody drained within the retention (no worker ran maintenance).
DELETE FROM outbox WHERE recorded_at < :before;
