-- The outbox: events the store produced itself (see migration 0006 and schema.sql).
--
-- Table: outbox (seq, event, job_id, recorded_at). Rows are appended by the
-- jobs_outbox_cancelled trigger; the maintenance loop reads the oldest (take_events),
-- announces them, then deletes them by seq (ack_events): at-least-once. Each statement
-- runs alone on an autocommit connection.


-- name: take_events
SELECT seq, event, job_id FROM outbox ORDER BY seq LIMIT %(limit)s;


-- name: ack_events
DELETE FROM outbox WHERE seq = ANY (%(seqs)s::bigint[]);


-- name: purge_outbox
-- Entries nobody drained within the retention (no worker ran maintenance).
DELETE FROM outbox WHERE recorded_at < conveyor_now(%(now)s) - %(retention)s;
