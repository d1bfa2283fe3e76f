"""External completion over HTTP: ``POST /jobs/{id}/complete`` and ``/jobs/{id}/fail``.

The outside service a task handed its job to (``conveyor.Await``) usually holds nothing
but the job id and the completion token the task gave it, so these two endpoints need
no API token: the completion token is the credential. It is 128 random bits, valid for
one job's one attempt and only until its deadline. A wrong token answers 404, exactly
like an id that does not exist, whatever tenant the job is of, so ids cannot be probed;
a right token after the deadline, or for a job no longer waiting, answers 409.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from conveyor.errors import CompletionRefused
from conveyor.job import Job, JobState
from conveyor.serialize import PayloadTooLarge
from conveyor.web.context import ApiError, WebContext, context
from conveyor.web.schemas import Problem

Ctx = Annotated[WebContext, Depends(context)]
JobId = Annotated[str, Path(min_length=1, max_length=100, description="The job's id")]
Token = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="The job's completion token (current_job().completion_token)",
    ),
]

router = APIRouter(tags=["external completion"])

_ANSWERS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No waiting job with this id and token"},
    409: {"model": Problem, "description": "Its deadline passed, or it is no longer waiting"},
    413: {"model": Problem, "description": "The result is over the payload limit"},
}


class CompleteIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"token": "3f9a...", "result": {"status": "paid"}}]},
    )

    token: Token
    result: Any = Field(default=None, description="The job's result (JSON)")


class ErrorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, Field(min_length=1, max_length=200)] = "ExternalFailure"
    message: Annotated[str, Field(max_length=4000)] = ""


class FailIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"token": "3f9a...", "error": "card declined", "retry": False}]
        },
    )

    token: Token
    error: Annotated[str, Field(max_length=4000)] | ErrorIn | None = Field(
        default=None, description="A message, or {type, message}; recorded on the job"
    )
    retry: StrictBool = Field(
        default=True,
        description="Apply the task's retry policy (true) or send the job to dead (false)",
    )


class CompletionOut(BaseModel):
    id: str
    state: JobState = Field(description="The job's state after the completion")


@router.post("/jobs/{job_id}/complete", response_model=CompletionOut, responses=_ANSWERS)
async def complete(job_id: JobId, body: CompleteIn, ctx: Ctx) -> CompletionOut:
    """Complete a ``waiting`` job with its result (needs its completion token, no API
    token)."""
    before = await (await ctx.backend()).get(job_id)
    try:
        await ctx.app.complete_external_async(job_id, body.token, body.result)
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (TypeError, ValueError) as exc:
        detail = [{"loc": ["body", "result"], "msg": str(exc), "type": "value_error"}]
        raise ApiError(422, detail) from None
    except CompletionRefused as exc:
        raise _refused(exc) from None
    _count(ctx, before, "succeeded")
    return await _answer(ctx, job_id)


@router.post("/jobs/{job_id}/fail", response_model=CompletionOut, responses=_ANSWERS)
async def fail(job_id: JobId, body: FailIn, ctx: Ctx) -> CompletionOut:
    """Fail a ``waiting`` job: retried by its task's policy, or ``dead`` with
    ``retry: false`` (needs its completion token, no API token)."""
    error = body.error.model_dump() if isinstance(body.error, ErrorIn) else body.error
    before = await (await ctx.backend()).get(job_id)
    try:
        await ctx.app.fail_external_async(job_id, body.token, error, retry=body.retry)
    except CompletionRefused as exc:
        raise _refused(exc) from None
    # The store's rule (as for a worker's outcome): a retry with no attempts left is dead.
    last = before is not None and before.attempt >= before.max_attempts
    _count(ctx, before, "retry" if body.retry and not last else "dead")
    return await _answer(ctx, job_id)


def _refused(exc: CompletionRefused) -> ApiError:
    return ApiError(404 if exc.reason == "unknown" else 409, str(exc))


async def _answer(ctx: WebContext, job_id: str) -> CompletionOut:
    job = await (await ctx.backend()).get(job_id)
    # Purged at once (result_ttl=0) is still a completion that applied.
    return CompletionOut(id=job_id, state=job.state if job else JobState.SUCCEEDED)


def _count(ctx: WebContext, job: Job | None, outcome: str) -> None:
    """Count an applied completion for /metrics (``conveyor/metrics.py``). ``job`` was
    read just before: afterwards a retried job may already run again, or be purged."""
    if job is None:  # applied, so it existed: gone in between (deleted), labels unknown
        queue, task, tenant = "", "", ""
    else:
        queue, task, tenant = job.queue, job.task, job.tenant or ""
    ctx.counts.inc("external_completions", (queue, task, outcome))
    if outcome != "retry":
        ctx.counts.inc("jobs_finished", (queue, tenant, outcome))
