"""PgQueuer: `pgq run peer_pgqueuer:main` (asyncio,
LISTEN/NOTIFY) with asyncpg, the driver its README leads with (its psycopg driver reads
notifications in 1 s slices here: every idle pickup took 1,005 ms). Defaults otherwise
(batch-size 10, no max-concurrent-tasks: pgq wants that >= 2 x batch-size). Two processes
are two `pgq run` commands."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from base import AsyncClient, PostgresPeer, chunks, venv_bin
from common import pg_dsn, record
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` enters in each worker process (1.6 wants a context manager)."""
    connection = await asyncpg.connect(pg_dsn("pgqueuer"))
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint("noop")
        async def noop(job: Job) -> None:
            record((job.payload or b"").decode())

        yield pgq
    finally:
        await connection.close()


class PgQueuerPeer(PostgresPeer):
    name = "pgqueuer"
    has_bulk = True
    tables = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")

    def __init__(self) -> None:
        super().__init__(pg_dsn("pgqueuer"))
        self.client = AsyncClient()
        self.connection = self.client.run(asyncpg.connect(pg_dsn("pgqueuer")))
        self.queries = Queries(AsyncpgDriver(self.connection))

    def prepare(self) -> None:
        self.client.run(self.queries.install())

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        async def send() -> None:
            for tag in tags:
                await self.queries.enqueue("noop", tag.encode())

        self.client.run(send())

    def enqueue_bulk(self, tags: Sequence[str]) -> None:
        async def send() -> None:
            for batch in chunks(tags):
                await self.queries.enqueue(
                    ["noop"] * len(batch), [t.encode() for t in batch], [0] * len(batch)
                )

        self.client.run(send())

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        command = [venv_bin("pgq"), "run", "peer_pgqueuer:main"]
        return [[*command] for _ in range(processes)]

    def close(self) -> None:
        self.client.run(self.connection.close())
        self.client.close_loop()
        super().close()
