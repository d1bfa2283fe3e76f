"""Shared pieces of the ``conveyor`` command line: the group, its context, errors
and output helpers.

Human output is Rich tables on stdout; ``--json`` prints machine-readable JSON instead
(scripts and the acceptance tests rely on it). Problems with what the user typed exit 2,
a job that does not exist (or cannot be changed) exits 1, and neither prints a traceback.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
from rich.console import Console
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
STATES = [s.value for s in JobState]


def console(stderr: bool = False) -> Console:
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
class CliState:
    url: str | None
    url_given: bool  # typed on the command line, not taken from $CONVEYOR_URL
    app_path: str | None
    _app: App | None = field(default=None, repr=False)

    def app(self) -> App:
        """The app to talk to: ``--app``'s (its tasks' defaults apply), else a bare one."""
        if self._app is None:
            if self.app_path is not None:
                app = load_app_or_exit(self.app_path)
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


def load_app_or_exit(path: str) -> App:
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
def store_errors() -> Iterator[None]:
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
    ctx.obj = CliState(url=url, url_given=given, app_path=app_path)


def main() -> None:
    cli(prog_name="conveyor")


# -- enqueue --------------------------------------------------------------------------
def json_option(kind: type) -> Callable[[click.Context, click.Parameter, str], Any]:
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


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error_dict(err: JobError) -> dict[str, Any]:
    return {
        "attempt": err.attempt,
        "type": err.type,
        "message": err.message,
        "traceback": err.traceback,
        "at": iso(err.at),
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
        "enqueued_at": iso(job.enqueued_at),
        "run_at": iso(job.run_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "lease_expires_at": iso(job.lease_expires_at),
        "worker": job.worker,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result": job.result,
        "errors": [_error_dict(e) for e in job.errors],
        "key": job.key,
        "timeout": job.timeout,
        "cancel_requested": job.cancel_requested,
    }


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    delta = time.time() - value.timestamp()
    return f"in {duration(-delta)}" if delta < 0 else f"{duration(delta)} ago"


def state_text(job_state: JobState) -> Text:
    return Text(job_state.value, style=STATE_STYLE[job_state])


def tenant_text(tenant: str | None) -> Text:
    return Text(tenant) if tenant is not None else Text("(default)", style="dim")


def short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_job(app: App, job_id: str) -> Job:
    try:
        with store_errors():
            return app.job(job_id).info()
    except JobNotFound:
        raise CliError(f"no job with id {job_id!r}") from None


def query_jobs(app: App, **filters: Any) -> list[Job]:
    try:
        with store_errors():
            return app.jobs(**filters)
    except ValueError as exc:
        raise InputError(str(exc)) from None
