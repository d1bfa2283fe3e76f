-- Conveyor SQLite schema, version 4 (versions 1 and 2 are upgraded by _connection.py;
-- version 3 only lacks the outbox, which this script adds).
--
-- Tables
--   jobs          one row per job (the only table with real data)
--   queues        per-queue settings (aging) and the fair-share virtual clock
--   tenants       per (queue, tenant): weight, max_running, virtual time, and exact counts
--                 of its ready and running jobs
--   lanes         per (queue, priority, tenant, task): count of ready jobs, so that a claim
--                 finds the next lane without scanning a flood of ready jobs
--   task_running  per task: running jobs across the store (for task concurrency caps)
--   locks         named leases for singleton loops (reaper, promoter, scheduler)
--   job_deps      dependency edges (parent must finish before child) of blocked jobs
--   key_windows   dedup keys reserved for a unique_for= window, whatever the job's state
--   rate_buckets  rate limits' state: the theoretical arrival time (tat) of each bucket
--   rate_reservations  slots reserved by jobs deferred until their turn
--   outbox        events the store produced itself (job.cancelled of jobs no worker
--                 held), drained by the maintenance loop (Backend.take_events)
--
-- Parameters: none. SQLiteBackend.open() runs this file inside one BEGIN IMMEDIATE
-- transaction; every statement is IF NOT EXISTS, so processes that open a fresh file at
-- the same time cannot race each other into a half-built schema.
--
-- Invariant kept by the triggers at the end of this file (on every path: enqueue, claim,
-- finish, reap, promote, cancel, replay, purge, aging), so no Python code path can forget
-- one:
--   lanes.ready    = count of queued jobs in that (queue, priority, tenant, task);
--                    a lane row is deleted when it drops to zero
--   tenants.ready  = count of queued jobs of the tenant in the queue
--   tenants.running = count of running jobs of the tenant in the queue
--   task_running.running = count of running jobs of the task in the store
-- Tenants are stored with tenant '' for the default (None) tenant.

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,      -- UUIDv7: sorts by creation, so ORDER BY id = FIFO
    task              TEXT NOT NULL,
    queue             TEXT NOT NULL,
    tenant            TEXT NOT NULL,         -- '' is the default tenant
    priority          INTEGER NOT NULL,      -- current level; aging lowers it while queued
    base_priority     INTEGER NOT NULL,      -- as enqueued; restored whenever it is queued anew
    state             TEXT NOT NULL CHECK (state IN (
                          'scheduled', 'queued', 'running', 'succeeded',
                          'retrying', 'dead', 'cancelled', 'blocked', 'waiting')),
    args_json         TEXT NOT NULL,
    kwargs_json       TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    timeout           REAL,
    result_ttl        REAL,                  -- NULL keeps finished records forever
    key               TEXT,                  -- dedup key, unique among active jobs
    run_at            REAL,                  -- due time of a scheduled or retrying job
    enqueued_at       REAL NOT NULL,
    ready_at          REAL,                  -- when it last became queued (oldest wait)
    age_at            REAL,                  -- when aging next moves it up; NULL = never
    started_at        REAL,
    finished_at       REAL,
    expires_at        REAL,                  -- purge after this (succeeded/cancelled only)
    lease_token       TEXT,
    lease_expires_at  REAL,                  -- lease end; for a waiting job: its deadline
    worker            TEXT,
    progress          REAL,
    progress_message  TEXT,
    result_json       TEXT,
    errors_json       TEXT NOT NULL DEFAULT '[]',  -- JSON array, one record per failure
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    after_policy      TEXT,                  -- 'success' or 'always' (jobs with after=)
    pending           INTEGER NOT NULL DEFAULT 0,  -- unfinished dependencies (blocked)
    dependents        INTEGER NOT NULL DEFAULT 0,  -- > 0: blocked jobs wait for this one
    wait_token        TEXT                   -- completion token of its last Await (kept
                                             -- afterwards, so a late completion is told apart)
);

-- Claim: the head of a lane is the first entry for (queue, priority, tenant, task).
CREATE INDEX IF NOT EXISTS jobs_ready
    ON jobs (queue, priority, tenant, task, id) WHERE state = 'queued';
-- Promotion of due jobs.
CREATE INDEX IF NOT EXISTS jobs_due
    ON jobs (run_at) WHERE state IN ('scheduled', 'retrying');
-- Reaper.
CREATE INDEX IF NOT EXISTS jobs_leases
    ON jobs (lease_expires_at) WHERE state = 'running';
-- Expiry of waiting jobs (external completion) past their deadline.
CREATE INDEX IF NOT EXISTS jobs_waits
    ON jobs (lease_expires_at) WHERE state = 'waiting';
-- Purge.
CREATE INDEX IF NOT EXISTS jobs_expiry
    ON jobs (expires_at) WHERE expires_at IS NOT NULL;
-- Priority aging: only queued jobs in queues with aging set have an age_at.
CREATE INDEX IF NOT EXISTS jobs_aging
    ON jobs (age_at) WHERE state = 'queued' AND age_at IS NOT NULL;
-- Dedup: at most one active job per key. Enqueue relies on this for race-free dedup
-- across processes (INSERT ... ON CONFLICT DO NOTHING, then look the holder up).
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_key
    ON jobs (key)
    WHERE key IS NOT NULL
      AND state IN ('scheduled', 'queued', 'running', 'retrying', 'blocked', 'waiting');
-- Operators: listing by state, newest first.
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);

CREATE TABLE IF NOT EXISTS queues (
    name    TEXT PRIMARY KEY,
    vclock  REAL NOT NULL DEFAULT 0,         -- virtual time of the tenant last claimed from
    aging   REAL                             -- seconds per priority level; NULL = no aging
);

CREATE TABLE IF NOT EXISTS tenants (
    queue        TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    weight       REAL NOT NULL DEFAULT 1 CHECK (weight > 0),
    max_running  INTEGER,
    vtime        REAL NOT NULL DEFAULT 0,
    ready        INTEGER NOT NULL DEFAULT 0,
    running      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, tenant)
);

CREATE TABLE IF NOT EXISTS lanes (
    queue     TEXT NOT NULL,
    priority  INTEGER NOT NULL,
    tenant    TEXT NOT NULL,
    task      TEXT NOT NULL,
    ready     INTEGER NOT NULL,
    PRIMARY KEY (queue, priority, tenant, task)
);

CREATE TABLE IF NOT EXISTS task_running (
    task     TEXT PRIMARY KEY,
    running  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS job_deps (
    parent  TEXT NOT NULL,
    child   TEXT NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS key_windows (
    key         TEXT PRIMARY KEY,
    id          TEXT NOT NULL,               -- the job that reserved the key
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS key_windows_expiry ON key_windows (expires_at);

CREATE TABLE IF NOT EXISTS rate_buckets (
    name  TEXT PRIMARY KEY,
    tat   REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS rate_reservations (
    name    TEXT NOT NULL,
    job_id  TEXT NOT NULL,
    start   REAL NOT NULL,
    PRIMARY KEY (name, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_reservations_start ON rate_reservations (start);

CREATE TABLE IF NOT EXISTS locks (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  REAL NOT NULL
);

-- ---------------------------------------------------------------------------------------
-- Counter triggers. Their WHEN clauses are disjoint per transition, so the firing order
-- of several triggers never matters.
-- ---------------------------------------------------------------------------------------

-- A job inserted ready: it joins its lane, and its tenant becomes (or stays) active. A
-- tenant that had no ready job restarts at max(its vtime, the queue's vclock), so time
-- spent idle banks no credit.
CREATE TRIGGER IF NOT EXISTS jobs_insert_queued AFTER INSERT ON jobs
WHEN NEW.state = 'queued'
BEGIN
    INSERT INTO queues (name) VALUES (NEW.queue) ON CONFLICT (name) DO NOTHING;
    INSERT INTO tenants (queue, tenant, vtime, ready)
    VALUES (NEW.queue, NEW.tenant, (SELECT vclock FROM queues WHERE name = NEW.queue), 1)
    ON CONFLICT (queue, tenant) DO UPDATE SET
        vtime = CASE WHEN ready = 0 THEN max(vtime, excluded.vtime) ELSE vtime END,
        ready = ready + 1;
    INSERT INTO lanes (queue, priority, tenant, task, ready)
    VALUES (NEW.queue, NEW.priority, NEW.tenant, NEW.task, 1)
    ON CONFLICT (queue, priority, tenant, task) DO UPDATE SET ready = ready + 1;
END;

-- queued -> running (a claim): leave the lane, count as running, and advance the fair
-- share: the queue's clock becomes the tenant's vtime, then the tenant pays 1/weight.
CREATE TRIGGER IF NOT EXISTS jobs_claimed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'queued' AND NEW.state = 'running'
BEGIN
    DELETE FROM lanes
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task AND ready <= 1;
    UPDATE lanes SET ready = ready - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task;
    UPDATE queues
    SET vclock = (SELECT vtime FROM tenants WHERE queue = NEW.queue AND tenant = NEW.tenant)
    WHERE name = NEW.queue;
    UPDATE tenants
    SET ready = ready - 1, running = running + 1, vtime = vtime + 1.0 / weight
    WHERE queue = NEW.queue AND tenant = NEW.tenant;
    INSERT INTO task_running (task, running) VALUES (NEW.task, 1)
    ON CONFLICT (task) DO UPDATE SET running = running + 1;
END;

-- queued -> scheduled/succeeded/retrying/dead/cancelled (in practice: cancel).
CREATE TRIGGER IF NOT EXISTS jobs_unqueued AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'queued' AND NEW.state NOT IN ('queued', 'running')
BEGIN
    DELETE FROM lanes
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task AND ready <= 1;
    UPDATE lanes SET ready = ready - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task;
    UPDATE tenants SET ready = ready - 1 WHERE queue = OLD.queue AND tenant = OLD.tenant;
END;

-- anything else -> queued (promotion, retry, release, reap, replay). If it was running,
-- it stops counting as running.
CREATE TRIGGER IF NOT EXISTS jobs_requeued AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'queued' AND OLD.state <> 'queued'
BEGIN
    INSERT INTO queues (name) VALUES (NEW.queue) ON CONFLICT (name) DO NOTHING;
    INSERT INTO tenants (queue, tenant, vtime, ready)
    VALUES (NEW.queue, NEW.tenant, (SELECT vclock FROM queues WHERE name = NEW.queue), 1)
    ON CONFLICT (queue, tenant) DO UPDATE SET
        vtime = CASE WHEN ready = 0 THEN max(vtime, excluded.vtime) ELSE vtime END,
        ready = ready + 1,
        running = running - (OLD.state = 'running');
    INSERT INTO lanes (queue, priority, tenant, task, ready)
    VALUES (NEW.queue, NEW.priority, NEW.tenant, NEW.task, 1)
    ON CONFLICT (queue, priority, tenant, task) DO UPDATE SET ready = ready + 1;
    UPDATE task_running SET running = running - 1
    WHERE task = OLD.task AND OLD.state = 'running';
END;

-- running -> succeeded/retrying/dead/cancelled.
CREATE TRIGGER IF NOT EXISTS jobs_finished AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state NOT IN ('queued', 'running')
BEGIN
    UPDATE tenants SET running = running - 1 WHERE queue = OLD.queue AND tenant = OLD.tenant;
    UPDATE task_running SET running = running - 1 WHERE task = OLD.task;
END;

-- queued -> queued at another priority (aging): move between lanes.
CREATE TRIGGER IF NOT EXISTS jobs_reprioritized AFTER UPDATE OF priority ON jobs
WHEN OLD.state = 'queued' AND NEW.state = 'queued' AND OLD.priority <> NEW.priority
BEGIN
    DELETE FROM lanes
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task AND ready <= 1;
    UPDATE lanes SET ready = ready - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task;
    INSERT INTO lanes (queue, priority, tenant, task, ready)
    VALUES (NEW.queue, NEW.priority, NEW.tenant, NEW.task, 1)
    ON CONFLICT (queue, priority, tenant, task) DO UPDATE SET ready = ready + 1;
END;

-- Deleting a ready or running job (purge only deletes finished ones, but stay exact).
CREATE TRIGGER IF NOT EXISTS jobs_deleted AFTER DELETE ON jobs
WHEN OLD.state IN ('queued', 'running')
BEGIN
    DELETE FROM lanes
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task AND ready <= 1 AND OLD.state = 'queued';
    UPDATE lanes SET ready = ready - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND tenant = OLD.tenant
      AND task = OLD.task AND OLD.state = 'queued';
    UPDATE tenants
    SET ready = ready - (OLD.state = 'queued'), running = running - (OLD.state = 'running')
    WHERE queue = OLD.queue AND tenant = OLD.tenant;
    UPDATE task_running SET running = running - 1
    WHERE task = OLD.task AND OLD.state = 'running';
END;

-- ---------------------------------------------------------------------------------------
-- Dependencies. A job that reaches a final state while blocked jobs wait for it settles
-- them in the same transaction, whatever path finished it (finish, reap, cancel, or this
-- very trigger cancelling a dependent in a cascade: the connection turns on
-- recursive_triggers). The parent's finished_at is the store's now of that transaction.
--   parent failed (dead/cancelled), child policy 'success' -> child cancelled with a
--     DependencyFailed error (which settles the child's own dependents in turn)
--   otherwise -> child's pending count drops; at 0 the child is queued (or scheduled
--     when its own due time is still ahead)
-- A job without dependents (dependents = 0) never runs this trigger.
-- ---------------------------------------------------------------------------------------
CREATE TRIGGER IF NOT EXISTS jobs_settle_dependents AFTER UPDATE OF state ON jobs
WHEN OLD.dependents > 0
     AND NEW.state IN ('succeeded', 'dead', 'cancelled')
     AND OLD.state NOT IN ('succeeded', 'dead', 'cancelled')
BEGIN
    UPDATE jobs
    SET state = 'cancelled',
        finished_at = NEW.finished_at,
        expires_at = NEW.finished_at + result_ttl,
        errors_json = json_insert(errors_json, '$[#]', json_object(
            'attempt', attempt, 'type', 'DependencyFailed',
            'message', 'dependency ' || NEW.id || ' (' || NEW.task || ') ended ' || NEW.state,
            'traceback', NULL, 'at', NEW.finished_at))
    WHERE NEW.state <> 'succeeded' AND state = 'blocked' AND after_policy = 'success'
      AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id);
    UPDATE jobs SET pending = pending - 1
    WHERE state = 'blocked' AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id);
    UPDATE jobs
    SET state = CASE WHEN run_at > NEW.finished_at THEN 'scheduled' ELSE 'queued' END,
        ready_at = CASE WHEN run_at > NEW.finished_at THEN NULL ELSE NEW.finished_at END,
        priority = base_priority,
        age_at = CASE WHEN (run_at IS NULL OR run_at <= NEW.finished_at) AND base_priority > 0
                      THEN NEW.finished_at + (SELECT aging FROM queues WHERE name = jobs.queue)
                 END
    WHERE state = 'blocked' AND pending <= 0
      AND id IN (SELECT child FROM job_deps WHERE parent = NEW.id);
    DELETE FROM job_deps WHERE parent = NEW.id;
END;

-- ---------------------------------------------------------------------------------------
-- The outbox. A job that becomes cancelled from any state but running was cancelled by
-- the store itself (cancel of a job no worker holds, or the dependency cascade above,
-- recursive included): no worker will report it, so the same transaction records the
-- announcement it owes. running -> cancelled is left out, so nothing is announced
-- twice: a live worker announces its own cancels (and a retry or release the store
-- turned into cancelled, worker/loop.py), and the reaper, which cancels the running
-- job of a lost worker, records that one itself (admin.sql record_cancelled). Drained
-- by take_events/ack_events (admin.sql); purge drops entries older than the retention.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY,   -- rowid: insertion order
    event   TEXT NOT NULL,         -- 'job.cancelled'
    job_id  TEXT NOT NULL,
    recorded_at  REAL NOT NULL     -- store time it was recorded (retention)
);

CREATE TRIGGER IF NOT EXISTS jobs_outbox_cancelled AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'cancelled' AND OLD.state NOT IN ('running', 'cancelled')
BEGIN
    INSERT INTO outbox (event, job_id, recorded_at)
    VALUES ('job.cancelled', NEW.id, coalesce(NEW.finished_at, NEW.enqueued_at));
END;

-- Small JSON documents that are not jobs (API tokens, ...): see records.sql.
CREATE TABLE IF NOT EXISTS records (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;

PRAGMA user_version = 4;
