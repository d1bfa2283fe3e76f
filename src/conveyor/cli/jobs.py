"""``conveyor enqueue | jobs | job | dead | replay | cancel | migrate | stats``."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

import click
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor.backends.base import STATS_STATES
from conveyor.cli._base import (
    STATES,
    CliError,
    CliState,
    InputError,
    ago,
    cli,
    console,
    duration,
    find_job,
    iso,
    job_to_dict,
    json_option,
    print_json,
    query_jobs,
    short,
    state_text,
    store_errors,
    tenant_text,
)
from conveyor.job import JobState


@cli.command()
@click.argument("task")
@click.option("--args", "args", default="[]", callback=json_option(list), help="JSON array.")
@click.option("--kwargs", "kwargs", default="{}", callback=json_option(dict), help="JSON object.")
@click.option("--tenant")
@click.option("--priority", type=int, help="0 (most urgent) to 9.")
@click.option("--delay", type=float, help="Seconds before the job is due.")
@click.option("--queue")
@click.option("--key", help="Dedup key: no second active job with the same key.")
@click.option("--max-attempts", type=int)
@click.option("--timeout", type=float, help="Seconds an attempt may run.")
@click.pass_obj
def enqueue(
    cfg: CliState,
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
        with store_errors():
            handle = app.enqueue(task, args=args, kwargs=kwargs, **given)
    except (ValueError, TypeError) as exc:  # the app's validation: bad priority, delay, size
        raise InputError(str(exc)) from None
    click.echo(handle.id)


# -- looking at jobs ------------------------------------------------------------------


@cli.command()
@click.option("--state", type=click.Choice(STATES))
@click.option("--queue")
@click.option("--tenant")
@click.option("--task")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def jobs(
    cfg: CliState,
    /,
    as_json: bool,
    **filters: Any,
) -> None:
    """List jobs, newest first."""
    found = query_jobs(cfg.app(), **filters)
    if as_json:
        print_json([job_to_dict(j) for j in found])
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
            note = Text(short(f"{job.error.type}: {job.error.message}"), style="red")
        table.add_row(
            Text(job.id),
            Text(job.task),
            state_text(job.state),
            Text(job.queue),
            tenant_text(job.tenant),
            str(job.priority),
            f"{job.attempt}/{job.max_attempts}",
            ago(job.enqueued_at),
            note,
        )
    console().print(table)


@cli.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def job_detail(cfg: CliState, job_id: str, as_json: bool) -> None:
    """Show one job: arguments, state, progress, result, every error."""
    job = find_job(cfg.app(), job_id)
    if as_json:
        print_json(job_to_dict(job))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("task", Text(job.task))
    grid.add_row("state", state_text(job.state))
    grid.add_row("queue", Text(job.queue))
    grid.add_row("tenant", tenant_text(job.tenant))
    grid.add_row("priority", str(job.priority))
    grid.add_row("attempts", f"{job.attempt} of {job.max_attempts}")
    grid.add_row("args", Text(json.dumps(job.args, ensure_ascii=False)))
    grid.add_row("kwargs", Text(json.dumps(job.kwargs, ensure_ascii=False)))
    grid.add_row("enqueued", f"{iso(job.enqueued_at)} ({ago(job.enqueued_at)})")
    if job.run_at is not None:
        grid.add_row("due", f"{iso(job.run_at)} ({ago(job.run_at)})")
    if job.started_at is not None:
        grid.add_row("started", f"{iso(job.started_at)} ({ago(job.started_at)})")
    if job.finished_at is not None:
        grid.add_row("finished", f"{iso(job.finished_at)} ({ago(job.finished_at)})")
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
        subtitle = iso(err.at) or ""
        parts.append(Panel(body, title=title, title_align="left", subtitle=subtitle, expand=False))
    console().print(Panel(Group(*parts), title=f"job {job.id}", title_align="left", expand=False))


@cli.command()
@click.option("--queue")
@click.option("--tenant")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def dead(cfg: CliState, queue: str | None, tenant: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs (the dead-letter queue) with their last error."""
    found = query_jobs(cfg.app(), state=JobState.DEAD, queue=queue, tenant=tenant, limit=limit)
    if as_json:
        print_json([job_to_dict(j) for j in found])
        return
    if not found:
        console().print("no dead jobs")
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
            tenant_text(job.tenant),
            f"{job.attempt}/{job.max_attempts}",
            ago(job.finished_at),
            Text(short(f"{err.type}: {err.message}", 80) if err else "-"),
        )
    console().print(table)
    console().print("[dim]conveyor job ID[/] shows tracebacks; [dim]conveyor replay ID[/] re-runs")


@cli.command()
@click.argument("job_id")
@click.pass_obj
def replay(cfg: CliState, job_id: str) -> None:
    """Re-queue a dead or cancelled job with fresh attempts."""
    app = cfg.app()
    job = find_job(app, job_id)
    with store_errors():
        done = app.replay(job_id)
    if not done:
        now = find_job(app, job_id).state
        raise CliError(
            f"job {job_id} is {now.value} (was {job.state.value}): "
            "only dead or cancelled jobs can be replayed"
        )
    click.echo(f"replayed {job_id}: queued again with {job.max_attempts} fresh attempt(s)")


@cli.command()
@click.argument("job_id")
@click.pass_obj
def cancel(cfg: CliState, job_id: str) -> None:
    """Cancel a job (a running one is stopped by its worker)."""
    with store_errors():
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
def migrate(cfg: CliState) -> None:
    """Create or upgrade the store's schema (safe to run again, and concurrently)."""
    from conveyor.backends import create_backend

    app = cfg.app()

    async def run() -> list[int]:
        backend = create_backend(app.url)
        try:
            return await backend.migrate()
        finally:
            await backend.close()

    with store_errors():
        applied = asyncio.run(run())
    if applied:
        click.echo(f"applied migration(s) {', '.join(map(str, applied))}")
    else:
        click.echo("schema is up to date")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def stats(cfg: CliState, as_json: bool) -> None:
    """Job counts and oldest wait per queue and tenant."""
    with store_errors():
        rows = sorted(cfg.app().stats(), key=lambda s: (s.queue, s.tenant or ""))
    if as_json:
        print_json([asdict(s) for s in rows])
        return
    if not rows:
        console().print("no jobs yet")
        return
    table = Table(title="conveyor stats", title_justify="left")
    for name in ("queue", "tenant"):
        table.add_column(name)
    counts = STATS_STATES
    for name in counts:
        table.add_column(name, justify="right")
    table.add_column("oldest wait", justify="right")
    for s in rows:
        wait = "-" if s.oldest_wait is None else duration(s.oldest_wait)
        cells = [str(getattr(s, name)) for name in counts]
        table.add_row(Text(s.queue), tenant_text(s.tenant), *cells, wait)
    if len(rows) > 1:
        table.add_section()
        totals = [str(sum(getattr(s, name) for s in rows)) for name in counts]
        waits = [s.oldest_wait for s in rows if s.oldest_wait is not None]
        table.add_row("total", "", *totals, duration(max(waits)) if waits else "-", style="bold")
    console().print(table)
