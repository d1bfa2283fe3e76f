"""Fixtures for Redis-only tests: the shared server, and private ``redis-server``
processes for tests that must configure, kill or restart their server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import redis
from conveyor.backends import Backend, create_backend
from tests.services import REDIS_URL, require_service
from tests.stores_redis import redis_store


@pytest.fixture
def store_url() -> Iterator[str]:
    """A fresh private store (own key prefix) on the shared Redis server."""
    with redis_store() as url:
        yield url


@pytest.fixture
async def backend(store_url: str) -> AsyncIterator[Backend]:
    """An open backend on ``store_url``."""
    b = create_backend(store_url)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def client(store_url: str) -> redis.Redis:
    """A plain client of the shared server, for looking at a store's keys."""
    return redis.Redis.from_url(store_url.split("?", 1)[0], decode_responses=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own, on a free loopback port."""

    def __init__(self, directory: Path, args: list[str]) -> None:
        self.directory = directory
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            [*cmd, "--save", "", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


StartRedis = Callable[[list[str]], PrivateRedis]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """``private_redis([args])`` -> a started PrivateRedis; all are killed at the end."""
    require_service("Redis", REDIS_URL)
    if shutil.which("redis-server") is None:
        pytest.skip("!!! SKIPPED: no redis-server executable to start a private server !!!")
    started: list[PrivateRedis] = []

    def start(args: list[str]) -> PrivateRedis:
        directory = tmp_path / f"redis{len(started)}"
        directory.mkdir()
        server = PrivateRedis(directory, args)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()
