"""What the maintenance loop announces: jobs it changed itself (the reaper sending a
job to dead, waiting jobs timing out) and jobs the store cancelled on its own (the
outbox: ``cancel`` of a job no worker held, dependents cancelled because a dependency
failed, a failed batch's merge job), read back from the store by id, since no worker
recorded an outcome for them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor import notify
from conveyor.backends.base import JOB_CANCELLED, Backend, StoreEvent
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
    worker.counts.timed_out(expired)
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


#: Outbox entries read per round trip, and at most this many round trips per
#: maintenance pass, so that a backlog never holds up the reaper and the promoter.
OUTBOX_BATCH = 200
OUTBOX_ROUNDS = 5


async def drain_outbox(worker: Worker, backend: Backend) -> None:
    """Announce what the store recorded in its outbox, then delete it (at-least-once:
    a worker that dies in between leaves the entries to the next maintenance pass)."""
    for _ in range(OUTBOX_ROUNDS):
        taken = await worker._call("take events", lambda: backend.take_events(OUTBOX_BATCH))
        if not taken:
            return
        if not await _announce_store_events(worker, backend, taken):
            return  # the jobs could not be read: keep the entries for the next pass
        refs = [event.ref for event in taken]
        if not await worker._call("ack events", functools.partial(_ack, backend, refs)):
            return  # a store error: the next pass announces these again
        if len(taken) < OUTBOX_BATCH:
            return


async def _ack(backend: Backend, refs: list[str]) -> bool:
    await backend.ack_events(refs)
    return True


async def _announce_store_events(
    worker: Worker, backend: Backend, taken: Sequence[StoreEvent]
) -> bool:
    """Publish the events of ``taken``; False (nothing published) when a read failed."""
    ids = list(dict.fromkeys(event.job_id for event in taken))
    jobs = await worker._call("read announced jobs", lambda: backend.get_many(ids))
    if jobs is None:
        return False
    found = {job.id: job for job in jobs if job is not None}
    events: list[notify.Event] = []
    for stored in taken:
        job = found.get(stored.job_id)
        if job is None:  # purged meanwhile: nothing left to describe
            continue
        event = notify.job_event(stored.name, job)
        if event is None:
            continue
        events.append(event)
        chunk_ids = notify.batch_chunks(job) if stored.name == JOB_CANCELLED else None
        if chunk_ids is not None:
            read = functools.partial(backend.get_many, chunk_ids)
            chunks = await worker._call("read batch jobs", read)
            if chunks is None:
                return False
            batch = notify.batch_cancelled_event(job, chunks)
            if batch is not None:
                events.append(batch)
    await worker.app.notifier.publish(backend, events)
    return True
