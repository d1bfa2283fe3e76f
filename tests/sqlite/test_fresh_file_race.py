"""Many processes opening one new SQLite file at the same moment all succeed.

Switching a fresh file to WAL takes an exclusive lock, and SQLite answers a race for it
with an immediate "database is locked" rather than waiting: before the retry in
``_connection.py`` this failed about one open in twenty-four.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import create_backend

PROCESSES = 8
ROUNDS = 10


def _open_and_close(url: str, barrier: Any) -> None:
    async def go() -> None:
        backend = create_backend(url)
        barrier.wait(timeout=30)  # everyone opens at once
        await backend.open()
        await backend.close()

    asyncio.run(go())


@pytest.mark.timeout(120)
def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    failures = 0
    for n in range(ROUNDS):
        url = f"sqlite:///{tmp_path}/fresh-{n}.db"
        barrier = ctx.Barrier(PROCESSES)
        procs = [ctx.Process(target=_open_and_close, args=(url, barrier)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures += sum(p.exitcode != 0 for p in procs)
    assert failures == 0
