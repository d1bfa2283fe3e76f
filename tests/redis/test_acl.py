"""A Redis user allowed only what docs/redis.md lists ("A user with only the commands
it needs") runs the whole cycle: the safety checks, single and bulk enqueue (a bulk
run uses COPY), a worker draining jobs, a job that fails into the dead-letter queue,
cancel, stats and listing. The ACL line is read from the docs, so the two cannot drift."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import conveyor
import redis
from conveyor.job import JobState
from tests.redis.conftest import StartRedis

DOCS = Path(__file__).resolve().parents[2] / "docs" / "redis.md"


def documented_acl() -> list[str]:
    """The ``ACL SETUSER`` command of the docs' example, as arguments."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"^ACL SETUSER (conveyor .*?)(?:\n\n|\n```)", text, re.M | re.S)
    assert match, "docs/redis.md lost its ACL SETUSER example"
    return match.group(1).replace("\\\n", " ").split()


def test_a_user_with_only_the_documented_commands_runs_everything(
    private_redis: StartRedis,
) -> None:
    server = private_redis(["--appendonly", "yes"])
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", *documented_acl())
    admin.close()
    user = redis.Redis(port=server.port, username="conveyor", password="change-me")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.flushdb()  # the user is held to the list
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.hset("other-app:k", "f", "v")  # and to the store's keys
    user.close()
    app = conveyor.App(f"redis://conveyor:change-me@127.0.0.1:{server.port}/0?prefix=conveyor")
    attempts: list[int] = []

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    @app.task(name="broken", max_attempts=1)
    def broken() -> None:
        attempts.append(1)
        raise RuntimeError("always fails")

    try:
        one = square.enqueue(3)
        many = app.enqueue_many([square.s(i) for i in range(10)])  # a template run
        failed = broken.enqueue()
        doomed = square.options(delay=3600).enqueue(0)
        assert app.cancel(doomed.id) is JobState.CANCELLED
        worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
        thread = threading.Thread(target=worker.run, kwargs={"burst": True})
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        assert one.wait(timeout=10) == 9
        assert [h.wait(timeout=10) for h in many] == [i * i for i in range(10)]
        assert failed.info().state is JobState.DEAD and attempts == [1]
        (row,) = app.stats()
        assert row.queued == 0 and row.running == 0
        assert len(app.jobs(state="succeeded", limit=100)) == 11
    finally:
        app.close()
