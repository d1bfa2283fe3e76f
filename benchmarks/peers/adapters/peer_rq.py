"""RQ: `rq worker`, the default Worker class (one work-horse fork per job); no concurrency
knob, so two processes are two `rq worker` commands (RQ docs: "start more workers")."""

from __future__ import annotations

from collections.abc import Sequence

from base import RedisPeer, chunks, venv_bin
from common import record, redis_url
from rq import Queue

from redis import Redis

QUEUE = "peerbench"


def noop(tag: str) -> None:
    record(tag)


class RQPeer(RedisPeer):
    name = "rq"
    has_bulk = True

    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue(QUEUE, connection=Redis.from_url(redis_url()))

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        for tag in tags:
            self.queue.enqueue(noop, tag)

    def enqueue_bulk(self, tags: Sequence[str]) -> None:
        for batch in chunks(tags):
            self.queue.enqueue_many([Queue.prepare_data(noop, (tag,)) for tag in batch])

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        command = [venv_bin("rq"), "worker", "-u", redis_url(), "--logging_level", "WARNING"]
        return [[*command, QUEUE] for _ in range(processes)]
