"""The HTTP API's request and response bodies (they make the OpenAPI schema precise)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from conveyor.backends.base import QueueStats
from conveyor.job import Job, JobError, JobState

Name = Annotated[str, Field(min_length=1, max_length=200)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Priority = Annotated[StrictInt, Field(ge=0, le=9, description="0 (most urgent) to 9")]
MAX_BATCH = 1000
LOW_PRIORITY = 9


class JobSubmit(BaseModel):
    """One job to enqueue, by task name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "media.resize",
                    "args": ["img-1"],
                    "kwargs": {"width": 640},
                    "tenant": "org-7",
                    "priority": 3,
                }
            ]
        },
    )

    task: Name
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON)")
    tenant: Name | None = Field(
        default=None, description="Defaults to the token's tenant; admins may name any"
    )
    queue: Name | None = None
    priority: Priority | None = None
    low_priority: StrictBool = Field(default=False, description="Shorthand for priority 9")
    delay: Seconds | None = Field(default=None, description="Seconds before the job is due")
    key: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Dedup key: no second active job with the same key"
    )
    max_attempts: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @field_validator("low_priority")
    @classmethod
    def _one_priority(cls, low: bool, info: ValidationInfo) -> bool:
        priority = info.data.get("priority")
        if low and priority is not None and priority != LOW_PRIORITY:
            raise ValueError("give priority or low_priority, not both")
        return low

    def options(self) -> dict[str, Any]:
        """The ``App.enqueue`` options this body asks for."""
        priority = LOW_PRIORITY if self.low_priority else self.priority
        given = {
            "tenant": self.tenant,
            "queue": self.queue,
            "priority": priority,
            "delay": self.delay,
            "key": self.key,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
        }
        return {k: v for k, v in given.items() if v is not None}


class BatchSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSubmit] = Field(min_length=1, max_length=MAX_BATCH)


class BatchOut(BaseModel):
    ids: list[str] = Field(description="New job ids, in the order submitted")


class ErrorOut(BaseModel):
    attempt: int
    type: str
    message: str
    traceback: str | None
    at: datetime | None

    @classmethod
    def of(cls, err: JobError) -> ErrorOut:
        return cls(
            attempt=err.attempt,
            type=err.type,
            message=err.message,
            traceback=err.traceback,
            at=err.at,
        )


class JobOut(BaseModel):
    id: str
    task: str
    state: JobState
    queue: str
    tenant: str | None
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    lease_expires_at: datetime | None
    worker: str | None
    progress: float | None
    progress_message: str | None
    result: Any
    errors: list[ErrorOut]
    key: str | None
    timeout: float | None
    cancel_requested: bool

    @classmethod
    def of(cls, job: Job) -> JobOut:
        # A record written around the API may hold non-list args: show it as it is.
        args = job.args if isinstance(job.args, list) else [job.args]
        kwargs = job.kwargs if isinstance(job.kwargs, dict) else {"_": job.kwargs}
        return cls(
            id=job.id,
            task=job.task,
            state=job.state,
            queue=job.queue,
            tenant=job.tenant,
            priority=job.priority,
            args=args,
            kwargs=kwargs,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            enqueued_at=job.enqueued_at,
            run_at=job.run_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=job.expires_at,
            lease_expires_at=job.lease_expires_at,
            worker=job.worker,
            progress=job.progress,
            progress_message=job.progress_message,
            result=job.result,
            errors=[ErrorOut.of(e) for e in job.errors],
            key=job.key,
            timeout=job.timeout,
            cancel_requested=job.cancel_requested,
        )


class JobList(BaseModel):
    jobs: list[JobOut]


class CancelOut(BaseModel):
    id: str
    state: JobState = Field(
        description="cancelled; or running when the worker was asked to stop it"
    )


class ReplayFilter(BaseModel):
    """Which dead jobs to replay (every filter given must match)."""

    model_config = ConfigDict(extra="forbid")

    queue: Name | None = None
    tenant: Name | None = None
    task: Name | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_BATCH)] = 100


class ReplayOut(BaseModel):
    replayed: list[str]


class QueueStatsOut(BaseModel):
    queue: str
    tenant: str | None
    scheduled: int
    queued: int
    running: int
    retrying: int
    dead: int
    succeeded: int
    cancelled: int
    blocked: int = Field(description="Waiting for the jobs named in after= to finish")
    oldest_wait: float | None = Field(description="Seconds the oldest ready job has waited")
    weight: float
    max_running: int | None
    running_share: float = Field(
        description="This tenant's share of the jobs running in the queue (0..1)"
    )

    @classmethod
    def of(cls, s: QueueStats, running_in_queue: int) -> QueueStatsOut:
        return cls(
            queue=s.queue,
            tenant=s.tenant,
            scheduled=s.scheduled,
            queued=s.queued,
            running=s.running,
            retrying=s.retrying,
            dead=s.dead,
            succeeded=s.succeeded,
            cancelled=s.cancelled,
            blocked=s.blocked,
            oldest_wait=s.oldest_wait,
            weight=s.weight,
            max_running=s.max_running,
            running_share=s.running / running_in_queue if running_in_queue else 0.0,
        )


class StatsOut(BaseModel):
    stats: list[QueueStatsOut]


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: Name = "default"
    weight: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    max_running: Annotated[StrictInt, Field(ge=0, le=1_000_000)] | None = None


class TaskOut(BaseModel):
    name: str
    queue: str | None
    priority: int | None
    max_attempts: int | None
    timeout: float | None
    concurrency: int | None


class TaskList(BaseModel):
    tasks: list[TaskOut]


class Problem(BaseModel):
    """An error answer. ``task`` names an unknown task (404)."""

    detail: str
    task: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
