"""A worker carries on through a database crash: a private cluster on a free port is
killed with SIGKILL (postmaster and all) and restarted while the worker runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import conveyor

BIN = Path(os.environ.get("CONVEYOR_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """initdb + pg_ctl in a temporary directory (as user postgres when we are root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql://conveyor@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "conveyor", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(BIN / tool), *args], capture_output=True, timeout=120
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, [tool, *args], done.stdout, done.stderr
            )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        deadline = time.monotonic() + 60
        while True:  # after a crash, old backends may hold shared memory for a moment
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(self.root / "log"),
                    "-w",
                    "-t",
                    "30",
                    "start",
                )
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def kill9(self) -> None:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until nothing listens on the port any more
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.05)
        raise AssertionError("the killed server still accepts connections")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    if not (BIN / "initdb").exists():
        pytest.skip(f"!!! SKIPPED: no PostgreSQL binaries in {BIN} (CONVEYOR_TEST_PG_BIN) !!!")
    # Not under pytest's tmp_path: as root, that is private to root, and the cluster
    # runs as user postgres.
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    try:
        cluster = PrivateCluster(root)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _retry(fn: Any, *args: Any, attempts: int = 100) -> Any:
    """The app's own calls fail while the server is away; a producer would retry."""
    for attempt in range(attempts):
        try:
            return fn(*args)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def test_worker_survives_a_database_crash_and_restart(cluster: PrivateCluster) -> None:
    app = conveyor.App(f"{cluster.url}?schema=conveyor")

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    worker = conveyor.Worker(
        app, concurrency=4, handle_signals=False, poll_interval=0.2, maintenance_interval=0.2
    )
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    try:
        before = [square.enqueue(i) for i in range(20)]
        thread.start()
        assert [h.wait(timeout=30) for h in before] == [i * i for i in range(20)]

        cluster.kill9()
        time.sleep(1.0)  # the worker meets refused connections for a while
        cluster.start()

        after = [_retry(square.enqueue, i) for i in range(20, 40)]
        results = [_retry(h.wait, 60) for h in after]
        assert results == [i * i for i in range(20, 40)]
        assert thread.is_alive(), "the worker stopped instead of riding out the restart"
    finally:
        worker.stop()
        thread.join(timeout=60)
        app.close()
    assert not thread.is_alive()
