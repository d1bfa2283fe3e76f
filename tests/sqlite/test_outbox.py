"""The outbox is bounded without workers: purge drops entries older than the retention
(the store's clock, here an injected one)."""

from __future__ import annotations

from pathlib import Path

from conveyor.backends.base import OUTBOX_RETENTION, NewJob
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.job import new_job_id


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def new_job() -> NewJob:
    return NewJob(new_job_id(), "t", "default", None, 5, "[]", "{}", 3)


async def test_purge_drops_undrained_entries_after_the_retention(tmp_path: Path) -> None:
    clock = Clock()
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'c.db'}", clock=clock)
    await backend.open()
    try:
        old, recent = new_job(), new_job()
        await backend.enqueue([old, recent])
        await backend.cancel(old.id)
        clock.now += OUTBOX_RETENTION - 60
        await backend.cancel(recent.id)
        clock.now += 120  # old's entry is past the retention, recent's is not
        await backend.purge()
        assert [e.job_id for e in await backend.take_events(10)] == [recent.id]
    finally:
        await backend.close()
