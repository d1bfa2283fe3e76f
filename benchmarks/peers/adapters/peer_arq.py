"""arq: `arq peer_arq.WorkerSettings`, asyncio, `max_jobs=10`; no process flag, so two
processes are two `arq` commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from base import AsyncClient, RedisPeer, venv_bin
from common import record, redis_url


async def noop(ctx: dict[str, Any], tag: str) -> None:
    record(tag)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url())
    max_jobs = 10


class ArqPeer(RedisPeer):
    name = "arq"

    def __init__(self) -> None:
        super().__init__()
        self.client = AsyncClient()
        self.pool: ArqRedis = self.client.run(create_pool(WorkerSettings.redis_settings))

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        async def send() -> None:
            for tag in tags:
                await self.pool.enqueue_job("noop", tag)

        self.client.run(send())

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        # max_jobs is a WorkerSettings attribute (10, the benchmark's concurrency)
        return [[venv_bin("arq"), "peer_arq.WorkerSettings"] for _ in range(processes)]

    def close(self) -> None:
        self.client.run(self.pool.aclose())
        self.client.close_loop()
        super().close()
