"""Private store servers for the scenarios that kill them or put a network in front of
them, and the producer those scenarios run meanwhile.

``private_server(engine, directory)`` starts a ``redis-server`` or a PostgreSQL cluster
(``initdb`` + ``pg_ctl``) of the test's own on a free loopback port (the helpers of
``tests/redis`` and ``tests/postgres``), and stops it afterwards. Skipped loudly when
the service's tooling is missing, as the shared services are.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Cluster
from tests.services import POSTGRES_URL, REDIS_URL, require_service

#: Engines that talk to a server over TCP (SQLite has no server and no network).
NETWORK_ENGINES = ("redis", "postgres")


@dataclass
class PrivateServer:
    """What a scenario needs of a private server: where it listens, kill -9, start again."""

    engine: str
    port: int
    #: The server's URL without Conveyor's namespace option.
    base_url: str
    kill: Callable[[], None]
    start: Callable[[], None]

    def store_url(self, name: str, base_url: str | None = None) -> str:
        """A store of its own on this server: key prefix (Redis) or schema (PostgreSQL).
        ``base_url`` replaces the server's (a proxy's address in front of it)."""
        option = "prefix" if self.engine == "redis" else "schema"
        return f"{base_url or self.base_url}?{option}={name}"


@contextlib.contextmanager
def private_server(
    engine: str, directory: Path, redis_args: tuple[str, ...] = ()
) -> Iterator[PrivateServer]:
    if engine == "redis":
        require_service("Redis", REDIS_URL)  # the redis extra and tooling are present
        if shutil.which("redis-server") is None:
            pytest.skip("!!! SKIPPED: no redis-server executable !!!")
        from tests.redis.conftest import PrivateRedis

        redis = PrivateRedis(directory, list(redis_args))
        redis.start()
        try:
            yield PrivateServer(engine, redis.port, redis.url, redis.kill, redis.start)
        finally:
            redis.kill()
    elif engine == "postgres":
        require_service("PostgreSQL", POSTGRES_URL)
        from tests.postgres.test_resilience import BIN, PrivateCluster

        if not (BIN / "initdb").exists():
            pytest.skip(f"!!! SKIPPED: no PostgreSQL binaries in {BIN} !!!")
        # Not under tmp_path: as root the cluster runs as user postgres (see PrivateCluster).
        root = Path(tempfile.mkdtemp(prefix="conveyor-chaos-pg-"))
        try:
            pg = PrivateCluster(root)
            pg.start()
            try:
                yield PrivateServer(engine, pg.port, pg.url, pg.kill9, pg.start)
            finally:
                pg.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        raise AssertionError(f"{engine} has no server")


class Producer(threading.Thread):
    """Enqueues ``task(n, *args)`` every ``interval`` seconds until stopped. An enqueue
    that raised was not acknowledged: its ``n`` is remembered in ``failed`` (the job may
    or may not exist; the caller cannot know)."""

    def __init__(self, cluster: Cluster, task: str, *args: Any, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.task, self.args, self.interval = task, args, interval
        self.stop = threading.Event()
        self.failed: set[int] = set()
        self.n = 0

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            n, self.n = self.n, self.n + 1
            try:
                self.cluster.enqueue(self.task, n, *self.args)
            except Exception:  # the store is away: not acknowledged
                self.failed.add(n)

    def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        self.join(timeout=timeout)
        assert not self.is_alive(), f"the producer is stuck in an enqueue for {timeout} s"

    def explain_unexpected(self, unexpected: list[str]) -> list[str]:
        """Of the stored jobs nobody acknowledged, those NOT explained by an enqueue that
        raised (its job may have been stored before the error reached the caller)."""
        by_arg = {j.id: j.args[0] for j in self.cluster.app.jobs(limit=100_000)}
        return [i for i in unexpected if by_arg.get(i) not in self.failed]
