"""SAQ: `saq peer_saq.settings --workers N`, asyncio, `concurrency: 10` in the settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from base import AsyncClient, RedisPeer, venv_bin
from common import record, redis_url
from saq import Queue

queue = Queue.from_url(redis_url(), name="peerbench")


async def noop(ctx: dict[str, Any], *, tag: str) -> None:
    record(tag)


settings = {"queue": queue, "functions": [noop], "concurrency": 10}


class SaqPeer(RedisPeer):
    name = "saq"

    def __init__(self) -> None:
        super().__init__()
        self.client = AsyncClient()
        self.queue = Queue.from_url(redis_url(), name="peerbench")
        self.client.run(self.queue.connect())

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        async def send() -> None:
            for tag in tags:
                await self.queue.enqueue("noop", tag=tag)

        self.client.run(send())

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        return [[venv_bin("saq"), "peer_saq.settings", "--workers", str(processes), "--quiet"]]

    def close(self) -> None:
        self.client.run(self.queue.disconnect())
        self.client.close_loop()
        super().close()
