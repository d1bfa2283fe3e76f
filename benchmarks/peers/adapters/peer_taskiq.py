"""Taskiq with taskiq-redis's RedisStreamBroker (the one its README leads with):
`taskiq worker peer_taskiq:broker --workers N --max-async-tasks 10`."""

from __future__ import annotations

from collections.abc import Sequence

from base import AsyncClient, RedisPeer, venv_bin
from common import record, redis_url
from taskiq_redis import RedisStreamBroker

STREAM = "peerbench"
broker = RedisStreamBroker(url=redis_url(), queue_name=STREAM)


@broker.task(task_name="noop")
async def noop(tag: str) -> None:
    record(tag)


class TaskiqPeer(RedisPeer):
    name = "taskiq"

    def __init__(self) -> None:
        super().__init__()
        self.client = AsyncClient()
        self.client.run(broker.startup())

    def reset(self) -> None:
        super().reset()
        # The worker creates its consumer group at "$" (new messages only) if it is
        # missing, which would skip the jobs the harness enqueues before starting it.
        self.admin.xgroup_create(STREAM, "taskiq", id="0", mkstream=True)

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        async def send() -> None:
            for tag in tags:
                await noop.kiq(tag)

        self.client.run(send())

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        return [
            [
                venv_bin("taskiq"),
                "worker",
                "peer_taskiq:broker",
                "--workers",
                str(processes),
                "--max-async-tasks",
                str(concurrency),
            ]
        ]

    def close(self) -> None:
        self.client.run(broker.shutdown())
        self.client.close_loop()
        super().close()
