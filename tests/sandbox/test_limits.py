"""Each broken limit ends the attempt within the limit + 2 s, with its own reason, dead
by default, and leaves no process behind."""

from __future__ import annotations

import os
import time

import pytest

import conveyor
from conveyor import JobState

from .conftest import FAST, announce, announced, assert_no_processes_left, run, seconds_running

pytestmark = pytest.mark.timeout(30)


def _limit_error(job: conveyor.Job) -> str:
    assert job.state is JobState.DEAD, job
    assert len(job.errors) == 1, job.errors  # not retried: a broken limit is final
    error = job.errors[0]
    assert error.type == "SandboxLimit"
    return error.message.partition(":")[0]


def test_infinite_loop_breaks_the_cpu_limit(app: conveyor.App) -> None:
    @app.task(name="spin", max_attempts=3, sandbox=conveyor.Sandbox(cpu_seconds=1))
    def spin() -> None:
        announce()
        while True:
            pass

    h = spin.enqueue()
    run(app)
    job = h.info()
    assert _limit_error(job) == "cpu_limit"
    assert seconds_running(job) < 1 + 2
    assert_no_processes_left(*announced(h))


def test_memory_bomb_breaks_the_memory_limit(app: conveyor.App) -> None:
    @app.task(name="hog", max_attempts=3, sandbox=conveyor.Sandbox(memory_mb=64))
    def hog() -> None:
        announce()
        chunks = []
        while True:
            chunks.append(bytearray(1 << 20))

    h = hog.enqueue()
    run(app)
    job = h.info()
    assert _limit_error(job) == "memory_limit"
    assert "64 MB" in job.errors[0].message
    assert_no_processes_left(*announced(h))


def test_memory_under_the_limit_is_fine(app: conveyor.App) -> None:
    @app.task(name="modest", sandbox=conveyor.Sandbox(memory_mb=64))
    def modest() -> int:
        return len(bytearray(32 << 20))

    h = modest.enqueue()
    run(app)
    assert h.wait(timeout=5) == 32 << 20


def test_sleeping_past_the_wall_limit(app: conveyor.App) -> None:
    @app.task(name="nap", sandbox=conveyor.Sandbox(wall_seconds=1))
    def nap() -> None:
        announce()
        time.sleep(60)

    h = nap.enqueue()
    run(app)
    job = h.info()
    assert _limit_error(job) == "wall_limit"
    assert 1 <= seconds_running(job) < 1 + 2
    assert_no_processes_left(*announced(h))


@pytest.mark.parametrize("style", ["gives_up", "keeps_trying"])
def test_fork_bomb_breaks_the_process_limit_and_leaves_nothing(
    app: conveyor.App, style: str
) -> None:
    @app.task(name="bomb", sandbox=conveyor.Sandbox(max_processes=16, wall_seconds=20))
    def bomb() -> None:
        announce()
        while True:
            if style == "gives_up":
                os.fork()  # raises once the kernel refuses
            else:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.001)

    h = bomb.enqueue()
    run(app)
    job = h.info()
    assert _limit_error(job) == "process_limit"
    assert seconds_running(job) < 5
    assert_no_processes_left(*announced(h))


def test_a_fork_bomb_that_leaves_its_process_group_is_still_killed(app: conveyor.App) -> None:
    if os.geteuid() != 0:
        pytest.skip("without root, processes are found by group, which setsid escapes")

    @app.task(name="escape", sandbox=conveyor.Sandbox(max_processes=8, wall_seconds=1))
    def escape() -> None:
        announce()
        if os.fork() == 0:
            os.setsid()  # a new session: killpg of the attempt's group misses it
            time.sleep(60)
            os._exit(0)
        time.sleep(60)

    h = escape.enqueue()
    run(app)
    assert _limit_error(h.info()) == "wall_limit"
    assert_no_processes_left(*announced(h))


def test_retry_on_limit_retries_a_broken_limit(app: conveyor.App) -> None:
    sandbox = conveyor.Sandbox(wall_seconds=0.3, retry_on_limit=True)

    @app.task(name="slow", max_attempts=2, backoff=FAST, sandbox=sandbox)
    def slow() -> None:
        time.sleep(60)

    h = slow.enqueue()
    run(app)
    job = h.info()
    assert job.state is JobState.DEAD and job.attempt == 2
    assert [e.message.partition(":")[0] for e in job.errors] == ["wall_limit", "wall_limit"]


def test_the_tasks_own_timeout_applies_and_is_retryable(app: conveyor.App) -> None:
    @app.task(
        name="late",
        timeout=0.3,
        max_attempts=2,
        backoff=FAST,
        sandbox=conveyor.Sandbox(wall_seconds=30),
    )
    def late() -> None:
        announce()
        time.sleep(60)

    h = late.enqueue()
    run(app)
    job = h.info()
    assert job.state is JobState.DEAD and job.attempt == 2
    assert [e.type for e in job.errors] == ["TimeoutError", "TimeoutError"]
    assert job.errors[0].message == "timed out after 0.3 s"
    assert_no_processes_left(*announced(h))


def test_await_in_a_sandbox_fails_clearly(app: conveyor.App) -> None:
    @app.task(name="hand_off", max_attempts=3, backoff=FAST, sandbox=conveyor.Sandbox())
    def hand_off() -> None:
        raise conveyor.Await(deadline=60)

    h = hand_off.enqueue()
    run(app)
    job = h.info()
    assert job.state is JobState.DEAD and job.attempt == 1  # not retried: it would await again
    assert job.errors[-1].message == "conveyor.Await is not supported in a sandboxed task"
