-- Migration 0002: workflows. The state 'blocked' and dependency edges (after=), dedup
-- keys reserved for a window (unique_for=), and rate limits' state (take_rate). See
-- schema.sql for the whole picture.

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN (
    'scheduled', 'queued', 'running', 'succeeded', 'retrying', 'dead', 'cancelled', 'blocked'));
ALTER TABLE jobs ADD COLUMN after_policy text COLLATE "C";
ALTER TABLE jobs ADD COLUMN pending integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dependents integer NOT NULL DEFAULT 0;

DROP INDEX jobs_active_key;
CREATE UNIQUE INDEX jobs_active_key ON jobs (key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked');

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
-- (attempt given back; cancelled instead if a cancel was requested).
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
    WHERE j.id = p_id;
    RETURN v_start - v_now;
END
$$;
