"""The dashboard: server-rendered pages (Jinja2) under /ui, live by polling.

Each page marks its changing part ``data-live``; ``static/app.js`` fetches the page again
every few seconds (``X-Conveyor-Fragment: 1``) and swaps that part in, so counts, states
and heartbeats move without a reload. Every asset ships in the package; nothing is
loaded from elsewhere (the CSP in ``server.py`` forbids it). Login is by API token;
every form carries a CSRF token.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import escape

from conveyor.backends.base import STATS_STATES
from conveyor.errors import JobNotFound
from conveyor.job import Job, JobState
from conveyor.web import session as sessions
from conveyor.web import tokens
from conveyor.web.api import queue_stats
from conveyor.web.context import Principal, WebContext, context
from conveyor.web.sampler import run_seconds, wait_seconds
from conveyor.worker import presence

FRAGMENT_HEADER = "x-conveyor-fragment"
_LIST_LIMIT = 200
_RUNNING_SCAN = 2000


class LoginRequired(Exception):
    pass


class Viewer:
    """The logged-in user of a dashboard request."""

    def __init__(self, who: Principal, session: sessions.Session, csrf: str) -> None:
        self.who = who
        self.session = session
        self.csrf = csrf


async def viewer(request: Request) -> Viewer:
    ctx = context(request)
    found = sessions.read_session(ctx.secret, request.cookies.get(sessions.COOKIE))
    if found is None:
        raise LoginRequired
    info = await tokens.find_token_by_hash(await ctx.backend(), found.token_hash)
    if info is None:  # revoked since login
        raise LoginRequired
    return Viewer(Principal.of(info), found, sessions.csrf_token(ctx.secret, found.nonce))


Ctx = Annotated[WebContext, Depends(context)]
See = Annotated[Viewer, Depends(viewer)]
JobId = Annotated[str, Path(min_length=1, max_length=100)]

router = APIRouter(prefix="/ui", include_in_schema=False)


# -- rendering --------------------------------------------------------------------------
def _ago(value: datetime | float | None) -> str:
    if value is None:
        return "-"
    ts = value.timestamp() if isinstance(value, datetime) else value
    delta = time.time() - ts
    return f"in {_dur(-delta)}" if delta < 0 else f"{_dur(delta)} ago"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


_env = Environment(
    loader=PackageLoader("conveyor.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(ago=_ago, dur=_dur, pretty=_pretty)
_env.globals.update(states=[s.value for s in JobState])


def render(request: Request, name: str, see: Viewer | None, **values: Any) -> HTMLResponse:
    template = _env.get_template(name)
    values.update(
        request=request,
        path=request.url.path,
        who=see.who if see else None,
        csrf=see.csrf if see else "",
        flash=_flash(request),
    )
    return HTMLResponse(template.render(values), headers={"Cache-Control": "no-store"})


#: What an action reports on the page it returns to. The page shows only these texts,
#: picked by code, so a crafted link cannot put words of its own on the dashboard.
FLASHES = {
    "replayed": "replayed: queued again with fresh attempts",
    "not-replayed": "cannot replay this job: only dead or cancelled jobs can be replayed",
    "cancelled": "cancelled",
    "cancel-requested": "cancel requested: its worker stops it at the next heartbeat",
    "not-cancelled": "nothing to cancel",
    "replayed-dead": "replayed {n} dead job(s)",
}


def _flash(request: Request) -> str | None:
    text = FLASHES.get(request.query_params.get("done", ""))
    if text is None:
        return None
    count = request.query_params.get("n", "0")
    return text.format(n=int(count) if count.isdigit() and len(count) < 8 else 0)


def _back(path: str, done: str, n: int | None = None) -> RedirectResponse:
    query = {"done": done} if n is None else {"done": done, "n": str(n)}
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


async def _csrf(request: Request, see: Viewer) -> None:
    form = await request.form()
    if not sessions.csrf_ok(context(request).secret, see.session.nonce, form.get("csrf")):
        raise _Forbidden("the form's CSRF token is missing or wrong: reload the page")


class _Forbidden(Exception):
    pass


# -- login ------------------------------------------------------------------------------
@router.get("/login")
async def login_page(request: Request, ctx: Ctx, next: str = "/ui/") -> Response:
    nonce = request.cookies.get(sessions.LOGIN_COOKIE) or secrets.token_urlsafe(16)
    response = render(
        request,
        "login.html",
        None,
        login_csrf=sessions.csrf_token(ctx.secret, "login:" + nonce),
        next=_safe_next(next),
        error=None,
    )
    _set_cookie(response, sessions.LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/login")
async def login(
    request: Request,
    ctx: Ctx,
    token: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
) -> Response:
    nonce = request.cookies.get(sessions.LOGIN_COOKIE, "")
    error = None
    info = None
    if not nonce or not sessions.csrf_ok(ctx.secret, "login:" + nonce, csrf):
        error = "The login form expired; try again."
    else:
        info = await tokens.find_token(await ctx.backend(), token.strip())
        if info is None:
            error = "Unknown or revoked token."
    if info is None:
        nonce = secrets.token_urlsafe(16)
        response: Response = render(
            request,
            "login.html",
            None,
            login_csrf=sessions.csrf_token(ctx.secret, "login:" + nonce),
            next=_safe_next(next),
            error=error,
        )
        response.status_code = 401
        _set_cookie(response, sessions.LOGIN_COOKIE, nonce, max_age=3600)
        return response
    response = RedirectResponse(_safe_next(next), status_code=303)
    value = sessions.new_session(ctx.secret, tokens.hash_token(token.strip()))
    _set_cookie(response, sessions.COOKIE, value, max_age=sessions.SESSION_SECONDS)
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(request: Request, see: See) -> Response:
    await _csrf(request, see)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


def _set_cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=False,  # served on loopback by default; put TLS in front to expose it
    )


def _safe_next(target: str) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    if not target.startswith("/ui/") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target


# -- pages ------------------------------------------------------------------------------
@router.get("/")
async def overview(request: Request, ctx: Ctx, see: See) -> Response:
    rows = await queue_stats(ctx, see.who)
    totals = {name: sum(getattr(r, name) for r in rows) for name in _COUNTED}
    return render(request, "overview.html", see, totals=totals, rows=rows)


@router.get("/data/overview")
async def overview_data(ctx: Ctx, see: See) -> JSONResponse:
    series = ctx.sampler.series(see.who.tenant, see.who.admin)
    return JSONResponse({"series": series}, headers={"Cache-Control": "no-store"})


@router.get("/queues")
async def queues(request: Request, ctx: Ctx, see: See) -> Response:
    per_queue: dict[str, dict[str, Any]] = {}
    for r in await queue_stats(ctx, see.who):
        q = per_queue.setdefault(
            r.queue,
            {"queue": r.queue, "tenants": 0, "oldest_wait": None} | dict.fromkeys(STATS_STATES, 0),
        )
        q["tenants"] += 1
        for name in _COUNTED:
            q[name] += getattr(r, name)
        q["cancelled"] += r.cancelled
        if r.oldest_wait is not None:
            q["oldest_wait"] = max(q["oldest_wait"] or 0.0, r.oldest_wait)
    return render(request, "queues.html", see, queues=sorted(per_queue.values(), key=_by_queue))


_COUNTED = ("blocked", "scheduled", "queued", "running", "waiting", "retrying", "dead", "succeeded")


def _by_queue(q: dict[str, Any]) -> str:
    return str(q["queue"])


@router.get("/tenants")
async def tenants(request: Request, ctx: Ctx, see: See) -> Response:
    rows = await queue_stats(ctx, see.who)
    rows.sort(key=lambda r: (r.queue, -(r.queued + r.running), r.tenant or ""))
    return render(request, "tenants.html", see, rows=rows, waits=ctx.sampler.recent_waits())


@router.get("/jobs")
async def jobs(
    request: Request,
    ctx: Ctx,
    see: See,
    state: str = "",
    queue: str = "",
    tenant: str = "",
    task: str = "",
    q: str = "",
) -> Response:
    q = q.strip()[:200]
    if q:
        job = await _job_for(ctx, see.who, q)
        if job is not None:
            return RedirectResponse(f"/ui/jobs/{quote(job.id)}", status_code=303)
    filters = {"state": state, "queue": queue, "tenant": tenant, "task": task, "q": q}
    found = await _list(ctx, see.who, state, queue, tenant, task)
    if q:
        found = [j for j in found if q in j.task or q in j.id or (j.key and q in j.key)]
    return render(request, "jobs.html", see, jobs=found, filters=filters)


async def _list(
    ctx: WebContext, who: Principal, state: str, queue: str, tenant: str, task: str
) -> list[Job]:
    job_state = JobState(state) if state in JobState.__members__.values() else None
    if not who.admin:
        if tenant and tenant != who.tenant:
            return []
        tenant = who.tenant or ""
    backend = await ctx.backend()
    found = await backend.query(
        state=job_state,
        queue=queue[:200] or None,
        tenant=tenant[:200] or None,
        task=task[:200] or None,
        limit=_LIST_LIMIT,
    )
    return [j for j in found if who.sees(j.tenant)]


async def _job_for(ctx: WebContext, who: Principal, job_id: str) -> Job | None:
    try:
        job = await ctx.app.job(job_id).info_async()
    except JobNotFound:
        return None
    return job if who.sees(job.tenant) else None


@router.get("/jobs/{job_id}")
async def job_detail(request: Request, job_id: JobId, ctx: Ctx, see: See) -> Response:
    job = await _job_for(ctx, see.who, job_id)
    if job is None:
        response = render(request, "missing.html", see, job_id=job_id)
        response.status_code = 404
        return response
    return render(
        request,
        "job.html",
        see,
        job=job,
        timeline=_timeline(job),
        wait=wait_seconds(job),
        run=run_seconds(job),
        replayable=job.state in (JobState.DEAD, JobState.CANCELLED),
        cancellable=job.state.is_active and not job.cancel_requested,
    )


def _timeline(job: Job) -> list[tuple[datetime, str]]:
    events: list[tuple[datetime, str]] = [(job.enqueued_at, "enqueued")]
    if job.run_at is not None:
        events.append((job.run_at, "due"))
    for err in job.errors:
        if err.at is not None:
            events.append((err.at, f"attempt {err.attempt} failed: {err.type}"))
    if job.started_at is not None:
        events.append((job.started_at, f"attempt {job.attempt} started"))
    if job.finished_at is not None:
        events.append((job.finished_at, job.state.value))
    return sorted(events, key=lambda e: e[0])


@router.post("/jobs/{job_id}/replay")
async def replay_job(request: Request, job_id: JobId, ctx: Ctx, see: See) -> Response:
    await _csrf(request, see)
    job = await _job_for(ctx, see.who, job_id)
    done = job is not None and await (await ctx.backend()).replay(job_id)
    return _back(f"/ui/jobs/{quote(job_id)}", "replayed" if done else "not-replayed")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: JobId, ctx: Ctx, see: See) -> Response:
    await _csrf(request, see)
    job = await _job_for(ctx, see.who, job_id)
    after = None if job is None else await (await ctx.backend()).cancel(job_id)
    done = {JobState.CANCELLED: "cancelled", JobState.RUNNING: "cancel-requested"}
    was_active = job is not None and job.state.is_active
    result = done.get(after, "not-cancelled") if after is not None and was_active else None
    return _back(f"/ui/jobs/{quote(job_id)}", result or "not-cancelled")


@router.get("/dead")
async def dead(
    request: Request, ctx: Ctx, see: See, queue: str = "", tenant: str = "", task: str = ""
) -> Response:
    found = await _list(ctx, see.who, JobState.DEAD.value, queue, tenant, task)
    filters = {"queue": queue, "tenant": tenant, "task": task}
    return render(request, "dead.html", see, jobs=found, filters=filters)


@router.post("/dead/replay")
async def replay_dead(request: Request, ctx: Ctx, see: See) -> Response:
    await _csrf(request, see)
    form = await request.form()
    fields = {k: str(form.get(k) or "") for k in ("queue", "tenant", "task")}
    found = await _list(ctx, see.who, JobState.DEAD.value, **fields)
    backend = await ctx.backend()
    replayed = [j.id for j in found if await backend.replay(j.id)]
    return _back("/ui/dead", "replayed-dead", len(replayed))


@router.get("/workers")
async def workers(request: Request, ctx: Ctx, see: See) -> Response:
    """Workers from their presence heartbeats, with the jobs each is running."""
    backend = await ctx.backend()
    now = await backend.now()
    running = await backend.query(state=JobState.RUNNING, limit=_RUNNING_SCAN)
    jobs_of: dict[str, list[Job]] = {}
    for job in running:
        jobs_of.setdefault(job.worker or "?", []).append(job)
    listed: dict[str, dict[str, Any]] = {
        key: presence.parse(key, text, now)
        for key, text in await backend.list_records(presence.KIND)
    }
    for worker_id in jobs_of:  # holding jobs but not (yet) heard from
        listed.setdefault(worker_id, {"id": worker_id, "alive": None, "age": None})
    rows = []
    for worker_id, info in sorted(listed.items()):
        mine = [j for j in jobs_of.get(worker_id, []) if see.who.sees(j.tenant)]
        if not see.who.admin and not mine:
            continue  # a tenant sees the workers running its own jobs only
        leases = [j.lease_expires_at for j in jobs_of.get(worker_id, []) if j.lease_expires_at]
        rows.append(info | {"jobs": mine, "lease_until": max(leases) if leases else None})
    return render(request, "workers.html", see, workers=rows)


@router.get("/schedules")
async def schedules(request: Request, ctx: Ctx, see: See) -> Response:
    """The app's periodic jobs (``@app.periodic``) and when each runs next."""
    from conveyor.scheduler import describe

    return render(request, "schedules.html", see, schedules=describe(ctx.app))


def install(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        if request.url.path.startswith("/ui/data/") or request.headers.get(FRAGMENT_HEADER):
            return JSONResponse({"detail": "log in again"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"/ui/login?{urlencode({'next': _safe_next(target)})}", status_code=303
        )

    @app.exception_handler(_Forbidden)
    async def _forbidden(request: Request, exc: _Forbidden) -> Response:
        return HTMLResponse(f"<p>{escape(str(exc))}</p>", status_code=403)

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(packages=[("conveyor.web", "static")]), name="static")
