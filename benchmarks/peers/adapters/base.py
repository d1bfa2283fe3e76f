"""The shape of one peer adapter: how to empty it, enqueue to it, and start its worker."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

from common import redis_url

T = TypeVar("T")


class Peer(ABC):
    """One job system under test, driven the way its own docs show."""

    name: ClassVar[str]
    store: ClassVar[str]  # "redis", "postgres" or "sqlite": who it is compared with
    has_bulk: ClassVar[bool] = False  # a documented "enqueue many in one call" API
    has_tenants: ClassVar[bool] = False  # fairness between tenants is a feature of it

    def prepare(self) -> None:  # noqa: B027 (optional hook: most peers need no set-up)
        """Once per run, before anything else (e.g. apply the peer's schema)."""

    @abstractmethod
    def reset(self) -> None:
        """Empty every queue of this peer, so a phase starts from nothing."""

    @abstractmethod
    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        """Enqueue one job per tag, one client call per job."""

    def enqueue_bulk(self, tags: Sequence[str]) -> None:
        raise NotImplementedError(f"{self.name} has no bulk enqueue")

    @abstractmethod
    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        """The CLI command(s) that run ``processes`` worker processes.

        A peer whose CLI has a process-count flag returns one command using it; otherwise
        one command per process, as its docs say to scale out.
        """

    def worker_env(self) -> dict[str, str]:
        """Extra environment for the worker processes."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release client connections."""


class RedisPeer(Peer):
    """A peer on Redis: the harness owns one Redis DB, so emptying it is FLUSHDB."""

    store = "redis"

    def __init__(self) -> None:
        import redis

        self.admin = redis.Redis.from_url(redis_url())

    def reset(self) -> None:
        self.admin.flushdb()

    def close(self) -> None:
        self.admin.close()


class AsyncClient:
    """A private event loop for peers whose producer API is async (arq, saq, taskiq...)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def close_loop(self) -> None:
        self._runner.close()


def venv_bin(name: str) -> str:
    """A console script of the harness venv (the peers' CLIs live next to its python)."""
    import sys
    from pathlib import Path

    return str(Path(sys.executable).parent / name)


def chunks(items: Sequence[T], size: int = 1000) -> list[Sequence[T]]:
    """Bulk enqueues go in batches of 1,000, as a producer would send them."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class PostgresPeer(Peer):
    """A peer on PostgreSQL, in a private database that the harness creates and drops."""

    store = "postgres"
    tables: ClassVar[tuple[str, ...]] = ()  # emptied between phases

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.admin = psycopg.connect(dsn, autocommit=True)

    def reset(self) -> None:
        self.admin.execute(f"TRUNCATE {', '.join(self.tables)} RESTART IDENTITY CASCADE")

    def close(self) -> None:
        self.admin.close()
