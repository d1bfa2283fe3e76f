"""Another connection holding SQLite's write lock longer than ``busy_timeout`` (a long
manual transaction, a backup) is a pause, not a failure: the worker logs it, tries
again, and carries on once the lock is free."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

import conveyor
from conveyor import JobState
from conveyor.backends.sqlite._connection import StoreBusy, url_options


def wait_state(app: conveyor.App, job_id: str, state: JobState, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if app.job(job_id).info().state is state:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {state.value}")


def test_busy_timeout_is_a_url_option() -> None:
    assert url_options("sqlite:///x.db").busy_timeout == 30.0
    options = url_options("sqlite:///x.db?busy_timeout=0.25&synchronous=full")
    assert (options.busy_timeout, options.synchronous) == (0.25, "FULL")
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match="busy_timeout must be a number of seconds > 0"):
            url_options(f"sqlite:///x.db?busy_timeout={bad}")


def test_a_worker_outlives_a_write_lock_held_past_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    app = conveyor.App(f"sqlite:///{db}?busy_timeout=0.1")
    started = threading.Event()

    @app.task(name="slow")
    def slow() -> str:
        started.set()
        time.sleep(0.5)
        return "done"

    @app.task(name="quick")
    def quick(n: int) -> int:
        return n

    # A lease far longer than the busy timeout: the worker's own call timeout does not
    # hide the lock error, the store answers "database is locked" first.
    worker = conveyor.Worker(
        app, concurrency=2, lease=20.0, maintenance_interval=0.05, handle_signals=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        job = slow.enqueue()
        assert started.wait(10)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the job's finish now has to wait
        try:
            with pytest.raises(StoreBusy, match=r"busy_timeout=0\.1"):
                quick.enqueue(0)  # a caller sees the specific error, nothing stored
            time.sleep(1.5)  # the finish, the maintenance loop: each meets the lock
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_state(app, job.id, JobState.SUCCEEDED)
        assert app.job(job.id).info().attempt == 1
        later = quick.enqueue(7)
        wait_state(app, later.id, JobState.SUCCEEDED)
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(20)
        app.close()
