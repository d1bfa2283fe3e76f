"""Procrastinate: `procrastinate --app=peer_procrastinate.app worker --concurrency 10`
(LISTEN/NOTIFY on); two processes are two workers."""

from __future__ import annotations

from collections.abc import Sequence

import procrastinate
from base import AsyncClient, PostgresPeer, venv_bin
from common import pg_dsn, record
from procrastinate.types import JSONDict

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_dsn("procrastinate")))


@app.task(name="noop")
async def noop(tag: str) -> None:
    record(tag)


class ProcrastinatePeer(PostgresPeer):
    name = "procrastinate"
    has_bulk = True
    tables = ("procrastinate_jobs",)

    def __init__(self) -> None:
        super().__init__(pg_dsn("procrastinate"))
        self.client = AsyncClient()

        async def open_app() -> None:
            await app.open_async()  # an awaitable context, not a coroutine

        self.client.run(open_app())

    def prepare(self) -> None:
        self.client.run(app.schema_manager.apply_schema_async())

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        async def send() -> None:
            for tag in tags:
                await noop.defer_async(tag=tag)

        self.client.run(send())

    def enqueue_bulk(self, tags: Sequence[str]) -> None:
        async def send() -> None:
            for start in range(0, len(tags), 1000):
                batch: list[JSONDict] = [{"tag": t} for t in tags[start : start + 1000]]
                await noop.batch_defer_async(*batch)

        self.client.run(send())

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        command = [venv_bin("procrastinate"), "--app=peer_procrastinate.app", "worker"]
        return [[*command, "--concurrency", str(concurrency)] for _ in range(processes)]

    def close(self) -> None:
        self.client.run(app.close_async())
        self.client.close_loop()
        super().close()
