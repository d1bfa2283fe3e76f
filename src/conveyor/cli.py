"""``conveyor``: run workers, enqueue jobs and look at the store from a shell.

Human output is Rich tables on stdout; ``--json`` prints machine-readable JSON instead
(scripts and the acceptance tests rely on it). Problems with what the user typed exit 2,
a job that does not exist (or cannot be changed) exits 1, and neither prints a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import click
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor import __version__
from conveyor.app import App
from conveyor.config import URL_ENV, resolve_url
from conveyor.errors import ConveyorError, JobNotFound
from conveyor.job import Job, JobError, JobState

STATE_STYLE = {
    JobState.SCHEDULED: "cyan",
    JobState.QUEUED: "blue",
    JobState.RUNNING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.RETRYING: "magenta",
    JobState.DEAD: "bold red",
    JobState.CANCELLED: "dim",
    JobState.BLOCKED: "cyan",
}
_STATES = [s.value for s in JobState]


def _console(stderr: bool = False) -> Console:
    # Piped output is not wrapped at 80 columns: a job id cut in two is useless to grep.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


class CliError(click.ClickException):
    """A clear one-line failure (``Error: ...`` on stderr, exit 1) and no traceback."""

    exit_code = 1


class InputError(CliError):
    """What the user typed cannot work: exit 2, like click's own usage errors."""

    exit_code = 2


# -- the shared context: which store, which app ------------------------------------------
@dataclass
class _State:
    url: str | None
    url_given: bool  # typed on the command line, not taken from $CONVEYOR_URL
    app_path: str | None
    _app: App | None = field(default=None, repr=False)

    def app(self) -> App:
        """The app to talk to: ``--app``'s (its tasks' defaults apply), else a bare one."""
        if self._app is None:
            if self.app_path is not None:
                app = _load_app(self.app_path)
                if self.url_given and self.url:
                    app.url = self.url  # --url wins; the backend is not open yet
            else:
                try:
                    app = App(self.url or resolve_url(None))
                except ValueError as exc:
                    raise InputError(str(exc)) from None
            self._app = app
            click.get_current_context().call_on_close(app.close)
        return self._app


def _load_app(path: str) -> App:
    """Import ``module:attr``; any failure is a clear message (exit 2), not a crash loop."""
    from conveyor.worker.supervisor import load_app

    try:
        return load_app(path)
    except ValueError as exc:
        raise InputError(f"cannot load app {path!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        module = path.partition(":")[0]
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            hint = " (run from the directory that holds it, or install it)"
            raise InputError(f"cannot load app {path!r}: {exc}{hint}") from None
        _print_traceback(exc)  # an import *inside* the user's module failed: show where
        raise InputError(f"cannot load app {path!r}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        _print_traceback(exc)
        raise InputError(f"cannot load app {path!r}: {type(exc).__name__}: {exc}") from None


def _print_traceback(exc: BaseException) -> None:
    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


@contextmanager
def _store_errors() -> Iterator[None]:
    """A store that cannot be used (unsupported engine, bad URL) is the user's to fix."""
    try:
        yield
    except ConveyorError as exc:
        raise CliError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar=URL_ENV,
    metavar="URL",
    help=f"Storage URL (default: ${URL_ENV}, else sqlite:///conveyor.db).",
)
@click.option(
    "--app",
    "app_path",
    metavar="MODULE:ATTR",
    help="Import this app: its URL and its tasks' defaults are used (--url still wins).",
)
@click.version_option(__version__, prog_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, url: str | None, app_path: str | None) -> None:
    """Conveyor: background jobs, fast and fair between tenants."""
    # Only a --url typed out overrides --app's own URL; $CONVEYOR_URL is what a bare
    # ``App()`` in that module reads anyway.
    given = ctx.get_parameter_source("url") is click.core.ParameterSource.COMMANDLINE
    ctx.obj = _State(url=url, url_given=given, app_path=app_path)


def main() -> None:
    cli(prog_name="conveyor")


# -- worker ---------------------------------------------------------------------------
@cli.command()
@click.argument("app_path", metavar="APP")
@click.option(
    "-q", "--queue", "queues", multiple=True, help="Queue to serve (repeatable, in order)."
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("-p", "--processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--lease", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True
)
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--burst", is_flag=True, help="Exit once nothing is ready or running.")
@click.pass_obj
def worker(
    cfg: _State,
    app_path: str,
    queues: Sequence[str],
    concurrency: int,
    processes: int,
    lease: float,
    grace: float,
    burst: bool,
) -> None:
    """Run worker processes for APP (e.g. myproject.tasks:app)."""
    from conveyor.worker.supervisor import Supervisor, WorkerOptions

    logging.basicConfig(
        level=os.environ.get("CONVEYOR_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format=f"%(asctime)s [supervisor {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    if cfg.url_given and cfg.url:
        # Children import the app themselves; an ``App()`` without a URL reads this.
        os.environ[URL_ENV] = cfg.url
    # Import once here so that a broken module fails now, not in a child crash loop.
    app = _load_app(app_path)
    if cfg.url_given and cfg.url and app.url != cfg.url:
        logging.getLogger("conveyor.supervisor").warning(
            "%s sets its own URL %s; --url %s does not apply to it", app_path, app.url, cfg.url
        )
    served = list(queues) or [app.defaults.queue]
    logging.getLogger("conveyor.supervisor").info(
        "conveyor %s: %s (%d tasks) on %s; queues %s; %d process(es) x %d slots",
        __version__,
        app_path,
        len(app.tasks),
        app.url,
        served,
        processes,
        concurrency,
    )
    options = WorkerOptions(
        app=app_path,
        queues=served,
        concurrency=concurrency,
        lease=lease,
        grace=grace,
        burst=burst,
    )
    sys.exit(Supervisor(options, processes).run())


# -- enqueue --------------------------------------------------------------------------
def _json_option(kind: type) -> Callable[[click.Context, click.Parameter, str], Any]:
    what, example = ("array", '[1, "a"]') if kind is list else ("object", '{"x": 1}')

    def parse(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON ({exc}): {value!r}") from None
        if not isinstance(parsed, kind):
            raise click.BadParameter(
                f"must be a JSON {what}, e.g. {example}; got {type(parsed).__name__} {value!r}"
            )
        return parsed

    return parse


@cli.command()
@click.argument("task")
@click.option("--args", "args", default="[]", callback=_json_option(list), help="JSON array.")
@click.option("--kwargs", "kwargs", default="{}", callback=_json_option(dict), help="JSON object.")
@click.option("--tenant")
@click.option("--priority", type=int, help="0 (most urgent) to 9.")
@click.option("--delay", type=float, help="Seconds before the job is due.")
@click.option("--queue")
@click.option("--key", help="Dedup key: no second active job with the same key.")
@click.option("--max-attempts", type=int)
@click.option("--timeout", type=float, help="Seconds an attempt may run.")
@click.pass_obj
def enqueue(
    cfg: _State,
    /,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    **options: Any,
) -> None:
    """Enqueue TASK by name and print the new job's id."""
    app = cfg.app()
    if cfg.app_path and task not in app.tasks:
        click.echo(f"warning: {cfg.app_path} has no task {task!r}", err=True)
    given = {k: v for k, v in options.items() if v is not None}
    try:
        with _store_errors():
            handle = app.enqueue(task, args=args, kwargs=kwargs, **given)
    except (ValueError, TypeError) as exc:  # the app's validation: bad priority, delay, size
        raise InputError(str(exc)) from None
    click.echo(handle.id)


# -- looking at jobs ------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error_dict(err: JobError) -> dict[str, Any]:
    return {
        "attempt": err.attempt,
        "type": err.type,
        "message": err.message,
        "traceback": err.traceback,
        "at": _iso(err.at),
    }


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job as JSON-ready data: times as ISO 8601 (UTC), errors oldest first."""
    return {
        "id": job.id,
        "task": job.task,
        "state": job.state.value,
        "queue": job.queue,
        "tenant": job.tenant,
        "priority": job.priority,
        "args": job.args,
        "kwargs": job.kwargs,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "enqueued_at": _iso(job.enqueued_at),
        "run_at": _iso(job.run_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(job.expires_at),
        "lease_expires_at": _iso(job.lease_expires_at),
        "worker": job.worker,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result": job.result,
        "errors": [_error_dict(e) for e in job.errors],
        "key": job.key,
        "timeout": job.timeout,
        "cancel_requested": job.cancel_requested,
    }


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    delta = time.time() - value.timestamp()
    return f"in {_duration(-delta)}" if delta < 0 else f"{_duration(delta)} ago"


def _state_text(job_state: JobState) -> Text:
    return Text(job_state.value, style=STATE_STYLE[job_state])


def _tenant(tenant: str | None) -> Text:
    return Text(tenant) if tenant is not None else Text("(default)", style="dim")


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _find(app: App, job_id: str) -> Job:
    try:
        with _store_errors():
            return app.job(job_id).info()
    except JobNotFound:
        raise CliError(f"no job with id {job_id!r}") from None


def _query(app: App, **filters: Any) -> list[Job]:
    try:
        with _store_errors():
            return app.jobs(**filters)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@cli.command()
@click.option("--state", type=click.Choice(_STATES))
@click.option("--queue")
@click.option("--tenant")
@click.option("--task")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def jobs(
    cfg: _State,
    /,
    as_json: bool,
    **filters: Any,
) -> None:
    """List jobs, newest first."""
    found = _query(cfg.app(), **filters)
    if as_json:
        _print_json([job_to_dict(j) for j in found])
        return
    table = Table(title=f"{len(found)} job(s)", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("task")
    table.add_column("state")
    table.add_column("queue")
    table.add_column("tenant")
    table.add_column("prio", justify="right")
    table.add_column("attempt", justify="right")
    table.add_column("enqueued")
    table.add_column("progress / error")
    for job in found:
        note = Text("")
        if job.state is JobState.RUNNING and job.progress is not None:
            note = Text(f"{job.progress:.0%} {job.progress_message or ''}".strip())
        elif job.error is not None and job.state is not JobState.SUCCEEDED:
            note = Text(_short(f"{job.error.type}: {job.error.message}"), style="red")
        table.add_row(
            Text(job.id),
            Text(job.task),
            _state_text(job.state),
            Text(job.queue),
            _tenant(job.tenant),
            str(job.priority),
            f"{job.attempt}/{job.max_attempts}",
            _ago(job.enqueued_at),
            note,
        )
    _console().print(table)


@cli.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def job_detail(cfg: _State, job_id: str, as_json: bool) -> None:
    """Show one job: arguments, state, progress, result, every error."""
    job = _find(cfg.app(), job_id)
    if as_json:
        _print_json(job_to_dict(job))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("task", Text(job.task))
    grid.add_row("state", _state_text(job.state))
    grid.add_row("queue", Text(job.queue))
    grid.add_row("tenant", _tenant(job.tenant))
    grid.add_row("priority", str(job.priority))
    grid.add_row("attempts", f"{job.attempt} of {job.max_attempts}")
    grid.add_row("args", Text(json.dumps(job.args, ensure_ascii=False)))
    grid.add_row("kwargs", Text(json.dumps(job.kwargs, ensure_ascii=False)))
    grid.add_row("enqueued", f"{_iso(job.enqueued_at)} ({_ago(job.enqueued_at)})")
    if job.run_at is not None:
        grid.add_row("due", f"{_iso(job.run_at)} ({_ago(job.run_at)})")
    if job.started_at is not None:
        grid.add_row("started", f"{_iso(job.started_at)} ({_ago(job.started_at)})")
    if job.finished_at is not None:
        grid.add_row("finished", f"{_iso(job.finished_at)} ({_ago(job.finished_at)})")
    if job.worker:
        grid.add_row("worker", Text(job.worker))
    if job.key:
        grid.add_row("key", Text(job.key))
    if job.timeout is not None:
        grid.add_row("timeout", f"{job.timeout:g} s")
    if job.progress is not None or job.progress_message:
        pct = f"{job.progress:.0%}" if job.progress is not None else ""
        grid.add_row("progress", Text(f"{pct} {job.progress_message or ''}".strip()))
    if job.cancel_requested:
        grid.add_row("cancel", Text("requested", style="yellow"))
    if job.state is JobState.SUCCEEDED:
        grid.add_row("result", Text(json.dumps(job.result, ensure_ascii=False, indent=2)))
    parts: list[Any] = [grid]
    for err in job.errors:
        body = Text(err.traceback.rstrip()) if err.traceback else Text("(no traceback)", "dim")
        title = Text(f"attempt {err.attempt}: {err.type}: {err.message}", style="red")
        subtitle = _iso(err.at) or ""
        parts.append(Panel(body, title=title, title_align="left", subtitle=subtitle, expand=False))
    _console().print(Panel(Group(*parts), title=f"job {job.id}", title_align="left", expand=False))


@cli.command()
@click.option("--queue")
@click.option("--tenant")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def dead(cfg: _State, queue: str | None, tenant: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs (the dead-letter queue) with their last error."""
    found = _query(cfg.app(), state=JobState.DEAD, queue=queue, tenant=tenant, limit=limit)
    if as_json:
        _print_json([job_to_dict(j) for j in found])
        return
    if not found:
        _console().print("no dead jobs")
        return
    table = Table(title=f"{len(found)} dead job(s)", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("task")
    table.add_column("queue")
    table.add_column("tenant")
    table.add_column("attempts", justify="right")
    table.add_column("died")
    table.add_column("last error", style="red")
    for job in found:
        err = job.error
        table.add_row(
            Text(job.id),
            Text(job.task),
            Text(job.queue),
            _tenant(job.tenant),
            f"{job.attempt}/{job.max_attempts}",
            _ago(job.finished_at),
            Text(_short(f"{err.type}: {err.message}", 80) if err else "-"),
        )
    _console().print(table)
    _console().print("[dim]conveyor job ID[/] shows tracebacks; [dim]conveyor replay ID[/] re-runs")


@cli.command()
@click.argument("job_id")
@click.pass_obj
def replay(cfg: _State, job_id: str) -> None:
    """Re-queue a dead or cancelled job with fresh attempts."""
    app = cfg.app()
    job = _find(app, job_id)
    with _store_errors():
        done = app.replay(job_id)
    if not done:
        now = _find(app, job_id).state
        raise CliError(
            f"job {job_id} is {now.value} (was {job.state.value}): "
            "only dead or cancelled jobs can be replayed"
        )
    click.echo(f"replayed {job_id}: queued again with {job.max_attempts} fresh attempt(s)")


@cli.command()
@click.argument("job_id")
@click.pass_obj
def cancel(cfg: _State, job_id: str) -> None:
    """Cancel a job (a running one is stopped by its worker)."""
    with _store_errors():
        after = cfg.app().cancel(job_id)
    if after is None:
        raise CliError(f"no job with id {job_id!r}")
    if after is JobState.CANCELLED:
        click.echo(f"cancelled {job_id}")
    elif after is JobState.RUNNING:
        click.echo(f"cancel requested for {job_id}: its worker stops it at the next heartbeat")
    else:
        raise CliError(f"job {job_id} already {after.value}; nothing to cancel")


@cli.command()
@click.pass_obj
def migrate(cfg: _State) -> None:
    """Create or upgrade the store's schema (safe to run again, and concurrently)."""
    from conveyor.backends import create_backend

    app = cfg.app()

    async def run() -> list[int]:
        backend = create_backend(app.url)
        try:
            return await backend.migrate()
        finally:
            await backend.close()

    with _store_errors():
        applied = asyncio.run(run())
    if applied:
        click.echo(f"applied migration(s) {', '.join(map(str, applied))}")
    else:
        click.echo("schema is up to date")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def stats(cfg: _State, as_json: bool) -> None:
    """Job counts and oldest wait per queue and tenant."""
    with _store_errors():
        rows = sorted(cfg.app().stats(), key=lambda s: (s.queue, s.tenant or ""))
    if as_json:
        _print_json([asdict(s) for s in rows])
        return
    if not rows:
        _console().print("no jobs yet")
        return
    table = Table(title="conveyor stats", title_justify="left")
    for name in ("queue", "tenant"):
        table.add_column(name)
    counts = (
        "blocked",
        "scheduled",
        "queued",
        "running",
        "retrying",
        "dead",
        "succeeded",
        "cancelled",
    )
    for name in counts:
        table.add_column(name, justify="right")
    table.add_column("oldest wait", justify="right")
    for s in rows:
        wait = "-" if s.oldest_wait is None else _duration(s.oldest_wait)
        cells = [str(getattr(s, name)) for name in counts]
        table.add_row(Text(s.queue), _tenant(s.tenant), *cells, wait)
    if len(rows) > 1:
        table.add_section()
        totals = [str(sum(getattr(s, name) for s in rows)) for name in counts]
        waits = [s.oldest_wait for s in rows if s.oldest_wait is not None]
        table.add_row("total", "", *totals, _duration(max(waits)) if waits else "-", style="bold")
    _console().print(table)


# -- web server and API tokens ---------------------------------------------------------
@cli.command()
@click.argument("app_path", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--public-metrics", is_flag=True, help="Serve /metrics without a token (trusted networks)."
)
@click.pass_obj
def serve(cfg: _State, app_path: str, host: str, port: int, public_metrics: bool) -> None:
    """Serve the HTTP API, /metrics and the dashboard for APP."""
    try:
        from conveyor.web.server import serve as run_server
    except ImportError as exc:
        raise InputError(
            f"the web server needs the web extra: pip install 'conveyor[web]' ({exc})"
        ) from None
    app = _load_app(app_path)
    if cfg.url_given and cfg.url:
        app.url = cfg.url
    click.echo(f"conveyor {__version__}: serving {app_path} ({app.url}) on http://{host}:{port}/")
    run_server(
        app,
        host=host,
        port=port,
        public_metrics=public_metrics,
        log_level=os.environ.get("CONVEYOR_LOG_LEVEL", "info").lower(),
    )


@cli.group()
def token() -> None:
    """Create, list and revoke API tokens (stored hashed in the store)."""


def _with_backend(cfg: _State, use: Callable[[Any], Any]) -> Any:
    """Run ``await use(backend)`` on a backend of the store, opened for this command."""
    from conveyor.backends import create_backend

    app = cfg.app()

    async def run() -> Any:
        backend = create_backend(app.url)
        await backend.open()
        try:
            return await use(backend)
        finally:
            await backend.close()

    with _store_errors():
        return asyncio.run(run())


@token.command("create")
@click.option("--tenant", help="The tenant whose jobs the token sees and submits.")
@click.option("--admin", is_flag=True, help="See and act on every tenant's jobs.")
@click.option("--name", help="A note to recognise the token by in `token list`.")
@click.pass_obj
def token_create(cfg: _State, tenant: str | None, admin: bool, name: str | None) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    from conveyor.web import tokens

    if not admin and not tenant:
        raise InputError("give --tenant NAME (or --admin for a token that sees every tenant)")

    async def create(backend: Any) -> tuple[str, Any]:
        return await tokens.create_token(backend, tenant=tenant, admin=admin, name=name)

    try:
        secret, info = _with_backend(cfg, create)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    scope = "admin" if admin else f"tenant {tenant}"
    click.echo(f"created token {info.id} ({scope}); store it now, it is not shown again:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def token_list(cfg: _State, as_json: bool) -> None:
    """List tokens (ids and grants; the tokens themselves are not stored)."""
    from conveyor.web import tokens

    found = _with_backend(cfg, tokens.list_tokens)
    if as_json:
        _print_json([asdict(t) for t in found])
        return
    if not found:
        _console().print("no tokens")
        return
    table = Table(title=f"{len(found)} token(s)", title_justify="left")
    for name in ("id", "scope", "name", "created"):
        table.add_column(name)
    for t in found:
        scope = "admin" + (f" (tenant {t.tenant})" if t.tenant else "") if t.admin else t.tenant
        table.add_row(Text(t.id), Text(scope or ""), Text(t.name or ""), _ago_ts(t.created_at))
    _console().print(table)


def _ago_ts(ts: float) -> str:
    return _duration(max(0.0, time.time() - ts)) + " ago"


@token.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(cfg: _State, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (from `token list`); it stops working at once."""
    from conveyor.web import tokens

    async def revoke(backend: Any) -> Any:
        return await tokens.revoke_token(backend, token_id)

    try:
        info = _with_backend(cfg, revoke)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"revoked token {info.id}")


@cli.command()
@click.argument("app_path", metavar="MODULE:ATTR", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def periodic(cfg: _State, app_path: str | None, as_json: bool) -> None:
    """Periodic jobs of an app and when each runs next."""
    from conveyor.scheduler import describe

    if app_path is not None:
        cfg.app_path = app_path
    if cfg.app_path is None:
        raise InputError("name the app whose schedules to list: conveyor periodic MODULE:ATTR")
    rows = describe(cfg.app())
    if as_json:
        _print_json(
            [
                {
                    "name": s.name,
                    "task": s.task,
                    "schedule": s.when,
                    "missed": s.missed,
                    "next_run": at.isoformat(),
                }
                for s, at in rows
            ]
        )
        return
    if not rows:
        _console().print(f"{cfg.app_path} has no periodic jobs")
        return
    table = Table(title="conveyor periodic", title_justify="left")
    for name in ("name", "task", "schedule", "missed", "next run"):
        table.add_column(name)
    for s, at in rows:
        table.add_row(Text(s.name), Text(s.task), Text(s.when), s.missed, at.isoformat())
    _console().print(table)


# -- demo -----------------------------------------------------------------------------
@cli.command()
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file (default: a temp dir).")
@click.option("-p", "--processes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
def demo(db: str | None, processes: int, concurrency: int) -> None:
    """Live tour: one tenant floods, the small ones are still served."""
    from conveyor.demo import run_demo

    sys.exit(run_demo(db=db, processes=processes, concurrency=concurrency))


if __name__ == "__main__":  # pragma: no cover
    main()
