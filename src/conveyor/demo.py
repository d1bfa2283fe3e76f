"""``conveyor demo``: one tenant floods the queue, and everybody else is still served.

On a fresh SQLite file:

1. ``acme`` enqueues 2,000 thumbnails at once (the flood);
2. real workers start: ``conveyor worker conveyor.demo_tasks:app -p 2 -c 8`` in a
   subprocess, as in production;
3. mid-flood, two small tenants (``globex``, ``initech``) and the back office (``ops``:
   urgent pages, low-priority clean-ups, a flaky CRM sync, a declined card) arrive;
4. a live view follows every tenant until all jobs are done; then the workers get
   SIGTERM and a summary shows how long each tenant waited for its jobs to start.
"""

from __future__ import annotations

import collections
import importlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor.app import App
from conveyor.config import URL_ENV
from conveyor.job import Job, JobState
from conveyor.task import Signature

FLOOD = 2000
SMALL_TENANTS = ("globex", "initech")
_DEADLINE = 120.0  # seconds: a demo that hangs is a bug, not something to wait for
_TICK = 0.2  # the live view polls the store 5 times a second


@dataclass
class _Run:
    app: App
    tasks: ModuleType
    title: str
    totals: dict[str, int] = field(default_factory=collections.Counter)
    arrival: float | None = None  # epoch seconds when the non-flood jobs were enqueued
    reports: list[str] = field(default_factory=list)  # ids of the progress-reporting jobs
    events: list[str] = field(default_factory=list)


def run_demo(db: str | None = None, processes: int = 2, concurrency: int = 8) -> int:
    console = Console(highlight=False)
    if db:
        path = Path(db).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="conveyor-demo-")) / "demo.db"
    for suffix in ("", "-wal", "-shm"):  # start from nothing: old jobs would skew it all
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    tasks = _load_tasks(url)
    run = _Run(tasks.app, tasks, f"Conveyor demo: {processes} processes x {concurrency} slots")
    console.print(
        Panel.fit(
            f"[bold]acme[/] floods the queue with {FLOOD:,} jobs; globex, initech and ops "
            f"arrive mid-flood.\nStore: [cyan]{url}[/]",
            title="Conveyor demo",
            border_style="blue",
        )
    )
    run.app.enqueue_many([tasks.thumbnail.options(tenant="acme").s(i) for i in range(FLOOD)])
    run.totals["acme"] = FLOOD
    log_path = path.with_suffix(".workers.log")
    with open(log_path, "w") as log:
        workers = _start_workers(url, processes, concurrency, log)
        try:
            finished = _watch(console, run, workers)
        finally:
            _stop_workers(workers)
    console.line()
    if finished:
        _summary(console, run)
        console.print(
            f"\nLook around: [bold]CONVEYOR_URL={url} conveyor stats[/] (or jobs, dead, job ID)"
            f"\nWorker logs: {log_path}"
        )
    else:
        console.print(f"[red]the demo did not finish[/]; see the worker logs: {log_path}")
    run.app.close()
    return 0 if finished else 1


def _load_tasks(url: str) -> ModuleType:
    """Import the demo's tasks with their ``App()`` pointed at ``url`` (via the env)."""
    os.environ[URL_ENV] = url
    module = importlib.import_module("conveyor.demo_tasks")
    if module.app.url != url:  # imported earlier for another file: rebind
        module = importlib.reload(module)
    return module


def _start_workers(
    url: str, processes: int, concurrency: int, log: IO[str]
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "conveyor.cli", "worker", "conveyor.demo_tasks:app"]
    cmd += ["-p", str(processes), "-c", str(concurrency), "--lease", "10", "--grace", "5"]
    return subprocess.Popen(cmd, env={**os.environ, URL_ENV: url}, stdout=log, stderr=log)


def _stop_workers(workers: subprocess.Popen[bytes]) -> None:
    if workers.poll() is None:
        workers.send_signal(signal.SIGTERM)  # graceful: the supervisor stops its children
    try:
        workers.wait(timeout=15)
    except subprocess.TimeoutExpired:
        workers.kill()
        workers.wait()


def _arrivals(tasks: ModuleType) -> list[Signature]:
    """Everybody but acme: small tenants' invoices and reports, and the back office."""
    calls: list[Signature] = []
    for n, tenant in enumerate(SMALL_TENANTS, 1):
        calls += [tasks.invoice.options(tenant=tenant).s(1000 * n + i) for i in range(6)]
        calls.append(tasks.export_report.options(tenant=tenant).s(48_000 // n))
    ops = {"tenant": "ops"}
    alerts = ["disk 91% on db-2", "p99 latency > 2 s", "cert expires in 3 days"]
    calls += [tasks.page_oncall.options(**ops).s(alert) for alert in alerts]
    calls += [tasks.cleanup.options(**ops).s(t) for t in ("sessions", "audit_log", "tmp_files")]
    calls += [tasks.sync_crm.options(**ops).s(f"account-{i}") for i in (17, 42, 99)]
    calls.append(tasks.charge_card.options(**ops).s(4711))
    return calls


def _watch(console: Console, run: _Run, workers: subprocess.Popen[bytes]) -> bool:
    """The live view, until every job is finished (True), or the workers exit or the
    deadline passes (False)."""
    started = time.monotonic()
    history: collections.deque[tuple[float, int]] = collections.deque(maxlen=10)
    with Live(console=console, refresh_per_second=10) as live:
        while (elapsed := time.monotonic() - started) < _DEADLINE:
            rows = _tenant_rows(run.app)
            done = sum(r["done"] for r in rows.values())
            history.append((elapsed, done))
            if run.arrival is None and rows.get("acme", {}).get("done", 0) >= 100:
                _arrive(run, rows, elapsed)
                rows = _tenant_rows(run.app)  # show the newcomers as waiting at once
            reports = [run.app.job(job_id).info() for job_id in run.reports]
            live.update(_render(run, rows, reports, elapsed, _rate(history)))
            if run.arrival is not None and done >= sum(run.totals.values()):
                run.events.append(f"{elapsed:5.1f} s  all {done:,} jobs finished")
                live.update(_render(run, rows, reports, elapsed, _rate(history)))
                return True
            if workers.poll() is not None:
                return False
            time.sleep(_TICK)
    return False


def _arrive(run: _Run, rows: dict[str, dict[str, int]], elapsed: float) -> None:
    calls = _arrivals(run.tasks)
    run.arrival = time.time()
    handles = run.app.enqueue_many(calls)
    for call in calls:
        run.totals[call.options.tenant or "-"] += 1
    run.reports = [h.id for h, c in zip(handles, calls, strict=True) if "export" in c.task]
    waiting = rows["acme"]["waiting"]
    run.events.append(
        f"{elapsed:5.1f} s  globex, initech, ops: +{len(calls)} jobs, "
        f"behind {waiting:,} waiting acme jobs"
    )


def _tenant_rows(app: App) -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = {}
    for s in app.stats():
        row = rows.setdefault(s.tenant or "-", collections.Counter())
        row["done"] += s.succeeded + s.dead + s.cancelled
        row["running"] += s.running
        row["waiting"] += s.queued + s.scheduled
        row["retrying"] += s.retrying
        row["dead"] += s.dead
    return rows


def _rate(history: collections.deque[tuple[float, int]]) -> float:
    (t0, d0), (t1, d1) = history[0], history[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def _render(
    run: _Run, rows: dict[str, dict[str, int]], reports: list[Job], elapsed: float, rate: float
) -> RenderableType:
    table = Table(box=None, header_style="bold", padding=(0, 1))
    table.add_column("tenant")
    table.add_column("")
    for name in ("done", "running", "waiting", "retrying", "dead"):
        table.add_column(name, justify="right")
    for tenant, total in run.totals.items():
        row = rows.get(tenant, {})
        done, dead = row.get("done", 0), row.get("dead", 0)
        style = "green" if done == total else "yellow"
        table.add_row(
            Text(tenant, style="bold"),
            ProgressBar(total=total, completed=done, width=28, complete_style=style),
            f"{done:,}/{total:,}",
            str(row.get("running", 0)),
            f"{row.get('waiting', 0):,}",
            str(row.get("retrying", 0)),
            Text(str(dead), style="red" if dead else ""),
        )
    parts: list[RenderableType] = [table, Text("")]
    if reports:
        bars = Table.grid(padding=(0, 1))
        for job in reports:
            fraction = job.progress or (1.0 if job.state is JobState.SUCCEEDED else 0.0)
            bars.add_row(
                Text(f"{job.tenant} export_report", style="cyan"),
                ProgressBar(total=1.0, completed=fraction, width=20),
                f"{fraction:4.0%}",
                Text(job.progress_message or job.state.value, style="dim"),
            )
        parts.append(bars)
    parts += [Text(event, style="dim") for event in run.events]
    subtitle = f"{elapsed:4.1f} s | {rate:,.0f} jobs/s"
    return Panel(Group(*parts), title=run.title, subtitle=subtitle, border_style="blue")


def _summary(console: Console, run: _Run) -> None:
    assert run.arrival is not None
    jobs = run.app.jobs(limit=sum(run.totals.values()) + 100)
    starts = sorted((j.started_at.timestamp(), j.id) for j in jobs if j.started_at)
    rank = {job_id: n for n, (_, job_id) in enumerate(starts, 1)}
    by_tenant: dict[str, list[Job]] = collections.defaultdict(list)
    for job in jobs:
        by_tenant[job.tenant or "-"].append(job)
    table = Table(title="Summary (wait = started_at - enqueued_at)", title_justify="left")
    table.add_column("tenant")
    for name in ("jobs", "ok", "dead", "retried", "wait p50", "wait max", "last start"):
        table.add_column(name, justify="right")
    for tenant in run.totals:
        group = by_tenant.get(tenant, [])
        waits = [_wait(j) for j in group if j.started_at]
        last = max((rank[j.id] for j in group if j.id in rank), default=0)
        dead = sum(j.state is JobState.DEAD for j in group)
        table.add_row(
            Text(tenant, style="bold"),
            f"{len(group):,}",
            Text(f"{sum(j.state is JobState.SUCCEEDED for j in group):,}", style="green"),
            Text(str(dead), style="red" if dead else ""),
            str(sum(j.attempt > 1 for j in group)),
            f"{statistics.median(waits):.2f} s" if waits else "-",
            f"{max(waits):.2f} s" if waits else "-",
            f"#{last:,}",
        )
    console.print(table)
    console.print(f"[dim]last start: the tenant's last job was the Nth of {len(starts):,} to start")
    before = sum(1 for at, _ in starts if at < run.arrival)
    acme_left = sum(1 for j in by_tenant["acme"] if _started_after(j, run.arrival))
    small = [j for t in SMALL_TENANTS for j in by_tenant.get(t, [])]
    within = max(rank[j.id] for j in small) - before
    ops = by_tenant.get("ops", [])
    lines = [
        f"\n[bold green]Fair[/]: globex and initech arrived behind {acme_left:,} waiting acme "
        f"jobs; all {len(small)} of theirs started within the next {within} starts "
        f"(in FIFO order they would have waited for all {acme_left:,}).",
    ]
    for task, label in [("demo.page_oncall", "Urgent"), ("demo.cleanup", "Low priority")]:
        ranks = sorted(rank[j.id] for j in ops if j.task == task and j.id in rank)
        lines.append(f"[bold]{label}[/] ({task}): started #{ranks[0]:,} to #{ranks[-1]:,}")
    retried = [j for j in ops if j.task == "demo.sync_crm" and j.state is JobState.SUCCEEDED]
    if retried:
        job = retried[0]
        lines.append(
            f"[bold]Retried[/]: {job.task}({job.args[0]!r}) failed {len(job.errors)}x with "
            f"{job.errors[0].type}, then succeeded on attempt {job.attempt}"
        )
    for job in ops:
        if job.state is JobState.DEAD and job.error:
            lines.append(
                f"[bold red]Dead letter[/]: {job.task} ({job.error.type}: {job.error.message})"
                f"\n  conveyor job {job.id}"
            )
    console.print("\n".join(lines))


def _wait(job: Job) -> float:
    assert job.started_at is not None
    return (job.started_at - job.enqueued_at).total_seconds()


def _started_after(job: Job, when: float) -> bool:
    return job.started_at is None or job.started_at.timestamp() >= when
