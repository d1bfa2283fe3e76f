"""The sync API's enqueue runs in the caller's thread (no hop through the portal loop)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis.exceptions
from redis.client import Redis

import conveyor
from conveyor.backends.redis import UnsafeServerError, _blocking, _spin
from tests.chaos.proxy import Proxy
from tests.redis.conftest import StartRedis, free_port


def test_threads_share_one_app(store_url: str) -> None:
    app = conveyor.App(store_url)

    @app.task(name="t")
    def t(i: int, n: int) -> None: ...

    handles: list[conveyor.JobHandle] = []
    lock = threading.Lock()

    def produce(n: int) -> None:
        mine = [t.enqueue(i, n) for i in range(50)]
        mine += app.enqueue_many([t.s(i, n) for i in range(50, 60)])
        with lock:
            handles.extend(mine)

    try:
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len({h.id for h in handles}) == 8 * 60
        assert not app._portal.running  # nothing went through the background loop
        stored = app.jobs(state="queued", limit=1000)
        assert sorted(j.id for j in stored) == sorted(h.id for h in handles)
        assert {tuple(j.args) for j in stored} == {(i, n) for i in range(60) for n in range(8)}
    finally:
        app.close()


def test_an_evicting_server_is_refused_by_the_sync_enqueue(private_redis: StartRedis) -> None:
    server = private_redis(["--maxmemory-policy", "allkeys-lru"])
    app = conveyor.App(server.url)
    try:
        with pytest.raises(UnsafeServerError, match="allkeys-lru"):
            app.enqueue("t")
        with pytest.raises(UnsafeServerError):  # refused again, not remembered as open
            app.enqueue_many([{"task": "t"}])
    finally:
        app.close()


def test_bad_input_is_refused_before_connecting() -> None:
    app = conveyor.App(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with pytest.raises(ValueError, match="priority"):
            app.enqueue("t", priority=10)
        with pytest.raises(TypeError, match="not JSON-serializable"):
            app.enqueue("t", args=[object()])
        with pytest.raises(ValueError, match="over the limit"):
            app.enqueue("t", args=["x" * (app.defaults.max_payload + 1)])
    finally:
        app.close()


def test_scripts_flushed_or_server_restarted(private_redis: StartRedis) -> None:
    server = private_redis([])
    app = conveyor.App(server.url)
    admin = Redis.from_url(server.url)
    try:
        first = app.enqueue("t")
        admin.script_flush()  # as after a restart: the script is loaded again, once
        second = app.enqueue("t")
        assert {j.id for j in app.jobs()} == {first.id, second.id}

        server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            app.enqueue("t")
        server.start()  # the pool reconnects; the broken connection was dropped
        third = app.enqueue("t")
        reader = conveyor.App(server.url)  # app's own async connection broke with the server
        try:
            assert [j.id for j in reader.jobs()] == [third.id]  # no persistence: a new store
        finally:
            reader.close()
    finally:
        admin.close()
        app.close()


def test_a_connection_gone_silent_is_given_up_and_the_job_stored_once(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middlebox forgets the producer's connection: nothing comes back on it, and no
    reset either. The enqueue gives up after CALL_TIMEOUT and sends the same call on a
    new connection, instead of waiting until TCP gives up (hours)."""
    monkeypatch.setattr(_blocking, "CALL_TIMEOUT", 0.5)
    server = private_redis([])
    proxy = Proxy(server.port).start()
    app = conveyor.App(proxy.url(server.url))
    reader = conveyor.App(server.url)
    try:
        first = app.enqueue("t")
        assert proxy.forget() >= 1
        started = time.monotonic()
        second = app.enqueue("t")
        assert 0.5 <= time.monotonic() - started < 5
        assert sorted(j.id for j in reader.jobs()) == sorted([first.id, second.id])
    finally:
        reader.close()
        app.close()
        proxy.stop()


def test_a_frozen_server_runs_the_call_once_though_it_was_sent_twice(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops answering (SIGSTOP) with the call in its socket: the producer
    gives up and, as it sends the same call again on a new connection, the server thaws
    and runs what it was sent. Each job exists once, counted once, and the ids returned
    are the ones stored."""
    monkeypatch.setattr(_blocking, "CALL_TIMEOUT", 0.5)
    server = private_redis([])
    app = conveyor.App(server.url)
    reader = conveyor.App(server.url)
    assert server.process is not None
    pid = server.process.pid
    drop_idle = _blocking.BlockingEnqueuer._drop_idle

    def thaw_then_drop(self: _blocking.BlockingEnqueuer) -> None:
        os.kill(pid, signal.SIGCONT)  # the first try has given up: the retry starts now
        drop_idle(self)

    monkeypatch.setattr(_blocking.BlockingEnqueuer, "_drop_idle", thaw_then_drop)
    try:
        app.enqueue("t")  # connected and the script loaded
        os.kill(pid, signal.SIGSTOP)
        handles = app.enqueue_many([{"task": "t", "args": [i]} for i in range(100)])
        jobs = reader.jobs(limit=1000)
        assert len(jobs) == 101
        assert {h.id for h in handles} <= {j.id for j in jobs}
        assert [s.queued for s in reader.stats()] == [101]  # counted once, too
    finally:
        os.kill(pid, signal.SIGCONT)
        reader.close()
        app.close()


@pytest.mark.parametrize("spin_us", [None, "0"])
def test_single_enqueues_poll_for_their_reply_unless_turned_off(
    store_url: str, spin_us: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls: list[int] = []
    real_poll = _spin.select.poll

    class Counting:
        def __init__(self) -> None:
            self._poll = real_poll()

        def register(self, sock: object, events: int) -> None:
            self._poll.register(sock, events)

        def poll(self, timeout: int) -> list[tuple[int, int]]:
            polls.append(timeout)
            return self._poll.poll(timeout)

    monkeypatch.setattr(_spin.select, "poll", Counting)
    url = store_url if spin_us is None else f"{store_url}&spin_us={spin_us}"
    app = conveyor.App(url)
    try:
        handles = [app.enqueue("t", args=[i]) for i in range(20)]
        after_singles = len(polls)
        handles += app.enqueue_many([{"task": "t", "args": [i]} for i in range(20, 40)])
        assert len(polls) == after_singles  # a call of many jobs never polls
        handles += app.enqueue_many([{"task": "t", "args": [40]}])  # one job: polls
        assert [h.info().args for h in handles] == [[i] for i in range(41)]
    finally:
        app.close()
    if spin_us == "0":
        assert polls == []
    else:  # every single enqueue polled (the local server answers within the budget)
        assert polls and set(polls) == {0}
