"""Batches: many jobs in parallel, then one merge job (``app.map`` / ``app.group``).

A batch is plain jobs plus dependencies: the merge job is enqueued with
``after=[every job of the batch]`` and a placeholder for their results, all in one
atomic ``enqueue_many``. So the store itself runs the merge exactly once, after the
last job finished, and hands it the results in input order; no process has to stay up
to watch the batch. The batch's id is the merge job's id: ``app.batch(id)`` finds the
batch again from the merge job alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError, JobFailed, JobNotFound
from conveyor.handle import JobHandle
from conveyor.job import Job, JobState, new_job_id
from conveyor.task import BoundTask, Signature, Task
from conveyor.workflow import is_marker, results_marker

if TYPE_CHECKING:
    from conveyor.app import App

_POLL_START = 0.005
_POLL_MAX = 0.2
#: Options of ``map`` that also apply to the merge job (the others are the chunks' own).
_SHARED_WITH_MERGE = ("tenant", "priority")


class BatchFailed(ConveyorError):
    """A batch without ``allow_failures`` had jobs that ended dead or cancelled, so its
    merge job did not run. ``failures`` holds those jobs (with their errors)."""

    def __init__(self, batch_id: str, failures: Sequence[Job]) -> None:
        self.batch_id = batch_id
        self.failures = list(failures)
        shown = "; ".join(
            f"{j.id} {j.state.value}" + (f": {j.error.type}: {j.error.message}" if j.error else "")
            for j in self.failures[:3]
        )
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        super().__init__(f"batch {batch_id}: {len(self.failures)} job(s) failed: {shown}{more}")


@dataclass(frozen=True, slots=True)
class BatchProgress:
    total: int  #: jobs in the batch (chunks; the merge job is not counted)
    done: int  #: of those, finished in any way
    succeeded: int
    failed: int  #: ended dead or cancelled
    merge_state: JobState | None  #: None when the batch has no merge job

    @property
    def finished(self) -> bool:
        """Every job, and the merge job if any, reached a final state."""
        merged = self.merge_state is None or self.merge_state.is_final
        return self.done == self.total and merged


class Batch:
    """A handle on a batch: its jobs, its merge job, progress, ``wait()``."""

    def __init__(
        self,
        app: App,
        jobs: Sequence[JobHandle],
        merge: JobHandle | None,
        *,
        allow_failures: bool = False,
    ) -> None:
        self.app = app
        self.jobs = list(jobs)
        self.merge = merge
        self.allow_failures = allow_failures

    @property
    def id(self) -> str:
        """The merge job's id (``app.batch(id)`` finds the batch again), else the first
        job's id."""
        return self.merge.id if self.merge is not None else self.jobs[0].id

    def __repr__(self) -> str:
        return f"<Batch {self.id} jobs={len(self.jobs)}>"

    def progress(self) -> BatchProgress:
        return self.app._portal.call(self.progress_async())

    async def progress_async(self) -> BatchProgress:
        jobs, merge = await self._snapshot()
        return _progress(jobs, merge)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the batch finished; return the merge job's result (without a merge
        job: the list of the jobs' results, in input order).

        Raises ``BatchFailed`` when jobs failed and the batch does not allow failures,
        ``JobFailed`` when the merge job itself failed, ``TimeoutError`` on timeout.
        """
        return self.app._portal.call(self.wait_async(timeout))

    async def wait_async(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_START
        while True:
            jobs, merge = await self._snapshot()
            if _progress(jobs, merge).finished:
                return self._outcome(jobs, merge)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"batch {self.id} not finished after {timeout} s")
                pause = min(pause, left)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def _outcome(self, jobs: list[Job], merge: Job | None) -> Any:
        failures = [j for j in jobs if j.state is not JobState.SUCCEEDED]
        if failures and not self.allow_failures:
            raise BatchFailed(self.id, failures)
        if merge is None:
            return [j.result if j.state is JobState.SUCCEEDED else None for j in jobs]
        if merge.state is not JobState.SUCCEEDED:
            raise JobFailed(merge)
        return merge.result

    async def _snapshot(self) -> tuple[list[Job], Job | None]:
        backend = await self.app.backend()
        handles = [*self.jobs, *([self.merge] if self.merge is not None else [])]
        found = await backend.get_many([h.id for h in handles])
        for handle, job in zip(handles, found, strict=True):
            if job is None:
                raise JobNotFound(handle.id)
        jobs = [j for j in found[: len(self.jobs)] if j is not None]
        merge = found[-1] if self.merge is not None else None
        return jobs, merge


def _progress(jobs: Sequence[Job], merge: Job | None) -> BatchProgress:
    succeeded = sum(j.state is JobState.SUCCEEDED for j in jobs)
    failed = sum(j.state in (JobState.DEAD, JobState.CANCELLED) for j in jobs)
    return BatchProgress(
        total=len(jobs),
        done=succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        merge_state=None if merge is None else merge.state,
    )


def as_signature(call: Any, what: str) -> Signature:
    """A task, bound task, signature or task name as a signature with no arguments yet."""
    if isinstance(call, Signature):
        return call
    if isinstance(call, (Task, BoundTask)):
        return call.s()
    if isinstance(call, str) and call:
        return Signature(call)
    raise TypeError(f"{what} takes a task, task.s(...) or a task name, not {call!r}")


def chunk_signatures(
    task: Any, items: Iterable[Any], chunk_size: int, options: dict[str, Any]
) -> list[Signature]:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if isinstance(items, (str, bytes)):
        raise TypeError("items must be a list or other iterable of items, not a string")
    values = list(items)
    if not values:
        raise ValueError("map() needs at least one item")
    base = as_signature(task, "map()")
    if base.args or base.kwargs:
        raise ValueError(
            "map() calls the task with each chunk only: pass the task, not task.s(...)"
        )
    opts = base.options.merged(**options) if options else base.options
    return [
        replace(base, args=(values[i : i + chunk_size],), options=opts)
        for i in range(0, len(values), chunk_size)
    ]


def plan(
    calls: Sequence[Signature], then: Any, allow_failures: bool, options: dict[str, Any]
) -> tuple[list[Signature], bool]:
    """Give every call an id, and add the merge job after them; returns (all
    signatures, whether the last one is the merge job)."""
    if not calls:
        raise ValueError("a batch needs at least one job")
    planned = [replace(c, job_id=c.job_id or new_job_id()) for c in calls]
    if then is None:
        return planned, False
    merge = as_signature(then, "then=")
    ids = [c.job_id for c in planned if c.job_id is not None]
    shared = {k: v for k, v in options.items() if k in _SHARED_WITH_MERGE}
    merge_options = merge.options.merged(
        **shared,
        after=ids,
        after_policy="always" if allow_failures else "success",
    )
    inputs = results_marker(ids, single=False, errors=allow_failures)
    planned.append(replace(merge, options=merge_options, inputs=inputs, job_id=new_job_id()))
    return planned, True


def batch_from(app: App, handles: list[JobHandle], has_merge: bool, allow: bool) -> Batch:
    if has_merge:
        return Batch(app, handles[:-1], handles[-1], allow_failures=allow)
    return Batch(app, handles, None, allow_failures=allow)


async def find_batch(app: App, batch_id: str) -> Batch:
    """The batch whose merge job is ``batch_id``."""
    backend = await app.backend()
    merge = await backend.get(batch_id)
    if merge is None:
        raise JobNotFound(batch_id)
    marker = merge.args[0] if isinstance(merge.args, list) and merge.args else None
    if not isinstance(marker, dict) or not is_marker(marker) or marker.get("single"):
        raise ValueError(f"job {batch_id} is not the merge job of a batch")
    jobs = [JobHandle(app, str(i)) for i in marker.get("of", [])]
    return Batch(app, jobs, JobHandle(app, batch_id), allow_failures=bool(marker.get("errors")))
