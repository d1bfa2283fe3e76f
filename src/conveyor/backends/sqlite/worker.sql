-- Hot-path statements: enqueue, promotion and aging, claim, heartbeat, progress, finish.
--
-- Tables: jobs (read and written); queues (aging read); lanes and tenants (read by
-- claim_one). The counters in lanes, tenants and task_running are maintained by the
-- triggers in schema.sql, never here.
--
-- Sections start with "-- name: <name>"; SQLiteBackend runs each inside the BEGIN
-- IMMEDIATE transaction of one primitive. Parameters are named (:now, :id, ...) except
-- in insert_job, which uses numbered ?N parameters for a fast executemany over tuples.
-- Every time (:now, :expires, ...) is seconds since the epoch from the backend's clock,
-- computed once per primitive.
--
-- Hot-path statements name their index (INDEXED BY): without statistics the planner
-- prefers jobs_by_state (state = ?) over the partial indexes, which turns an index
-- range of a few due rows into a scan of every queued job. INDEXED BY also makes a
-- statement fail loudly, rather than run slowly, if its index ever stops fitting.
--
-- A job that becomes queued always gets: ready_at (for oldest-wait and aging),
-- priority = base_priority (aging starts over), and age_at = when aging next moves it
-- up one level (NULL when its queue has no aging or it is already at priority 0).


-- name: insert_job
-- ?1 id, ?2 task, ?3 queue, ?4 tenant ('' = default), ?5 priority, ?6 state ('queued' or
-- 'scheduled'), ?7 args_json, ?8 kwargs_json, ?9 max_attempts, ?10 timeout,
-- ?11 result_ttl, ?12 key, ?13 run_at, ?14 now, ?15 ready_at (NULL when scheduled).
-- A key held by an active job hits jobs_active_key and the row is skipped.
INSERT INTO jobs (
    id, task, queue, tenant, priority, base_priority, state, args_json, kwargs_json,
    max_attempts, timeout, result_ttl, key, run_at, enqueued_at, ready_at, age_at
)
VALUES (
    ?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
    CASE WHEN ?6 = 'queued' AND ?5 > 0
         THEN ?14 + (SELECT aging FROM queues WHERE name = ?3) END
)
ON CONFLICT DO NOTHING;


-- name: active_job_by_key
-- :key -> id of the active job holding the dedup key, if any.
SELECT id FROM jobs INDEXED BY jobs_active_key
WHERE key = :key AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked');


-- name: promote_due
-- Due scheduled/retrying jobs -> queued, oldest due first, at most :limit rows.
-- The job has been ready since it fell due, so ready_at (and the aging schedule)
-- start at run_at even when promotion runs late.
UPDATE jobs
SET state = 'queued',
    ready_at = run_at,
    priority = base_priority,
    age_at = CASE WHEN base_priority > 0
                  THEN run_at + (SELECT aging FROM queues WHERE name = jobs.queue) END
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_due
    WHERE state IN ('scheduled', 'retrying') AND run_at <= :now
    ORDER BY run_at
    LIMIT :limit
);


-- name: age_ready
-- One aging step: queued jobs whose age_at has passed move up one priority level and
-- get the next step scheduled (none once they reach 0). The caller repeats the step
-- while it changes rows, so a late promoter catches up on several levels.
UPDATE jobs INDEXED BY jobs_aging
SET priority = priority - 1,
    age_at = CASE WHEN priority > 1
                  THEN age_at + (SELECT aging FROM queues WHERE name = jobs.queue) END
WHERE state = 'queued' AND age_at IS NOT NULL AND age_at <= :now;


-- name: next_due
-- :queues (JSON array of names) -> earliest run_at of a waiting job in those queues.
SELECT run_at FROM jobs INDEXED BY jobs_due
WHERE state IN ('scheduled', 'retrying')
  AND queue IN (SELECT value FROM json_each(:queues))
ORDER BY run_at
LIMIT 1;


-- name: task_running
-- :tasks (JSON array of task names) -> running count of each task that has any.
SELECT task, running FROM task_running
WHERE task IN (SELECT value FROM json_each(:tasks));


-- name: claim_one
-- Claims the next job of :queue, or nothing. :capped is a JSON array of tasks at their
-- concurrency cap. First the lane: lowest priority, then the tenant with the smallest
-- vtime (name breaks ties), among lanes with a ready job of an uncapped task whose
-- tenant is below max_running. Then, among that (priority, tenant)'s uncapped tasks,
-- the oldest head job (FIFO within the tenant). Because lanes are per task, a capped
-- task never makes the claim scan its jobs. The jobs_claimed trigger then updates the
-- counters and advances the tenant's vtime.
-- :token, :now, :expires, :worker describe the new lease.
WITH lane AS (
    SELECT l.priority, l.tenant
    FROM lanes AS l
    JOIN tenants AS t ON t.queue = l.queue AND t.tenant = l.tenant
    WHERE l.queue = :queue
      AND l.ready > 0
      AND l.task NOT IN (SELECT value FROM json_each(:capped))
      AND (t.max_running IS NULL OR t.running < t.max_running)
    ORDER BY l.priority, t.vtime, l.tenant
    LIMIT 1
)
UPDATE jobs
SET state = 'running',
    attempt = attempt + 1,
    lease_token = :token,
    lease_expires_at = :expires,
    started_at = :now,
    worker = :worker,
    cancel_requested = 0,
    progress = NULL,
    progress_message = NULL
WHERE id = (
    SELECT (
        SELECT j.id FROM jobs AS j INDEXED BY jobs_ready
        WHERE j.state = 'queued' AND j.queue = :queue AND j.priority = l.priority
          AND j.tenant = l.tenant AND j.task = l.task
        ORDER BY j.id
        LIMIT 1
    ) AS head
    FROM lane
    JOIN lanes AS l
      ON l.queue = :queue AND l.priority = lane.priority AND l.tenant = lane.tenant
    WHERE l.ready > 0 AND l.task NOT IN (SELECT value FROM json_each(:capped))
    ORDER BY head
    LIMIT 1
)
RETURNING id, task, queue, tenant, priority, args_json, kwargs_json, attempt,
          max_attempts, timeout, lease_expires_at, enqueued_at;


-- name: heartbeat
-- Extends one lease (:id, :token) to :expires; no row back means the lease is lost.
UPDATE jobs SET lease_expires_at = :expires
WHERE id = :id AND lease_token = :token AND state = 'running'
RETURNING cancel_requested;


-- name: progress
-- Fenced: only the lease holder (:id, :token) records progress.
UPDATE jobs SET progress = :fraction, progress_message = :message
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: finish_succeeded
-- :result (JSON text); the record expires result_ttl seconds after :now.
UPDATE jobs
SET state = 'succeeded',
    result_json = :result,
    finished_at = :now,
    expires_at = :now + result_ttl,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: finish_retry
-- :error (JSON record or NULL) is appended. The job goes on (retrying until
-- :now + :delay when :delay > 0, else queued at once) unless someone asked to cancel it
-- while it ran (-> cancelled) or it has no attempt left (-> dead: attempts are counted
-- at claim, and the store never lets a job start more than max_attempts times).
UPDATE jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled'
                 WHEN attempt >= max_attempts THEN 'dead'
                 WHEN :delay > 0 THEN 'retrying'
                 ELSE 'queued' END,
    run_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts AND :delay > 0
                  THEN :now + :delay ELSE run_at END,
    ready_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts AND :delay <= 0
                    THEN :now ELSE ready_at END,
    priority = base_priority,
    age_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts AND :delay <= 0
                       AND base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END,
    finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts
                       THEN :now ELSE finished_at END,
    expires_at = CASE WHEN cancel_requested THEN :now + result_ttl ELSE expires_at END,
    errors_json = CASE WHEN :error IS NULL THEN errors_json
                       ELSE json_insert(errors_json, '$[#]', json(:error)) END,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: finish_dead
-- :error (JSON record or NULL) is appended. Dead jobs never expire.
UPDATE jobs
SET state = 'dead',
    finished_at = :now,
    errors_json = CASE WHEN :error IS NULL THEN errors_json
                       ELSE json_insert(errors_json, '$[#]', json(:error)) END,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: finish_cancelled
-- The worker honoured a cancel request; :error (or NULL) is appended if given.
UPDATE jobs
SET state = 'cancelled',
    finished_at = :now,
    expires_at = :now + result_ttl,
    errors_json = CASE WHEN :error IS NULL THEN errors_json
                       ELSE json_insert(errors_json, '$[#]', json(:error)) END,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';


-- name: finish_released
-- Graceful shutdown: back to queued and the attempt is given back (cancelled instead
-- if someone asked to cancel it meanwhile).
UPDATE jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempt = max(attempt - 1, 0),
    ready_at = :now,
    priority = base_priority,
    age_at = CASE WHEN NOT cancel_requested AND base_priority > 0
                  THEN :now + (SELECT aging FROM queues WHERE name = jobs.queue) END,
    finished_at = CASE WHEN cancel_requested THEN :now ELSE finished_at END,
    expires_at = CASE WHEN cancel_requested THEN :now + result_ttl ELSE expires_at END,
    lease_token = NULL,
    lease_expires_at = NULL
WHERE id = :id AND lease_token = :token AND state = 'running';
