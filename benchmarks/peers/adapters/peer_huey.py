"""Huey with RedisHuey (blocking reads): `huey_consumer peer_huey.huey -w 10 -k thread`;
two processes are two consumers."""

from __future__ import annotations

from collections.abc import Sequence

from base import RedisPeer, venv_bin
from common import record, redis_url
from huey import RedisHuey

huey = RedisHuey("peerbench", url=redis_url())


@huey.task()  # type: ignore[untyped-decorator]
def noop(tag: str) -> None:
    record(tag)


class HueyPeer(RedisPeer):
    name = "huey"

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        for tag in tags:
            noop(tag)

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        command = [venv_bin("huey_consumer"), "peer_huey.huey", "-w", str(concurrency)]
        return [[*command, "-k", "thread", "-q"] for _ in range(processes)]
