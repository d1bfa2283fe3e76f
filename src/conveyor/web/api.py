"""The JSON API: submit, look at, cancel and replay jobs; queue and tenant stats.

Every handler is async and talks to the backend of the server's own event loop (no
sync portal). A tenant token sees its own tenant's jobs only: another tenant's job id
answers 404, exactly like an id that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from conveyor.errors import JobNotFound
from conveyor.job import Job, JobState
from conveyor.serialize import PayloadTooLarge
from conveyor.web import webhooks
from conveyor.web.context import ApiError, Principal, WebContext, admin, context, principal
from conveyor.web.schemas import (
    MAX_BATCH,
    BatchOut,
    BatchSubmit,
    CancelOut,
    Health,
    JobList,
    JobOut,
    JobSubmit,
    Problem,
    QueueStatsOut,
    ReplayFilter,
    ReplayOut,
    StatsOut,
    TaskList,
    TaskOut,
    TenantSettings,
)

Ctx = Annotated[WebContext, Depends(context)]
Who = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
JobId = Annotated[str, Path(min_length=1, max_length=100, description="The job's id")]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No valid bearer token",
        403: "The token may not do this",
        404: "No such job (or another tenant's), or an unknown task",
        409: "The job is not in a state that allows this",
        413: "The job's arguments are over the payload limit",
    }
    return {c: {"model": Problem, "description": described[c]} for c in codes}


router = APIRouter()


@router.get("/health", response_model=Health, tags=["server"])
async def health() -> Health:
    """Liveness: answers without a token and without touching the store."""
    return Health()


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    tags=["jobs"],
    responses=_answers(401, 403, 404, 409, 413),
)
async def submit(body: JobSubmit, ctx: Ctx, who: Who) -> JobOut:
    """Enqueue one job by task name; answers the job as stored.

    With a ``key`` already held by an active job, that job is answered instead.
    """
    options = _submit_options(ctx, body, who)
    try:
        handle = await ctx.app.enqueue_async(
            body.task, args=body.args, kwargs=body.kwargs, **options
        )
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise _invalid(("body",), exc) from None
    job = await _visible(ctx, who, handle.id, missing_status=409)
    return JobOut.of(job)


@router.post(
    "/jobs/batch",
    status_code=201,
    response_model=BatchOut,
    tags=["jobs"],
    responses=_answers(401, 403, 404, 413),
)
async def submit_batch(body: BatchSubmit, ctx: Ctx, who: Who) -> BatchOut:
    """Enqueue up to 1000 jobs in one atomic write: all of them or none."""
    calls = []
    for i, item in enumerate(body.jobs):
        options = _submit_options(ctx, item, who, f" (jobs[{i}])")
        calls.append({"task": item.task, "args": item.args, "kwargs": item.kwargs, **options})
    try:
        handles = await ctx.app.enqueue_many_async(calls)
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise _invalid(("body", "jobs"), exc) from None
    return BatchOut(ids=[h.id for h in handles])


@router.get("/jobs", response_model=JobList, tags=["jobs"], responses=_answers(401, 403))
async def list_jobs(
    ctx: Ctx,
    who: Who,
    state: JobState | None = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    tenant: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_BATCH)] = 100,
) -> JobList:
    """Jobs matching every filter given, newest first. A tenant token lists its own."""
    tenant = _tenant_filter(who, tenant)
    backend = await ctx.backend()
    found = await backend.query(state=state, queue=queue, tenant=tenant, task=task, limit=limit)
    return JobList(jobs=[JobOut.of(j) for j in found if who.sees(j.tenant)])


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_answers(401, 404))
async def get_job(job_id: JobId, ctx: Ctx, who: Who) -> JobOut:
    return JobOut.of(await _visible(ctx, who, job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=CancelOut,
    tags=["jobs"],
    responses=_answers(401, 404, 409),
)
async def cancel_job(job_id: JobId, ctx: Ctx, who: Who) -> CancelOut:
    """Cancel a waiting job at once; a running one is stopped by its worker (``running``)."""
    before = await _visible(ctx, who, job_id)
    after = before.state if before.state.is_final else await (await ctx.backend()).cancel(job_id)
    if after is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    if before.state.is_final or after not in (JobState.CANCELLED, JobState.RUNNING):
        raise ApiError(409, f"job {job_id} already {after.value}; nothing to cancel")
    return CancelOut(id=job_id, state=after)


@router.post(
    "/jobs/{job_id}/replay",
    response_model=JobOut,
    tags=["jobs"],
    responses=_answers(401, 404, 409),
)
async def replay_job(job_id: JobId, ctx: Ctx, who: Who) -> JobOut:
    """Queue a dead (or cancelled) job again with fresh attempts."""
    before = await _visible(ctx, who, job_id)
    if not await (await ctx.backend()).replay(job_id):
        raise ApiError(
            409,
            f"job {job_id} is {before.state.value}: only dead or cancelled jobs can be replayed",
        )
    return JobOut.of(await _visible(ctx, who, job_id))


@router.post("/jobs/replay", response_model=ReplayOut, tags=["jobs"], responses=_answers(401, 403))
async def replay_dead(body: ReplayFilter, ctx: Ctx, who: Who) -> ReplayOut:
    """Replay the dead jobs matching the filter (newest first, up to ``limit``)."""
    tenant = _tenant_filter(who, body.tenant)
    backend = await ctx.backend()
    dead = await backend.query(
        state=JobState.DEAD, queue=body.queue, tenant=tenant, task=body.task, limit=body.limit
    )
    replayed = [j.id for j in dead if who.sees(j.tenant) and await backend.replay(j.id)]
    return ReplayOut(replayed=replayed)


@router.get("/stats", response_model=StatsOut, tags=["stats"], responses=_answers(401))
async def stats(ctx: Ctx, who: Who) -> StatsOut:
    """Counts per queue and tenant, oldest wait, tenant settings and share of running jobs."""
    return StatsOut(stats=await queue_stats(ctx, who))


async def queue_stats(ctx: WebContext, who: Principal) -> list[QueueStatsOut]:
    rows = await (await ctx.backend()).stats()
    running: dict[str, int] = {}
    for s in rows:
        running[s.queue] = running.get(s.queue, 0) + s.running
    visible = [QueueStatsOut.of(s, running[s.queue]) for s in rows if who.sees(s.tenant)]
    return sorted(visible, key=lambda s: (s.queue, s.tenant or ""))


@router.put(
    "/tenants/{tenant}",
    response_model=QueueStatsOut | None,
    tags=["stats"],
    responses=_answers(401, 403),
)
async def set_tenant(
    tenant: Annotated[str, Path(min_length=1, max_length=200)],
    body: TenantSettings,
    ctx: Ctx,
    who: Admin,
) -> QueueStatsOut | None:
    """Set a tenant's share ``weight`` and cap ``max_running`` in a queue (admin)."""
    try:
        await ctx.app.set_tenant_async(tenant, body.queue, body.weight, body.max_running)
    except (ValueError, TypeError) as exc:
        raise _invalid(("body",), exc) from None
    for row in await queue_stats(ctx, who):
        if row.queue == body.queue and row.tenant == tenant:
            return row
    return None


@router.get("/tasks", response_model=TaskList, tags=["server"], responses=_answers(401))
async def list_tasks(ctx: Ctx, who: Who) -> TaskList:
    """The tasks this server knows (jobs of other task names are refused)."""
    return TaskList(
        tasks=[
            TaskOut(
                name=t.name,
                queue=t.queue,
                priority=t.priority,
                max_attempts=t.max_attempts,
                timeout=t.timeout,
                concurrency=t.concurrency,
            )
            for t in sorted(ctx.app.tasks.values(), key=lambda t: t.name)
        ]
    )


# -- helpers ----------------------------------------------------------------------------
def _submit_options(
    ctx: WebContext, body: JobSubmit, who: Principal, where: str = ""
) -> dict[str, Any]:
    """Enqueue options for ``body``, on the token's tenant; 404 for an unknown task."""
    check_task(ctx, body.task, where)
    options = body.options()
    tenant = options.get("tenant")
    if not who.admin:
        if tenant is not None and tenant != who.tenant:
            raise ApiError(403, f"this token may only submit jobs for tenant {who.tenant!r}")
        options["tenant"] = who.tenant
    return options


def check_task(ctx: WebContext, task: str, where: str = "") -> None:
    if task not in ctx.app.tasks:
        raise ApiError(404, f"unknown task {task!r}{where}", task=task)


async def _visible(ctx: WebContext, who: Principal, job_id: str, missing_status: int = 404) -> Job:
    try:
        job = await ctx.app.job(job_id).info_async()
    except JobNotFound:
        job = None
    if job is None or not who.sees(job.tenant):
        if missing_status == 409:  # a dedup key held by a job this token may not see
            raise ApiError(409, "the key is held by another active job")
        raise ApiError(404, f"no job with id {job_id!r}")
    return job


def _tenant_filter(who: Principal, tenant: str | None) -> str | None:
    if who.admin:
        return tenant
    if tenant is not None and tenant != who.tenant:
        raise ApiError(403, f"this token sees tenant {who.tenant!r} only")
    return who.tenant


_FIELDS = {
    "task",
    "tenant",
    "queue",
    "priority",
    "delay",
    "key",
    "max_attempts",
    "timeout",
    "args",
    "kwargs",
    "weight",
    "max_running",
}


def _invalid(loc: tuple[str | int, ...], exc: Exception) -> ApiError:
    """422 in FastAPI's own shape, naming the field the core's message is about."""
    message = str(exc)
    first = message.split(" ", 1)[0]
    field = (first,) if first in _FIELDS else ()
    return ApiError(422, [{"loc": [*loc, *field], "msg": message, "type": "value_error"}])


def install(app: FastAPI) -> None:
    """Add the API routes and the error answers to ``app``."""

    @app.exception_handler(ApiError)
    async def _answer(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, **exc.extra}, status_code=exc.status, headers=exc.headers
        )

    app.include_router(router)
    app.include_router(webhooks.router)
