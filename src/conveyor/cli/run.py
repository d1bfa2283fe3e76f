"""``conveyor worker | periodic | demo``: processes that run jobs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import click
from rich.table import Table
from rich.text import Text

from conveyor import __version__
from conveyor.cli._base import (
    CliState,
    InputError,
    cli,
    console,
    load_app_or_exit,
    print_json,
)
from conveyor.config import URL_ENV


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
    cfg: CliState,
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
    app = load_app_or_exit(app_path)
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


@cli.command()
@click.argument("app_path", metavar="MODULE:ATTR", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def periodic(cfg: CliState, app_path: str | None, as_json: bool) -> None:
    """Periodic jobs of an app and when each runs next."""
    from conveyor.scheduler import describe

    if app_path is not None:
        cfg.app_path = app_path
    if cfg.app_path is None:
        raise InputError("name the app whose schedules to list: conveyor periodic MODULE:ATTR")
    rows = describe(cfg.app())
    if as_json:
        print_json(
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
        console().print(f"{cfg.app_path} has no periodic jobs")
        return
    table = Table(title="conveyor periodic", title_justify="left")
    for name in ("name", "task", "schedule", "missed", "next run"):
        table.add_column(name)
    for s, at in rows:
        table.add_row(Text(s.name), Text(s.task), Text(s.when), s.missed, at.isoformat())
    console().print(table)


# -- demo -----------------------------------------------------------------------------
@cli.command()
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file (default: a temp dir).")
@click.option("-p", "--processes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
def demo(db: str | None, processes: int, concurrency: int) -> None:
    """Live tour: one tenant floods, the small ones are still served."""
    from conveyor.demo import run_demo

    sys.exit(run_demo(db=db, processes=processes, concurrency=concurrency))
