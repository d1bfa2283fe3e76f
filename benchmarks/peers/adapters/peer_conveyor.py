"""Conveyor itself: `conveyor worker peer_conveyor:app -c 10 -p N`, one store per engine.

Each phase gets a fresh store (a new SQLite file, a flushed Redis DB under a private
`?prefix=`, a new Postgres `?schema=`), so no phase sees another's jobs or tenants.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from base import Peer, chunks, venv_bin
from common import pg_dsn, record, redis_url

import conveyor

TASK = "peerbench.noop"

# The worker's app: the harness points CONVEYOR_URL at the phase's store.
app = conveyor.App()


@app.task(name=TASK)
async def noop(tag: str) -> None:
    record(tag)


class ConveyorPeer(Peer):
    has_bulk = True
    has_tenants = True
    engine: ClassVar[str]

    def __init__(self) -> None:
        self.phase = 0
        self.url = ""
        self.producer: conveyor.App | None = None

    def phase_url(self) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        if self.producer is not None:
            self.producer.close()
        self.phase += 1
        self.url = self.phase_url()
        self.producer = conveyor.App(self.url)

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        assert self.producer is not None
        for tag in tags:
            self.producer.enqueue(TASK, args=[tag], tenant=tenant)

    def enqueue_bulk(self, tags: Sequence[str]) -> None:
        assert self.producer is not None
        for batch in chunks(tags):
            self.producer.enqueue_many([{"task": TASK, "args": [tag]} for tag in batch])

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        command = [venv_bin("conveyor"), "worker", "peer_conveyor:app"]
        return [[*command, "-c", str(concurrency), "-p", str(processes)]]

    def worker_env(self) -> dict[str, str]:
        return {"CONVEYOR_URL": self.url, "CONVEYOR_LOG_LEVEL": "WARNING"}

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
            self.producer = None


class ConveyorSQLite(ConveyorPeer):
    name = "conveyor-sqlite"
    store = "sqlite"
    engine = "sqlite"

    def phase_url(self) -> str:
        return f"sqlite:///{os.environ['PEERBENCH_WORKDIR']}/conveyor-{self.phase}.db"


class ConveyorRedis(ConveyorPeer):
    name = "conveyor-redis"
    store = "redis"
    engine = "redis"

    def __init__(self) -> None:
        import redis

        super().__init__()
        self.admin = redis.Redis.from_url(redis_url())

    def phase_url(self) -> str:
        self.admin.flushdb()  # the harness owns this DB (checked empty at start)
        return f"{redis_url()}?prefix=peerbench"

    def close(self) -> None:
        super().close()
        self.admin.close()


class ConveyorPostgres(ConveyorPeer):
    name = "conveyor-postgres"
    store = "postgres"
    engine = "postgresql"

    def phase_url(self) -> str:
        return f"{pg_dsn('conveyor')}?schema=peerbench_{self.phase}"
