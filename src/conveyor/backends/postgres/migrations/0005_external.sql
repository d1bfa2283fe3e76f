-- Migration 0005 (external completion): the state 'waiting' (a job handed to an outside
-- service by conveyor.Await), its completion token and deadline, and the index the
-- expiry of overdue waiting jobs reads. See schema.sql and external.sql.
--
-- The deadline gets its own column (wait_until) rather than an index on
-- lease_expires_at: heartbeats change only lease_expires_at, which no index covers, so
-- they stay HOT updates.

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN (
    'scheduled', 'queued', 'running', 'succeeded', 'retrying', 'dead', 'cancelled', 'blocked',
    'waiting'));
ALTER TABLE jobs ADD COLUMN wait_token text COLLATE "C";
ALTER TABLE jobs ADD COLUMN wait_until double precision;

DROP INDEX jobs_active_key;
CREATE UNIQUE INDEX jobs_active_key ON jobs (key)
    WHERE key IS NOT NULL
      AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');
CREATE INDEX jobs_waits ON jobs (wait_until) WHERE state = 'waiting';
