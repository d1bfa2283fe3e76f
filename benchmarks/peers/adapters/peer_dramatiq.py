"""Dramatiq with its RedisBroker: `dramatiq peer_dramatiq --processes N --threads 10`."""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq
from base import RedisPeer, venv_bin
from common import record, redis_url
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=redis_url())  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="peerbench")
def noop(tag: str) -> None:
    record(tag)


class DramatiqPeer(RedisPeer):
    name = "dramatiq"

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        for tag in tags:
            noop.send(tag)

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        return [
            [
                venv_bin("dramatiq"),
                "peer_dramatiq",
                "--processes",
                str(processes),
                "--threads",
                str(concurrency),
            ]
        ]
