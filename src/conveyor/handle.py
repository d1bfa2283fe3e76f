"""JobHandle: what ``enqueue`` returns; a job id plus ways to look at the job."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from conveyor.errors import JobFailed, JobNotFound
from conveyor.job import Job, JobState

if TYPE_CHECKING:
    from conveyor.app import App

_POLL_START = 0.002
_POLL_MAX = 0.1


class JobHandle:
    def __init__(self, app: App, job_id: str) -> None:
        self.app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> Job:
        """The job as stored now. Raises ``JobNotFound`` if it does not exist (any more)."""
        return self.app._portal.call(self.info_async())

    async def info_async(self) -> Job:
        backend = await self.app.backend()
        job = await backend.get(self.id)
        if job is None:
            raise JobNotFound(self.id)
        return job

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return its result.

        Raises ``JobFailed`` if it ends ``dead`` or ``cancelled``, ``TimeoutError`` if it
        has not finished within ``timeout`` seconds (None waits for ever).
        """
        return self.app._portal.call(self.wait_async(timeout))

    async def wait_async(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_START
        while True:
            job = await self.info_async()
            if job.state is JobState.SUCCEEDED:
                return job.result
            if job.state in (JobState.DEAD, JobState.CANCELLED):
                raise JobFailed(job)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {self.id} still {job.state.value} after {timeout} s")
                pause = min(pause, left)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def cancel(self) -> JobState | None:
        return self.app.cancel(self.id)

    def replay(self) -> bool:
        return self.app.replay(self.id)
