"""Enqueue of jobs with dependencies (``after=``) or a dedup window (``unique_for=``).

Runs inside the enqueue's one transaction, job by job (the plain enqueue inserts a
whole batch with one ``executemany``; only batches that use these options come here).
A dependency named by a job is either finished already, and settled here at once, or
gets an edge in ``job_deps`` and is settled later by the ``jobs_settle_dependents``
trigger when it finishes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from conveyor.backends.base import (
    DEPENDENCY_FAILED,
    DependencyNotFound,
    Lease,
    NewJob,
    RateBucket,
    dependency_failed_message,
    job_error_json,
)
from conveyor.backends.sqlite._sql import Queries

Row = Callable[[NewJob, float, bool], tuple[Any, ...]]


def enqueue(
    conn: sqlite3.Connection, now: float, q: Queries, jobs: Sequence[NewJob], row: Row
) -> list[str]:
    ids: list[str] = []
    for job in jobs:
        windowed = job.key is not None and job.unique_for is not None
        if windowed:
            held = conn.execute(q.key_window_holder, {"key": job.key, "now": now}).fetchone()
            if held is not None:
                ids.append(held[0])
                continue
        if conn.execute(q.insert_job, row(job, now, bool(job.after))).rowcount == 0:
            holder = conn.execute(q.active_job_by_key, {"key": job.key}).fetchone()
            ids.append(holder[0] if holder else job.id)
            continue
        if windowed:
            params = {"key": job.key, "id": job.id, "expires": now + (job.unique_for or 0.0)}
            conn.execute(q.reserve_key_window, params)
        if job.after:
            _link(conn, now, q, job)
        ids.append(job.id)
    return ids


def _link(conn: sqlite3.Connection, now: float, q: Queries, job: NewJob) -> None:
    """Record the inserted (blocked) job's dependencies, or settle it at once."""
    pending = 0
    failed: tuple[str, str, str] | None = None
    for parent in job.after:
        found = conn.execute(q.dependency_state, {"id": parent}).fetchone()
        if found is None:
            raise DependencyNotFound(parent)
        state, task = found
        if state == "succeeded":
            continue
        if state in ("dead", "cancelled"):
            if job.after_policy != "always" and failed is None:
                failed = (parent, task, state)
            continue
        if conn.execute(q.insert_dependency, {"parent": parent, "child": job.id}).fetchall():
            conn.execute(q.add_dependent, {"parent": parent})
            pending += 1
    params: dict[str, Any] = {"id": job.id, "now": now, "policy": job.after_policy}
    if failed is not None:
        message = dependency_failed_message(*failed)
        params["error"] = job_error_json(0, DEPENDENCY_FAILED, message, now)
        conn.execute(q.cancel_blocked, params)
    elif pending == 0:
        conn.execute(q.release_blocked, params)
    else:
        conn.execute(q.set_pending, {**params, "pending": pending})


#: Reservations older than this belong to jobs that never came back for their slot.
RESERVATION_MAX_AGE = 86400.0


def take_rate(
    conn: sqlite3.Connection, now: float, q: Queries, lease: Lease, buckets: Sequence[RateBucket]
) -> float:
    """``Backend.take_rate`` inside one transaction (see its contract)."""
    fenced = {"id": lease.id, "token": lease.token}
    if conn.execute(q.holds_lease, fenced).fetchone() is None:
        return 0.0
    start = now
    fresh: list[tuple[RateBucket, float]] = []  # buckets this job pays now: new tat
    for bucket in buckets:
        if conn.execute(q.take_reservation, {"name": bucket.name, "id": lease.id}).fetchall():
            continue  # paid when the job was deferred
        row = conn.execute(q.rate_tat, {"name": bucket.name}).fetchone()
        tat = max(now, row[0]) if row else now
        new_tat = tat + bucket.period / bucket.limit
        fresh.append((bucket, new_tat))
        start = max(start, new_tat - bucket.period)
    for bucket, new_tat in fresh:
        conn.execute(q.set_rate_tat, {"name": bucket.name, "tat": new_tat})
    if start <= now:
        return 0.0
    for bucket in buckets:  # every slot stays reserved until the job comes back
        conn.execute(q.reserve_rate, {"name": bucket.name, "id": lease.id, "start": start})
    conn.execute(q.forget_old_reservations, {"before": now - RESERVATION_MAX_AGE})
    row = conn.execute(q.defer_running, {**fenced, "start": start, "now": now}).fetchone()
    if row is not None and row[0] == "cancelled":
        # A cancel was pending: the job ends here, with no outcome for its worker to
        # announce (and the outbox trigger leaves running -> cancelled out).
        conn.execute(q.record_cancelled, {"id": lease.id, "now": now})
    return start - now
