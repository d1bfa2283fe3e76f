-- Migration 0006 (notifications): the outbox of events the store produced itself.
--
-- A job that becomes cancelled from any state but running was cancelled by the store on
-- its own: cancel() of a job no worker holds (cancel_waiting), a dependent whose
-- dependency failed (conveyor_settle, recursively), or a job enqueued after a failed
-- dependency (conveyor_link). No worker reports those, so the jobs_outbox_cancelled
-- trigger records the announcement in the same transaction, whatever statement made
-- the change. running -> cancelled is its worker's own outcome (or the reaper's, for a
-- lost worker) and is left out, so nothing is announced twice. The trigger's WHEN
-- clause keeps the hot paths (claim, finish) from ever calling the function.
--
-- Drained by the maintenance loop through outbox.sql (take_events / ack_events); purge
-- drops entries older than the retention (OUTBOX_RETENTION in backends/base.py).
-- See schema.sql.

CREATE TABLE outbox (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order
    event   text NOT NULL,                                     -- 'job.cancelled'
    job_id  text COLLATE "C" NOT NULL,
    recorded_at  double precision NOT NULL                     -- when it was recorded
);

CREATE FUNCTION conveyor_outbox_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (event, job_id, recorded_at)
    VALUES ('job.cancelled', NEW.id, coalesce(NEW.finished_at, NEW.enqueued_at));
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_outbox_cancelled AFTER UPDATE OF state ON jobs
FOR EACH ROW
WHEN (NEW.state = 'cancelled' AND OLD.state NOT IN ('running', 'cancelled'))
EXECUTE FUNCTION conveyor_outbox_cancelled();
