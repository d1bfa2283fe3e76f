"""Processes of a chaos scenario: real ``conveyor worker`` supervisors, killed on purpose.

Every supervisor starts in its own process group; its worker processes start their own
sessions (``Supervisor._spawn``) and die with it (``PR_SET_PDEATHSIG``). ``Cluster.cleanup``
(a finalizer, whatever the test did) SIGKILLs every group and every worker pid it saw,
and resumes none: SIGKILL ends stopped processes too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import conveyor
from tests.acceptance.conftest import CONVEYOR, alive, children, log_tails, wait_for, wait_showing
from tests.chaos.chaos_tasks import HISTORY_ENV, make_app
from tests.chaos.history import Recorder, Report, StoredJob, check, read_history, store_view

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.chaos.worker_app:app"

__all__ = ["Cluster", "alive", "children", "wait_for"]


class Cluster:
    """One scenario's store, history file, producer app and worker processes."""

    def __init__(self, path: Path, url: str, engine: str) -> None:
        self.path = path
        self.url = url
        self.engine = engine
        self.history = path / "history.jsonl"
        self.recorder = Recorder(self.history)
        self.app: conveyor.App = make_app(url, self.history)
        self.env = {
            **os.environ,
            "CONVEYOR_URL": url,
            HISTORY_ENV: str(self.history),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.supervisors: list[subprocess.Popen[bytes]] = []
        self.worker_pids_seen: set[int] = set()
        self.logs: list[Path] = []

    # -- producers -------------------------------------------------------------------------
    def enqueue(self, task: str, *args: Any, **options: Any) -> str:
        """Enqueue and record the acknowledgement (only after the call returned)."""
        handle = self.app.enqueue(task, args=list(args), **options)
        self.recorder.record("enqueued", id=handle.id, key=options.get("key"))
        return handle.id

    def enqueue_many(self, task: str, calls: list[list[Any]], **options: Any) -> list[str]:
        handles = self.app.enqueue_many([{"task": task, "args": a, **options} for a in calls])
        for h in handles:
            self.recorder.record("enqueued", id=h.id)
        return [h.id for h in handles]

    # -- workers ---------------------------------------------------------------------------
    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """``conveyor worker`` (a supervisor) in its own process group, logging to a file."""
        log_path = self.path / f"worker-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [CONVEYOR, "worker", WORKER_APP, *args],
                cwd=self.path,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.supervisors.append(proc)
        return proc

    def worker_pids(self, supervisor: subprocess.Popen[bytes], count: int) -> list[int]:
        def up() -> list[int]:
            pids = children(supervisor.pid)
            return pids if len(pids) >= count else []

        pids = self.wait_for(up, timeout=20, what=f"{count} worker processes")
        self.worker_pids_seen.update(pids)
        return pids

    def kill(self, supervisor: subprocess.Popen[bytes]) -> None:
        """SIGKILL a whole worker: its supervisor's group, then the workers themselves (they
        die with the supervisor anyway; this only makes it immediate)."""
        pids = children(supervisor.pid)
        self.worker_pids_seen.update(pids)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        supervisor.wait(timeout=10)
        wait_for(lambda: not any(alive(p) for p in pids), 10, "killed workers to be gone")

    def stop_gracefully(self, supervisor: subprocess.Popen[bytes], timeout: float = 20) -> int:
        supervisor.send_signal(signal.SIGTERM)
        return supervisor.wait(timeout=timeout)

    def drain(self, *args: str, timeout: float = 60) -> None:
        """A ``--burst`` worker to completion (killed if it overruns ``timeout``)."""
        proc = self.start_worker("--burst", *args)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise AssertionError(
                f"burst worker overran {timeout} s\n{self.worker_logs()}"
            ) from None
        assert code == 0, f"burst worker exited {code}\n{self.worker_logs()}"

    def cleanup(self) -> None:
        for proc in self.supervisors:
            if proc.poll() is None:
                self.worker_pids_seen.update(children(proc.pid))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for pid in self.worker_pids_seen:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.app.close()
        self.recorder.close()

    # -- judging ---------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        return read_history(self.history)

    def store(self) -> list[StoredJob]:
        return store_view(self.app)

    def check(self, **options: Any) -> Report:
        # A loopback server's clock is this machine's; allow for scheduling noise only.
        options.setdefault("tolerance", 0.05 if self.engine == "sqlite" else 0.25)
        return check(self.events(), self.store(), **options)

    def states(self) -> dict[str, str]:
        return {j.id: j.state for j in self.store()}

    def worker_logs(self) -> str:
        return log_tails(self.logs, 4000)

    def wait_for(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        return wait_showing(condition, timeout, what, self.worker_logs)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Callable[[], bool]]:
    """``with deadline(30) as expired: while not expired(): ...`` bounds a loop."""
    end = time.monotonic() + seconds
    yield lambda: time.monotonic() > end


def python() -> str:
    return sys.executable
