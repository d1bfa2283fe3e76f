"""The sync API's enqueue runs in the caller's thread (no hop through the portal loop)."""

from __future__ import annotations

import threading

import pytest
import redis.exceptions
from redis.client import Redis

import conveyor
from conveyor.backends.redis import UnsafeServerError
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
