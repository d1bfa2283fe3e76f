"""Acceptance tests: the real ``conveyor`` command in subprocesses, as a user runs it.

Each test gets a fresh directory holding a small tasks module (``tasks_app.py``) and a
SQLite store (``CONVEYOR_URL=sqlite:///<tmp>/c.db``); commands run there. Every wait is
bounded, and a finalizer kills whatever a test started, children included, whatever
happened to the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APP = "tasks_app:app"
T = TypeVar("T")

#: The tasks the acceptance tests run. Each execution that matters leaves a line in a
#: file next to the module, so a test can count executions across processes (appends of
#: one short line are atomic with O_APPEND).
TASKS_APP = """
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import conveyor

app = conveyor.App()
HERE = Path(__file__).parent


def log(name, *fields):
    with open(HERE / name, "a") as f:
        f.write(" ".join(str(x) for x in fields) + "\\n")


@app.task(name="record", max_attempts=5)
def record(n, seconds=0.0):
    job = conveyor.current_job()
    log("executions.log", "start", job.id, job.attempt, os.getpid())
    time.sleep(seconds)
    log("executions.log", "end", job.id, job.attempt, os.getpid())
    return n


@app.task(name="suicide", max_attempts=2)
def suicide():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="sleepy")
def sleepy(seconds):
    time.sleep(seconds)
    return "woke up"


@app.task(name="async_sleepy")
async def async_sleepy(seconds):
    await asyncio.sleep(seconds)
    return "woke up"


@app.task(name="capped", concurrency=2)
def capped(n, seconds):
    start = time.time()
    time.sleep(seconds)
    log("capped.log", start, time.time(), os.getpid())


@app.task(name="needs_file", max_attempts=1)
def needs_file(name):
    path = HERE / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is missing")
    return path.read_text()


@app.task(name="stuck", timeout=1, max_attempts=1)
def stuck():
    time.sleep(30)  # ignores its timeout: only replacing the process stops it


if __name__ == "__main__":
    # A producer, as application code would be: python tasks_app.py TASK N KWARGS_JSON
    task, count, kwargs = app.tasks[sys.argv[1]], int(sys.argv[2]), json.loads(sys.argv[3])
    for handle in app.enqueue_many([task.s(i, **kwargs) for i in range(count)]):
        print(handle.id)
"""


class Conveyor:
    """One test's directory, store and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "tasks_app.py").write_text(TASKS_APP)
        self.url = f"sqlite:///{path}/c.db"
        self.env = {
            **os.environ,
            "CONVEYOR_URL": self.url,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.known_pids: set[int] = set()

    # -- commands ------------------------------------------------------------------------
    def run(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``conveyor ARGS``, to completion."""
        done = subprocess.run(
            [CONVEYOR, *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"conveyor {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}\n{self.worker_logs()}"
            )
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def enqueue(self, task: str, *options: str, app: bool = True) -> str:
        """Enqueue through the CLI; with ``app`` the task's own defaults apply."""
        prefix = ("--app", APP) if app else ()
        job_id = self.run(*prefix, "enqueue", task, *options).stdout.strip()
        assert len(job_id) == 36, job_id
        return job_id

    def produce(self, task: str, count: int, **kwargs: Any) -> list[str]:
        """Bulk-enqueue ``task(i, **kwargs)`` for i < count, the way application code does."""
        done = subprocess.run(
            [sys.executable, "tasks_app.py", task, str(count), json.dumps(kwargs)],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        ids = done.stdout.split()
        assert len(ids) == count
        return ids

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("job", job_id)
        return data

    def jobs(self, *filters: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.json("jobs", "--limit", "10000", *filters)
        return data

    def states(self) -> dict[str, str]:
        return {j["id"]: j["state"] for j in self.jobs()}

    # -- workers -------------------------------------------------------------------------
    def start_worker(self, *args: str, app: str = APP) -> subprocess.Popen[bytes]:
        """``conveyor worker tasks_app:app ARGS`` in the background; output to a log file."""
        log_path = self.path / f"worker-{len(self.procs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [CONVEYOR, "worker", app, *args],
                cwd=self.path,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def run_worker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``--burst`` worker, to completion."""
        done = self.run("worker", APP, "--burst", *args, timeout=timeout, check=False)
        assert done.returncode == 0, f"worker exited {done.returncode}:\n{done.stderr}"
        return done

    def worker_pids(self, supervisor: subprocess.Popen[bytes], count: int) -> list[int]:
        """The supervisor's worker processes, once ``count`` of them are up."""
        pids = wait_for(
            lambda: (p := children(supervisor.pid)) and len(p) >= count and p,
            timeout=15,
            what=f"{count} worker processes",
        )
        self.known_pids.update(pids)
        return pids

    def worker_logs(self) -> str:
        return log_tails(self.logs)

    def wait_for(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """``wait_for`` that shows the worker logs when it gives up."""
        return wait_showing(condition, timeout, what, self.worker_logs)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.known_pids.update(children(proc.pid))
                proc.kill()  # the workers die with it (PR_SET_PDEATHSIG)...
            proc.wait(timeout=10)
        for pid in self.known_pids:  # ...and if one did not, it does now
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def executions(self, name: str = "executions.log") -> list[list[str]]:
        path = self.path / name
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def cv(tmp_path: Path) -> Iterator[Conveyor]:
    conveyor = Conveyor(tmp_path)
    try:
        yield conveyor
    finally:
        conveyor.cleanup()


# -- processes --------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Running (a zombie is dead: only its exit status is left to collect)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def log_tails(paths: list[Path], limit: int = 6000) -> str:
    """The last ``limit`` characters of each log, for a failing test's message."""
    parts = []
    for path in paths:
        text = path.read_text(errors="replace") if path.exists() else ""
        parts.append(f"--- {path.name} ---\n{text[-limit:]}")
    return "\n".join(parts)


def wait_showing(
    condition: Callable[[], T], timeout: float, what: str, logs: Callable[[], str]
) -> T:
    """``wait_for`` that adds ``logs()`` to the failure when it gives up."""
    try:
        return wait_for(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None
