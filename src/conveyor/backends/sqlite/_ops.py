"""Transaction bodies for maintenance and operator primitives.

Each function runs inside the one transaction ``SQLiteBackend`` opened for the primitive,
on the connection's own thread, and gets the primitive's ``now`` from it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from conveyor.backends.base import (
    EXTERNAL_TIMEOUT,
    EXTERNAL_TIMEOUT_MESSAGE,
    OUTBOX_RETENTION,
    ExternalReply,
    QueueStats,
    RetryDelay,
    StoreEvent,
    external_refusal,
    job_error_json,
)
from conveyor.backends.sqlite._records import build_stats, job_from_row
from conveyor.backends.sqlite._sql import Queries
from conveyor.errors import InvalidTransition
from conveyor.job import Job, JobState

#: Aging moves a job one level per pass; 10 passes cover priorities 9 -> 0.
_MAX_AGING_PASSES = 10
_WAITING = frozenset(
    {JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING, JobState.BLOCKED, JobState.WAITING}
)
_REPLAYABLE = frozenset({JobState.DEAD, JobState.CANCELLED})
WORKER_LOST = "worker lost (lease expired)"


def promote(conn: sqlite3.Connection, now: float, q: Queries, limit: int) -> int:
    """Due jobs -> queued (at most ``limit``, -1 for all), then aging; rows changed."""
    changed: int = conn.execute(q.promote_due, {"now": now, "limit": limit}).rowcount
    for _ in range(_MAX_AGING_PASSES):
        aged: int = conn.execute(q.age_ready, {"now": now}).rowcount
        changed += aged
        if not aged:
            break
    return changed


def reap(conn: sqlite3.Connection, now: float, q: Queries) -> tuple[int, list[str]]:
    """Reaps expired leases; returns how many, and the ids of those now dead."""
    expired = conn.execute(q.expired_leases, {"now": now}).fetchall()
    if not expired:
        return 0, []
    params = [
        {
            "id": job_id,
            "token": token,
            "now": now,
            "error": job_error_json(attempt, "WorkerLost", WORKER_LOST, now),
        }
        for job_id, token, attempt, _, _ in expired
    ]
    reaped: int = conn.executemany(q.reap_one, params).rowcount
    # Same transaction as the read, so every row read was reaped as predicted: those
    # with a cancel request are now cancelled, and owe their announcement (outbox).
    cancelled = [{"id": job_id, "now": now} for job_id, _, _, _, cancel in expired if cancel]
    if cancelled:
        conn.executemany(q.record_cancelled, cancelled)
    return reaped, [str(job_id) for job_id, _, _, dies, _ in expired if dies]


def expire_waiting(
    conn: sqlite3.Connection, now: float, q: Queries, delay: RetryDelay | None
) -> list[tuple[str, JobState]]:
    out = []
    for job_id, attempt, task in conn.execute(q.expired_waits, {"now": now}).fetchall():
        error = job_error_json(attempt, EXTERNAL_TIMEOUT, EXTERNAL_TIMEOUT_MESSAGE, now)
        # The delay is chosen inside the write transaction, so it is applied to the very
        # attempt it was computed for.
        wait = delay(str(task), int(attempt)) if delay is not None else 0.0
        params = {"id": job_id, "now": now, "error": error, "delay": wait}
        row = conn.execute(q.expire_wait, params).fetchone()
        if row is not None:
            out.append((str(job_id), JobState(row[0])))
    return out


def refusal(
    conn: sqlite3.Connection, now: float, q: Queries, job_id: str, token: str
) -> ExternalReply:
    """Why a completion did not apply (read in the same transaction)."""
    row = conn.execute(q.wait_status, {"id": job_id}).fetchone()
    if row is None or row[1] is None or row[1] != token:
        return ExternalReply.UNKNOWN
    return external_refusal(row[0], row[2], row[3], now)


def purge(conn: sqlite3.Connection, now: float, q: Queries, limit: int) -> int:
    """Deletes up to ``limit`` expired jobs; after the last chunk, idle tenant rows."""
    deleted: int = conn.execute(q.purge_expired, {"now": now, "limit": limit}).rowcount
    if deleted < limit:
        conn.execute(q.prune_tenants)
        conn.execute(q.purge_key_windows, {"now": now})
        conn.execute(q.purge_outbox, {"before": now - OUTBOX_RETENTION})
    return deleted


def take_events(conn: sqlite3.Connection, now: float, q: Queries, limit: int) -> list[StoreEvent]:
    rows = conn.execute(q.take_events, {"limit": max(0, limit)}).fetchall()
    return [StoreEvent(ref=str(seq), name=name, job_id=job_id) for seq, name, job_id in rows]


def ack_events(conn: sqlite3.Connection, now: float, q: Queries, refs: Sequence[str]) -> None:
    conn.executemany(q.ack_event, [{"seq": int(ref)} for ref in refs if ref.isdigit()])


def try_lock(
    conn: sqlite3.Connection, now: float, q: Queries, name: str, owner: str, ttl: float
) -> bool:
    params = {"name": name, "owner": owner, "now": now, "expires": now + ttl}
    return bool(conn.execute(q.try_lock, params).fetchall())


def unlock(conn: sqlite3.Connection, now: float, q: Queries, name: str, owner: str) -> None:
    conn.execute(q.unlock, {"name": name, "owner": owner})


def get(conn: sqlite3.Connection, now: float, q: Queries, job_id: str) -> Job | None:
    row = conn.execute(q.get_job, {"id": job_id}).fetchone()
    return None if row is None else job_from_row(row)


def query(
    conn: sqlite3.Connection, now: float, q: Queries, params: Mapping[str, object]
) -> list[Job]:
    sql = q.query_jobs if params["state"] is None else q.query_jobs_in_state
    return [job_from_row(row) for row in conn.execute(sql, params)]


def cancel(conn: sqlite3.Connection, now: float, q: Queries, job_id: str) -> JobState | None:
    row = conn.execute(q.job_state, {"id": job_id}).fetchone()
    if row is None:
        return None
    state = JobState(row[0])
    if state in _WAITING:
        conn.execute(q.cancel_waiting, {"id": job_id, "now": now})
        return JobState.CANCELLED
    if state is JobState.RUNNING:
        conn.execute(q.request_cancel, {"id": job_id})
    return state


def replay(conn: sqlite3.Connection, now: float, q: Queries, job_id: str) -> bool:
    row = conn.execute(q.job_state, {"id": job_id}).fetchone()
    if row is None or JobState(row[0]) not in _REPLAYABLE:
        return False
    key = row[1]
    if key is not None:
        other = conn.execute(q.other_active_with_key, {"key": key, "id": job_id}).fetchone()
        if other is not None:
            raise InvalidTransition(
                f"cannot replay job {job_id}: its dedup key {key!r} is held by active job "
                f"{other[0]}; wait for that job to finish or cancel it first"
            )
    conn.execute(q.replay, {"id": job_id, "now": now})
    return True


def apply_settings(
    conn: sqlite3.Connection, now: float, statements: tuple[str, ...], params: Mapping[str, object]
) -> None:
    for sql in statements:
        conn.execute(sql, params)


def stats(conn: sqlite3.Connection, now: float, q: Queries) -> list[QueueStats]:
    counts = conn.execute(q.job_counts).fetchall()
    settings = conn.execute(q.tenant_settings).fetchall()
    return build_stats(counts, settings, now)
