"""The job the Redis-only tests enqueue: a no-op of one attempt in the default queue."""

from __future__ import annotations

from conveyor.backends.base import NewJob
from conveyor.job import new_job_id


def job(tenant: str | None = None, task: str = "t.a", priority: int = 5) -> NewJob:
    return NewJob(
        id=new_job_id(),
        task=task,
        queue="default",
        tenant=tenant,
        priority=priority,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=1,
    )
