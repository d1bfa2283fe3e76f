"""The outbox is bounded without workers: purge drops entries older than the retention
(the store's clock, here an injected one)."""

from __future__ import annotations

from conveyor.backends.base import OUTBOX_RETENTION
from tests.postgres.conftest import OpenPG, new_job


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_purge_drops_undrained_entries_after_the_retention(open_pg: OpenPG) -> None:
    clock = Clock()
    backend = await open_pg(clock=clock)
    old, recent = new_job(), new_job()
    await backend.enqueue([old, recent])
    await backend.cancel(old.id)
    clock.now += OUTBOX_RETENTION - 60
    await backend.cancel(recent.id)
    clock.now += 120  # old's entry is past the retention, recent's is not
    await backend.purge()
    assert [e.job_id for e in await backend.take_events(10)] == [recent.id]
