"""Exceptions raised by Conveyor, and the ones task code raises to steer retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.job import Job


class ConveyorError(Exception):
    """Base class for Conveyor's own errors."""


class JobFailed(ConveyorError):
    """`JobHandle.wait()` found the job `dead` or `cancelled` instead of `succeeded`."""

    def __init__(self, job: Job) -> None:
        self.job = job
        last = job.errors[-1] if job.errors else None
        reason = f": {last.type}: {last.message}" if last else ""
        super().__init__(f"job {job.id} ({job.task}) ended {job.state.value}{reason}")


class JobNotFound(ConveyorError, LookupError):
    """No job with this id exists (never did, or it expired after its result TTL)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class InvalidTransition(ConveyorError):
    """The job is not in a state that allows this operation (e.g. replaying a running job)."""


class BackendUnavailable(ConveyorError):
    """The storage engine for a URL scheme is not available in this installation."""
