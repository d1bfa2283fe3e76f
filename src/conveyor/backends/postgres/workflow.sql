-- Workflow statements: dependencies (after=) and dedup windows (unique_for=). Run on
-- the backend's pool (search_path = the store's schema), inside the enqueue's
-- transaction. See conveyor_link, conveyor_settle and conveyor_reserve_key in
-- schema.sql; parameters as in queries.sql.


-- name: link
SELECT conveyor_link(%(ids)s::text[], %(deps)s::text[], %(policies)s::text[], %(now)s::float8);


-- name: reserve_key
SELECT conveyor_reserve_key(%(key)s, %(id)s, %(ttl)s::float8, %(now)s::float8);


-- name: unreserve_key
-- A job that reserved a window but was not inserted (an active job held its key).
DELETE FROM key_windows WHERE key = %(key)s AND id = %(id)s;


-- name: purge_key_windows
DELETE FROM key_windows WHERE expires_at <= conveyor_now(%(now)s);


-- name: take_rate
SELECT conveyor_take_rate(%(id)s, %(token)s, %(names)s::text[], %(limits)s::integer[],
                          %(periods)s::float8[], %(now)s::float8);


-- name: get_jobs
-- %(ids)s -> those jobs, in get_job's column order (missing ids are left out).
SELECT id, task, state, queue, tenant, priority, args_json, kwargs_json, attempt,
       max_attempts, enqueued_at, run_at, started_at, finished_at, expires_at,
       lease_expires_at, worker, progress, progress_message, result_json, errors::text,
       key, timeout, cancel_requested
FROM jobs WHERE id = ANY (%(ids)s::text[]);
