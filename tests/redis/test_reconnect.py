"""A worker survives a Redis restart: it backs off, reconnects and carries on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis.exceptions

import conveyor
import redis
from conveyor import JobState
from tests.redis.conftest import StartRedis

T = TypeVar("T")


def retrying(fn: Callable[[], T], seconds: float = 20.0) -> T:
    """The test's own calls may meet the restart too; give them a bounded retry."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (redis.exceptions.ConnectionError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_state(app: conveyor.App, job_id: str, state: JobState, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if retrying(lambda: app.job(job_id).info()).state is state:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {state.value}")


def test_worker_survives_a_redis_restart(private_redis: StartRedis) -> None:
    server = private_redis(["--appendonly", "yes", "--appendfsync", "always"])
    app = conveyor.App(server.url)
    in_flight = threading.Event()

    @app.task(name="noop")
    def noop(n: int) -> int:
        return n

    @app.task(name="slow")
    def slow() -> str:
        in_flight.set()
        time.sleep(1.0)
        return "done"

    worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        before = [noop.enqueue(i) for i in range(20)]
        for h in before:
            wait_state(app, h.id, JobState.SUCCEEDED)

        slow_job = slow.enqueue()
        assert in_flight.wait(10)
        server.kill()  # SIGKILL: no goodbye to any client
        time.sleep(0.5)  # the worker meets the outage (heartbeats, claims, its finish)
        server.start()  # same port and directory: the AOF brings every job back

        after = retrying(lambda: [noop.enqueue(i) for i in range(20)])
        for h in after:
            wait_state(app, h.id, JobState.SUCCEEDED)
        # The job that ran through the outage finished under its own lease.
        wait_state(app, slow_job.id, JobState.SUCCEEDED)
        assert retrying(lambda: slow_job.info()).attempt == 1
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(20)
        app.close()
    assert not thread.is_alive()


def test_worker_survives_dropped_connections(private_redis: StartRedis) -> None:
    server = private_redis(["--appendonly", "yes"])
    app = conveyor.App(server.url)

    @app.task(name="noop")
    def noop(n: int) -> int:
        return n

    worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    admin = redis.Redis.from_url(server.url)
    try:
        first = noop.enqueue(1)
        wait_state(app, first.id, JobState.SUCCEEDED)
        # Cut every client connection, the idle worker's pub/sub one included.
        for kind in ("pubsub", "normal"):
            admin.client_kill_filter(_type=kind, skipme=True)
        time.sleep(0.2)
        later = retrying(lambda: [noop.enqueue(i) for i in range(10)])
        for h in later:
            wait_state(app, h.id, JobState.SUCCEEDED)
        assert thread.is_alive()
    finally:
        admin.close()
        worker.stop()
        thread.join(20)
        app.close()
    assert not thread.is_alive()
