-- Migration 0008 (notifications): a rate-limit deferral that cancels the job records it
-- in the outbox.
--
-- conveyor_take_rate moves a running job over its rate limit back to scheduled, or to
-- cancelled when a cancel was pending. That cancel has no worker outcome to announce it
-- (the attempt was given back) and the jobs_outbox_cancelled trigger leaves
-- running -> cancelled out (a live worker announces its own cancels), so the function
-- records the job.cancelled entry itself, in the same transaction. The reaper does the
-- same for the running jobs of lost workers it cancels (queries.sql reap, no schema
-- change). See schema.sql.

CREATE OR REPLACE FUNCTION conveyor_take_rate(
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
    v_state text;
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
    WHERE j.id = p_id
    RETURNING j.state INTO v_state;
    IF v_state = 'cancelled' THEN
        -- A cancel was pending: no worker outcome will announce it (the attempt was
        -- given back), and the outbox trigger leaves running -> cancelled out.
        INSERT INTO outbox (event, job_id, recorded_at)
        VALUES ('job.cancelled', p_id, v_now);
    END IF;
    RETURN v_start - v_now;
END
$$;
