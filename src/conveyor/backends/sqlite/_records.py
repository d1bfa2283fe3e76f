"""Rows to records: the column orders used by ``admin.sql`` and ``worker.sql``."""

from __future__ import annotations

from typing import Any

from conveyor.backends.base import ClaimedJob, QueueStats, decode_tenant
from conveyor.job import Job, JobError, JobState, from_timestamp
from conveyor.serialize import loads, loads_for_display


def job_from_row(row: tuple[Any, ...]) -> Job:
    """A ``Job`` from a ``get_job`` / ``query_jobs`` row."""
    (
        id_,
        task,
        state,
        queue,
        tenant,
        priority,
        args_json,
        kwargs_json,
        attempt,
        max_attempts,
        enqueued_at,
        run_at,
        started_at,
        finished_at,
        expires_at,
        lease_expires_at,
        worker,
        progress,
        progress_message,
        result_json,
        errors_json,
        key,
        timeout,
        cancel_requested,
    ) = row
    enqueued = from_timestamp(enqueued_at)
    assert enqueued is not None  # NOT NULL column
    return Job(
        id=id_,
        task=task,
        state=JobState(state),
        queue=queue,
        tenant=decode_tenant(tenant),
        priority=priority,
        args=loads_for_display(args_json),
        kwargs=loads_for_display(kwargs_json),
        attempt=attempt,
        max_attempts=max_attempts,
        enqueued_at=enqueued,
        run_at=from_timestamp(run_at),
        started_at=from_timestamp(started_at),
        finished_at=from_timestamp(finished_at),
        expires_at=from_timestamp(expires_at),
        lease_expires_at=from_timestamp(lease_expires_at),
        worker=worker,
        progress=progress,
        progress_message=progress_message,
        result=loads_for_display(result_json),
        errors=tuple(JobError.from_json(e) for e in loads(errors_json) or ()),
        key=key,
        timeout=timeout,
        cancel_requested=bool(cancel_requested),
    )


def claimed_from_row(row: tuple[Any, ...], token: str) -> ClaimedJob:
    """A ``ClaimedJob`` from a ``claim_one`` RETURNING row."""
    (
        id_,
        task,
        queue,
        tenant,
        priority,
        args_json,
        kwargs_json,
        attempt,
        max_attempts,
        timeout,
        lease_expires_at,
        enqueued_at,
    ) = row
    return ClaimedJob(
        id=id_,
        task=task,
        queue=queue,
        tenant=tenant or None,
        priority=priority,
        args_json=args_json,
        kwargs_json=kwargs_json,
        attempt=attempt,
        max_attempts=max_attempts,
        timeout=timeout,
        lease_token=token,
        lease_expires_at=lease_expires_at,
        enqueued_at=enqueued_at,
    )


def build_stats(
    counts: list[tuple[Any, ...]], settings: list[tuple[Any, ...]], now: float
) -> list[QueueStats]:
    """One ``QueueStats`` per (queue, tenant) that has a job or a non-default setting.

    ``counts`` are ``job_counts`` rows, ``settings`` are ``tenant_settings`` rows (the
    triggers create a default row for every tenant that ever had a ready job, so a row
    alone does not make a tenant worth listing).
    """
    configured = {(q, t): (float(w), m) for q, t, w, m in settings}
    out: dict[tuple[str, str], QueueStats] = {}
    for queue, tenant, sch, que, run, ret, dead, ok, can, oldest, blocked in counts:
        weight, max_running = configured.get((queue, tenant), (1.0, None))
        out[(queue, tenant)] = QueueStats(
            queue=queue,
            tenant=decode_tenant(tenant),
            scheduled=sch,
            queued=que,
            running=run,
            retrying=ret,
            dead=dead,
            succeeded=ok,
            cancelled=can,
            oldest_wait=None if oldest is None else max(0.0, now - oldest),
            weight=weight,
            max_running=max_running,
            blocked=blocked,
        )
    for (queue, tenant), (weight, max_running) in configured.items():
        if (queue, tenant) in out or (weight == 1.0 and max_running is None):
            continue
        out[(queue, tenant)] = QueueStats(
            queue=queue,
            tenant=decode_tenant(tenant),
            scheduled=0,
            queued=0,
            running=0,
            retrying=0,
            dead=0,
            succeeded=0,
            cancelled=0,
            oldest_wait=None,
            weight=weight,
            max_running=max_running,
        )
    return [out[k] for k in sorted(out)]
