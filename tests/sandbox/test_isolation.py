"""What a sandboxed task can and cannot see, and that it otherwise behaves like any task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import JobFailed, JobState

from .conftest import FAST, announce, announced, assert_no_processes_left, run

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-do-not-leak"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, app: conveyor.App) -> None:
    """The worker's environment holds what a real one would: the store URL and a secret."""
    monkeypatch.setenv("CONVEYOR_URL", app.url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


@pytest.mark.usefixtures("secret_env")
def test_the_environment_is_scrubbed(app: conveyor.App) -> None:
    sandbox = conveyor.Sandbox(env={"GREETING": "hello"})

    @app.task(name="peek", sandbox=sandbox)
    def peek() -> dict[str, Any]:
        return {
            "environ": dict(os.environ),
            "proc_self": _read("/proc/self/environ"),
            "proc_worker": _read(f"/proc/{os.getppid()}/environ"),
        }

    h = peek.enqueue()
    run(app)
    seen = h.wait(timeout=5)
    assert seen["environ"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "GREETING": "hello",
    }
    for text in (seen["proc_self"], seen["proc_worker"]):
        assert SECRET not in text and "CONVEYOR_URL" not in text
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET  # the worker's own is untouched


def test_inherited_descriptors_lead_nowhere(app: conveyor.App) -> None:
    """The worker's open files (its store) are /dev/null in the child."""

    @app.task(name="fds", sandbox=conveyor.Sandbox())
    def fds() -> list[str]:
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the descriptor listdir used
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return targets

    h = fds.enqueue()
    run(app)
    targets = h.wait(timeout=5)
    assert not any(t.endswith(("c.db", "c.db-wal", "c.db-shm")) for t in targets), targets


@pytest.fixture
def listening_port() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_network_is_cut_off(
    app: conveyor.App, listening_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="dial", max_attempts=1, sandbox=conveyor.Sandbox(network=False))
    def dial(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"

    @app.task(name="dial_allowed", sandbox=conveyor.Sandbox(network=True))
    def dial_allowed(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"

    with caplog.at_level(logging.WARNING, logger="conveyor.sandbox"):
        cut, allowed = dial.enqueue(listening_port), dial_allowed.enqueue(listening_port)
        run(app)
    assert allowed.wait(timeout=5) == "connected"
    warned = "network isolation is unavailable" in caplog.text
    job = cut.info()
    if warned:  # the machine refused a network namespace: said so, never claimed
        assert job.state is JobState.SUCCEEDED
    else:
        assert job.state is JobState.DEAD
        assert job.errors[0].type == "OSError"
        assert "unreachable" in job.errors[0].message


def test_results_of_sync_and_async_tasks(app: conveyor.App) -> None:
    @app.task(name="add", sandbox=conveyor.Sandbox())
    def add(x: int, y: int) -> dict[str, int]:
        return {"sum": x + y}

    @app.task(name="mul", sandbox=conveyor.Sandbox())
    async def mul(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x * y

    h1, h2 = add.enqueue(1, y=2), mul.enqueue(3, 4)
    run(app)
    assert h1.wait(timeout=5) == {"sum": 3}
    assert h2.wait(timeout=5) == 12


def test_progress_is_forwarded(app: conveyor.App) -> None:
    @app.task(name="steps", sandbox=conveyor.Sandbox())
    def steps() -> str:
        conveyor.current_job().progress(0.75, "three quarters")
        return "done"

    h = steps.enqueue()
    run(app)
    assert h.wait(timeout=5) == "done"
    job = h.info()
    assert (job.progress, job.progress_message) == (0.75, "three quarters")


def test_errors_retry_and_fail_follow_the_usual_policy(app: conveyor.App) -> None:
    @app.task(name="boom", max_attempts=2, backoff=FAST, sandbox=conveyor.Sandbox())
    def boom() -> None:
        raise ValueError(f"bad attempt {conveyor.current_job().attempt}")

    @app.task(name="give_up", max_attempts=5, sandbox=conveyor.Sandbox())
    def give_up() -> None:
        raise conveyor.Fail("not worth it")

    @app.task(name="again", max_attempts=2, sandbox=conveyor.Sandbox())
    def again() -> None:
        raise conveyor.Retry(delay=0, reason="later")

    b, g, a = boom.enqueue(), give_up.enqueue(), again.enqueue()
    run(app)
    job = b.info()
    assert job.state is JobState.DEAD and job.attempt == 2
    assert [e.type for e in job.errors] == ["ValueError", "ValueError"]
    assert job.errors[0].message == "bad attempt 1"
    assert job.errors[0].traceback and "bad attempt 1" in job.errors[0].traceback
    job = g.info()
    assert job.state is JobState.DEAD and job.attempt == 1
    assert (job.errors[0].type, job.errors[0].message) == ("Fail", "not worth it")
    job = a.info()
    assert job.attempt == 2 and [e.type for e in job.errors] == ["Retry", "Retry"]


def test_a_result_that_is_not_json_fails_the_attempt(app: conveyor.App) -> None:
    @app.task(name="setty", max_attempts=1, sandbox=conveyor.Sandbox())
    def setty() -> object:
        return {1, 2}

    h = setty.enqueue()
    run(app)
    with pytest.raises(JobFailed, match="not JSON-serializable"):
        h.wait(timeout=5)
    assert h.info().errors[0].type == "TypeError"


def test_a_crashing_attempt_is_a_failure_and_the_worker_carries_on(app: conveyor.App) -> None:
    @app.task(name="segv", max_attempts=1, sandbox=conveyor.Sandbox())
    def segv() -> None:
        announce()
        os.kill(os.getpid(), 11)

    @app.task(name="plain")
    def plain(n: int) -> int:
        return n

    @app.task(name="spin", sandbox=conveyor.Sandbox(cpu_seconds=1))
    def spin() -> None:
        while True:
            pass

    crash, bomb = segv.enqueue(), spin.enqueue()
    others = [plain.enqueue(i) for i in range(20)]
    run(app, concurrency=2)
    job = crash.info()
    assert job.state is JobState.DEAD
    assert job.errors[0].type == "SandboxCrashed"
    assert job.errors[0].message.startswith("the attempt's process died of SIGSEGV")
    assert bomb.info().state is JobState.DEAD
    assert [h.wait(timeout=5) for h in others] == list(range(20))
    assert_no_processes_left(*announced(crash))
