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
ROUNDS = 60


def _open_and_close(base: str, barrier: Any) -> None:
    """Each round every process opens the same new file at once. One set of processes
    runs all rounds: starting (and importing) a process per open took most of the time."""

    async def go() -> None:
        for n in range(ROUNDS):
            backend = create_backend(f"{base}-{n}.db")
            barrier.wait(timeout=30)  # everyone opens at once
            await backend.open()
            await backend.close()

    asyncio.run(go())


@pytest.mark.timeout(120)
def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    base = f"sqlite:///{tmp_path}/fresh"
    procs = [ctx.Process(target=_open_and_close, args=(base, barrier)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
