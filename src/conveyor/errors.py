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


class CompletionRefused(ConveyorError):
    """``complete_external``/``fail_external`` did not apply.

    ``reason``: ``"unknown"`` (no such job, or the token is not its completion token),
    ``"late"`` (its deadline passed: the job timed out) or ``"closed"`` (the job is no
    longer waiting: already completed, or cancelled).
    """

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        text = {
            "unknown": "no waiting job with this id and completion token",
            "late": "its deadline passed: the job timed out and no longer takes this completion",
            "closed": "it is no longer waiting (already completed or cancelled)",
        }.get(reason, reason)
        super().__init__(f"completion of job {job_id} refused: {text}")
