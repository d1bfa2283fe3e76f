"""Cancel, lost lease and graceful release of a sandboxed attempt kill all its processes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

import conveyor
from conveyor import JobState

from .conftest import (
    announce,
    announced,
    assert_no_processes_left,
    in_background,
    live_processes,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def _sleeper(app: conveyor.App) -> conveyor.Task[[], None]:
    @app.task(name="sleeper", sandbox=conveyor.Sandbox(wall_seconds=60))
    def sleeper() -> None:
        announce()
        if os.fork() == 0:  # a child of its own, which must go too
            time.sleep(60)
        time.sleep(60)

    return sleeper


def test_cancel_kills_the_attempt(app: conveyor.App) -> None:
    h = _sleeper(app).enqueue()
    worker = conveyor.Worker(app, lease=1.5, handle_signals=False)
    thread = in_background(worker, burst=True)
    pid, uid = announced(h)
    assert app.cancel(h.id) is JobState.RUNNING
    thread.join(10)
    assert not thread.is_alive()
    assert h.info().state is JobState.CANCELLED
    assert_no_processes_left(pid, uid)


def test_graceful_stop_releases_and_kills_the_attempt(app: conveyor.App) -> None:
    h = _sleeper(app).enqueue()
    worker = conveyor.Worker(app, grace=0.2, handle_signals=False)
    thread = in_background(worker)
    pid, uid = announced(h)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    job = h.info()
    assert job.state is JobState.QUEUED and job.attempt == 0  # released: no attempt burned
    assert_no_processes_left(pid, uid)


def test_other_jobs_run_while_a_sandboxed_one_is_stopped(app: conveyor.App) -> None:
    sleeper = _sleeper(app)

    @app.task(name="quick")
    def quick(n: int) -> int:
        return n

    h = sleeper.enqueue()
    worker = conveyor.Worker(app, concurrency=2, lease=1.5, handle_signals=False)
    thread = in_background(worker)
    pid, uid = announced(h)
    quick_handles = [quick.enqueue(i) for i in range(10)]
    assert [q.wait(timeout=10) for q in quick_handles] == list(range(10))
    app.cancel(h.id)
    wait_until(lambda: h.info().state is JobState.CANCELLED)
    assert_no_processes_left(pid, uid)
    again = quick.enqueue(99)
    assert again.wait(timeout=10) == 99
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_a_lost_lease_kills_the_attempt(app: conveyor.App, tmp_path: Path) -> None:
    h = _sleeper(app).enqueue()
    worker = conveyor.Worker(app, lease=1.5, handle_signals=False)
    thread = in_background(worker)
    pid, uid = announced(h)
    # As if the reaper had given the job to another worker: our token no longer holds.
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as db, db:
        db.execute("UPDATE jobs SET lease_token = 'taken-over' WHERE id = ?", (h.id,))
    wait_until(lambda: not live_processes(pid, uid))
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert h.info().state is JobState.RUNNING  # our outcome was dropped, not recorded
