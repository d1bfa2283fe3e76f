"""Sandboxed execution: real child processes, real limits, a real SQLite store.

Each task reports its own pid (and user id) as its progress message as soon as it
starts, so that a test can check afterwards, through ``/proc``, that no process of the
attempt is left. Every test is bounded by a pytest timeout and by the sandbox's limits.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import conveyor

if not sys.platform.startswith("linux"):
    pytest.skip("sandboxed execution needs Linux", allow_module_level=True)

#: Retries come at once, so that a test sees every attempt quickly.
FAST = conveyor.Backoff(base=0.01, factor=1.0, cap=0.01, jitter=False)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[conveyor.App]:
    app = conveyor.App(f"sqlite:///{tmp_path / 'c.db'}")
    yield app
    app.close()


def run(app: conveyor.App, **kwargs: object) -> conveyor.Worker:
    """An in-process worker until nothing is left to do."""
    kwargs.setdefault("concurrency", 4)
    worker = conveyor.Worker(app, handle_signals=False, **kwargs)  # type: ignore[arg-type]
    worker.run(burst=True)
    return worker


def announce() -> None:
    """Called first thing inside a sandboxed task: 'pid uid' as the progress message."""
    conveyor.current_job().progress(0.0, f"{os.getpid()} {os.getuid()}")


def announced(handle: conveyor.JobHandle, within: float = 10.0) -> tuple[int, int]:
    """The pid and uid the attempt announced (waits for it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = handle.info().progress_message
        if message:
            pid, uid = message.split()
            return int(pid), int(uid)
        time.sleep(0.02)
    raise AssertionError(f"job {handle.id} never announced itself")


def live_processes(pid: int, uid: int) -> list[int]:
    """Processes (not zombies) of an attempt: in its process group, or of its user id
    when that id is the attempt's own (the worker ran as root)."""
    own_uid = uid != os.getuid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["State"].strip().startswith("Z"):
            continue
        pgid = int(stat.rpartition(b")")[2].split()[2])
        if pgid == pid or (own_uid and int(fields["Uid"].split()[0]) == uid):
            found.append(int(name))
    return found


def assert_no_processes_left(pid: int, uid: int) -> None:
    assert live_processes(pid, uid) == []


def in_background(worker: conveyor.Worker, burst: bool = False) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"burst": burst}, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def seconds_running(job: conveyor.Job) -> float:
    assert job.started_at is not None and job.finished_at is not None
    return (job.finished_at - job.started_at).total_seconds()
