"""Refusing servers that can lose jobs silently; out-of-memory reaches the caller."""

from __future__ import annotations

import logging

import pytest
import redis.exceptions

import conveyor
import redis
from conveyor.backends import create_backend
from conveyor.backends.base import NewJob
from conveyor.backends.redis import RedisBackend, UnsafeServerError
from conveyor.job import new_job_id
from tests.redis.conftest import StartRedis


def job(payload: str = "") -> NewJob:
    return NewJob(
        id=new_job_id(),
        task="t",
        queue="default",
        tenant=None,
        priority=5,
        args_json=f'["{payload}"]',
        kwargs_json="{}",
        max_attempts=3,
    )


async def test_evicting_server_is_refused(private_redis: StartRedis) -> None:
    server = private_redis(["--maxmemory-policy", "allkeys-lru"])
    backend = create_backend(server.url)
    with pytest.raises(UnsafeServerError, match="allkeys-lru"):
        await backend.open()
    await backend.close()  # closing a backend that never opened is harmless


async def test_eviction_can_be_allowed_explicitly(
    private_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(["--maxmemory-policy", "volatile-lru", "--appendonly", "yes"])
    backend = create_backend(server.url + "?allow_eviction=1")
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        await backend.open()
    try:
        assert "volatile-lru" in caplog.text
        assert await backend.enqueue([j := job()]) == [j.id]
    finally:
        await backend.close()


async def test_no_persistence_is_a_warning(
    private_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(["--appendonly", "no"])
    backend = create_backend(server.url)
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        await backend.open()
    await backend.close()
    assert "no persistence" in caplog.text


async def test_durable_server_opens_quietly(
    private_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(["--appendonly", "yes"])
    backend = create_backend(server.url)
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        await backend.open()
    await backend.close()
    assert caplog.text == ""


async def test_out_of_memory_on_enqueue_raises(private_redis: StartRedis) -> None:
    server = private_redis(["--appendonly", "yes", "--maxmemory", "3mb"])
    backend = create_backend(server.url)
    await backend.open()
    try:
        big = "x" * 100_000
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for _ in range(200):  # 20 MB in all: far past the 3 MB limit
                await backend.enqueue([job(big)])
        # What only reads still runs: the operator can look at the full store, also
        # from a backend opened now (which cannot load the functions: scripts then).
        later = create_backend(server.url)
        await later.open()
        try:
            for reader in (backend, later):
                assert sum(s.queued for s in await reader.stats()) >= 1
                assert await reader.query(limit=5)
        finally:
            await later.close()
    finally:
        await backend.close()


def test_url_options() -> None:
    backend = RedisBackend("rediss://:secret@example.com:6380/3?prefix=app1&allow_eviction=1")
    assert backend.options.prefix == "app1"
    assert backend.options.allow_eviction is True
    assert backend.options.where == "example.com:6380/3"
    assert "prefix" not in backend.options.client_url
    assert backend.options.client_url.startswith("rediss://")
    assert RedisBackend("redis://localhost").options.prefix == "conveyor"
    with pytest.raises(ValueError):
        RedisBackend("redis://localhost/0?prefix=")


def test_the_sync_enqueue_checks_the_server_too(private_redis: StartRedis) -> None:
    """The sync fast path opens its own connections; it refuses the same servers."""
    server = private_redis(["--maxmemory-policy", "allkeys-lru"])
    app = conveyor.App(server.url)
    try:
        with pytest.raises(UnsafeServerError, match="allkeys-lru"):
            app.enqueue("t")
    finally:
        app.close()


def test_the_sync_check_reads_info_where_config_is_disabled(private_redis: StartRedis) -> None:
    server = private_redis(["--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""])
    app = conveyor.App(server.url)
    try:
        with pytest.raises(UnsafeServerError, match="allkeys-lru"):
            app.enqueue("t")
    finally:
        app.close()


def test_the_sync_enqueue_never_borrows_from_redis_py_pool(
    private_redis: StartRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's readiness poll of a brand-new TLS connection can take the server's
    TLS 1.3 session ticket for stale data ("Connection not ready"), at random: the sync
    path runs its checks, script load and calls on connections it made itself."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was borrowed from redis-py's pool")

    monkeypatch.setattr(redis.ConnectionPool, "get_connection", refuse)
    server = private_redis(["--appendonly", "yes"])
    app = conveyor.App(server.url)
    try:
        handle = app.enqueue("t", [1])
        admin = redis.Redis.from_url(server.url).connection_pool.make_connection()
        admin.send_command("SCRIPT", "FLUSH")  # NOSCRIPT next: loaded again
        assert admin.read_response() in ("OK", b"OK")
        admin.disconnect()
        assert app.enqueue("t", [2]).id != handle.id
    finally:
        app.close()
