"""What the maintenance loop announces: jobs it changed itself (the reaper sending a
job to dead, waiting jobs timing out), read back from the store by id, since no worker
recorded an outcome for them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor import notify
from conveyor.backends.base import Backend
from conveyor.job import JobState
from conveyor.retry import Backoff

if TYPE_CHECKING:
    from conveyor.worker.loop import Worker

log = logging.getLogger("conveyor.worker")


async def expire_waiting(worker: Worker, backend: Backend) -> None:
    """Waiting jobs past their deadline time out; announce ``job.timeout`` (and
    ``job.dead`` for those out of attempts)."""
    tasks = worker.app.tasks

    def delay(task_name: str, attempt: int) -> float:
        # The task's retry policy, as for a failed attempt; the default one for a task
        # this app does not know.
        task = tasks.get(task_name)
        return (task.backoff if task is not None else Backoff()).delay(attempt)

    expired = await worker._call("expire waiting", lambda: backend.expire_waiting(delay))
    if not expired:
        return
    log.warning("%d waiting job(s) timed out (no external completion)", len(expired))
    worker._wake.set()
    named = [("job.timeout", job_id) for job_id, _ in expired]
    named += [("job.dead", job_id) for job_id, state in expired if state is JobState.DEAD]
    await announce(worker, backend, named)


async def announce(worker: Worker, backend: Backend, named: Sequence[tuple[str, str]]) -> None:
    """Announce ``(event, job id)`` pairs to listeners and webhooks; never raises."""
    if not named:
        return
    ids = list(dict.fromkeys(job_id for _, job_id in named))
    jobs = await worker._call("read announced jobs", lambda: backend.get_many(ids))
    found = {job.id: job for job in jobs or [] if job is not None}
    events = [notify.job_event(name, found[job_id]) for name, job_id in named if job_id in found]
    await worker.app.notifier.publish(backend, [e for e in events if e is not None])
