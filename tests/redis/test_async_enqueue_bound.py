"""The async enqueue (``enqueue_async``, ``enqueue_many_async``, the scheduler's ticks)
never waits for ever on a silent connection: it gives up after ``CALL_TIMEOUT``
(or the URL's ``socket_timeout``) and sends the same call once more on a new connection,
as the sync enqueue does (tests/redis/test_blocking_enqueue.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.exceptions

import conveyor
from conveyor.backends.redis import _blocking
from conveyor.backends.redis._url import RedisOptions
from tests.chaos.proxy import Proxy
from tests.redis.conftest import StartRedis


async def test_a_connection_gone_silent_is_given_up_and_the_job_stored_once(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middlebox forgets the producer's connections: nothing comes back on them and no
    reset comes either. Without a bound the call would wait until TCP gives up (hours);
    the test's own 15 s bound turns that into a failure."""
    monkeypatch.setattr(_blocking, "CALL_TIMEOUT", 0.5)
    server = private_redis([])
    proxy = Proxy(server.port).start()
    app = conveyor.App(proxy.url(server.url))
    reader = conveyor.App(server.url)
    try:
        first = await app.enqueue_async("t")
        assert proxy.forget() >= 1
        started = time.monotonic()
        async with asyncio.timeout(15):
            second = await app.enqueue_async("t")
        assert 0.5 <= time.monotonic() - started < 5
        stored = [j.id for j in await reader.jobs_async()]
        assert sorted(stored) == sorted([first.id, second.id])
    finally:
        await reader.close_async()
        await app.close_async()
        proxy.stop()


async def test_a_frozen_server_runs_the_call_once_though_it_was_sent_twice(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stops answering (SIGSTOP) with a batch in its socket; the producer
    gives up after a second and sends the batch again on a new connection; the server
    thaws half a second into that second try. Whether it ran the first copy or not,
    each job exists once, is counted once, and the ids returned are the ones stored."""
    monkeypatch.setattr(_blocking, "CALL_TIMEOUT", 1.0)
    server = private_redis([])
    assert server.process is not None
    pid = server.process.pid
    app = conveyor.App(server.url)
    reader = conveyor.App(server.url)
    try:
        await app.enqueue_async("t")  # connected, the library loaded
        os.kill(pid, signal.SIGSTOP)
        asyncio.get_running_loop().call_later(1.5, os.kill, pid, signal.SIGCONT)
        started = time.monotonic()
        handles = await app.enqueue_many_async([{"task": "t", "args": [i]} for i in range(100)])
        assert time.monotonic() - started >= 1.0
        assert "trying once more" in caplog.text  # it did give up once
        jobs = await reader.jobs_async(limit=1000)
        assert len(jobs) == 101
        assert {h.id for h in handles} <= {j.id for j in jobs}
        assert [s.queued for s in await reader.stats_async()] == [101]
    finally:
        os.kill(pid, signal.SIGCONT)
        await reader.close_async()
        await app.close_async()


@pytest.mark.parametrize(
    ("query", "call_timeout", "at_least"),
    [
        ("", 0.3, 0.6),  # two tries of CALL_TIMEOUT
        ("?socket_timeout=1", 0.2, 2.0),  # the URL's bound wins over CALL_TIMEOUT
    ],
)
async def test_a_server_that_never_answers_raises_after_two_tries(
    private_redis: StartRedis,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    call_timeout: float,
    at_least: float,
) -> None:
    """Still frozen after both tries: the caller gets a timeout error, not a hang."""
    monkeypatch.setattr(_blocking, "CALL_TIMEOUT", call_timeout)
    server = private_redis([])
    assert server.process is not None
    pid = server.process.pid
    app = conveyor.App(server.url + query)
    try:
        await app.enqueue_async("t")
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        # redis-py raises its own TimeoutError when the URL gives it socket_timeout.
        with pytest.raises((TimeoutError, redis.exceptions.TimeoutError)):
            async with asyncio.timeout(15):  # the test's own bound, far above two tries
                await app.enqueue_async("t")
        assert at_least <= time.monotonic() - started < at_least + 5
    finally:
        os.kill(pid, signal.SIGCONT)
        await app.close_async()


def test_socket_timeout_in_the_url() -> None:
    """It bounds the async enqueue too, and still reaches redis-py; a bad one is refused."""
    options = RedisOptions.parse("redis://h/0?socket_timeout=2.5")
    assert options.socket_timeout == 2.5
    assert "socket_timeout=2.5" in options.client_url
    assert RedisOptions.parse("redis://h/0").socket_timeout is None
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match=r"socket_timeout=.*positive number of seconds"):
            RedisOptions.parse(f"redis://h/0?socket_timeout={bad}")


async def test_the_first_enqueue_after_a_server_restart_goes_through(
    private_redis: StartRedis,
) -> None:
    """The pooled connection died with the server (and the function library with it): the
    next async enqueue still stores its job, on a new connection."""
    # fsync before each reply: with the default (every second) a loaded machine may not
    # have written the first job yet when the server is killed.
    server = private_redis(["--appendonly", "yes", "--appendfsync", "always"])
    app = conveyor.App(server.url)
    try:
        first = await app.enqueue_async("t")
        server.kill()
        server.start()
        second = await app.enqueue_async("t")
        assert {j.id for j in await app.jobs_async()} == {first.id, second.id}
    finally:
        await app.close_async()
