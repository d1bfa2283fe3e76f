"""Without an injected clock, every time comes from the database, not the worker."""

from __future__ import annotations

import time

import psycopg
import pytest

from conveyor.backends.base import Lease
from conveyor.job import JobState
from tests.postgres.conftest import OpenPG, new_job
from tests.services import POSTGRES_URL


async def _db_now() -> float:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        row = await cur.fetchone()
    assert row is not None
    return float(row[0])


async def test_times_come_from_the_database(
    open_pg: OpenPG, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await open_pg()
    # The worker's wall clock is a day off: nothing the store records may follow it.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400.0)
    before = await _db_now()
    assert before - 1.0 <= await backend.now() <= before + 60.0

    ready, later = new_job(), new_job(delay=3600.0)
    await backend.enqueue([ready, later])
    [claimed] = await backend.claim(["default"], 5, worker="w", lease=30.0)
    after = await _db_now()
    assert claimed.id == ready.id
    assert before - 1.0 <= claimed.enqueued_at <= after
    assert claimed.lease_expires_at == pytest.approx(claimed.enqueued_at + 30.0, abs=5.0)

    info = await backend.get(later.id)
    assert info is not None and info.state is JobState.SCHEDULED and info.run_at is not None
    assert info.run_at.timestamp() == pytest.approx(info.enqueued_at.timestamp() + 3600.0)
    assert await backend.promote() == 0  # due by the worker's clock, not the store's

    reply = await backend.heartbeat([Lease(claimed.id, claimed.lease_token)], lease=120.0)
    assert reply.lost == frozenset()
    info = await backend.get(claimed.id)
    assert info is not None and info.lease_expires_at is not None
    assert before + 100.0 <= info.lease_expires_at.timestamp() <= await _db_now() + 121.0
    assert await backend.reap() == 0  # the lease holds by the store's clock
