"""LISTEN/NOTIFY wake-ups, and enqueue on a caller's own connection and transaction."""

from __future__ import annotations

import asyncio
import statistics
import time

import psycopg

from tests.postgres.conftest import OpenPG, new_job
from tests.services import POSTGRES_URL


async def test_idle_pickup_is_pushed_not_polled(open_pg: OpenPG) -> None:
    waiter, producer = await open_pg(), await open_pg()
    delays = []
    for _ in range(20):  # bounded
        assert await waiter.claim(["default"], 1, worker="w", lease=30.0) == []
        wait = asyncio.create_task(waiter.wait_for_work(["default"], 30.0))
        await asyncio.sleep(0.01)
        assert not wait.done()
        started = time.monotonic()
        await producer.enqueue([new_job()])
        await asyncio.wait_for(wait, 5.0)
        delays.append(time.monotonic() - started)
        assert len(await waiter.claim(["default"], 1, worker="w", lease=30.0)) == 1
    # A 30 s wait that returns within a fraction of a second was woken by NOTIFY; the
    # bound is generous because CI machines are noisy (typical: ~1 ms).
    assert statistics.median(delays) < 0.2, delays


async def test_only_a_backend_that_claims_listens(open_pg: OpenPG) -> None:
    """A producer's backend opens no LISTEN connection, so the NOTIFY of each of its
    enqueues is not delivered back to it; the first claim starts one, before it takes
    the mark that wait_for_work compares against."""
    backend = await open_pg()
    await backend.enqueue([new_job(), new_job()])
    assert backend._listener is None
    assert len(await backend.claim(["default"], 1, worker="w", lease=30.0)) == 1
    listener = backend._listener
    assert listener is not None and listener.is_up()
    assert len(await backend.claim(["default"], 1, worker="w", lease=30.0)) == 1
    assert backend._listener is listener  # started once
    await backend.close()
    assert backend._listener is None


async def test_other_queues_do_not_wake_the_waiter(open_pg: OpenPG) -> None:
    waiter, producer = await open_pg(), await open_pg()
    assert await waiter.claim(["default"], 1, worker="w", lease=30.0) == []
    wait = asyncio.create_task(waiter.wait_for_work(["default"], 0.5))
    await producer.enqueue([new_job(queue="elsewhere")])
    started = time.monotonic()
    await asyncio.wait_for(wait, 5.0)
    assert time.monotonic() - started > 0.3  # it timed out, it was not woken


async def test_finish_wakes_waiters_when_a_capped_slot_frees(open_pg: OpenPG) -> None:
    a, b = await open_pg(), await open_pg()
    await a.enqueue([new_job("solo"), new_job("solo")])
    caps = {"solo": 1}
    [running] = await a.claim(["default"], 5, worker="a", lease=30.0, task_caps=caps)
    assert await b.claim(["default"], 5, worker="b", lease=30.0, task_caps=caps) == []
    wait = asyncio.create_task(b.wait_for_work(["default"], 30.0))
    await asyncio.sleep(0.01)
    assert not wait.done()
    from conveyor.backends.base import Outcome, OutcomeKind

    await a.finish([Outcome(running.id, running.lease_token, OutcomeKind.SUCCEEDED)])
    await asyncio.wait_for(wait, 5.0)
    assert len(await b.claim(["default"], 5, worker="b", lease=30.0, task_caps=caps)) == 1


async def test_enqueue_in_the_callers_transaction(open_pg: OpenPG) -> None:
    """The job exists iff the caller's transaction commits, and only then wakes workers."""
    backend, waiter = await open_pg(), await open_pg()
    assert await waiter.claim(["default"], 1, worker="w", lease=30.0) == []
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:  # not autocommit
        rolled_back = new_job()
        await backend._enqueue_on(conn, [rolled_back])
        wait = asyncio.create_task(waiter.wait_for_work(["default"], 0.5))
        await conn.rollback()
        await asyncio.wait_for(wait, 5.0)  # times out: nothing was notified
        assert await backend.get(rolled_back.id) is None

        committed, duplicate = new_job(key="k"), new_job(key="k")
        assert await backend._enqueue_on(conn, [committed, duplicate]) == [committed.id] * 2
        assert await backend.get(committed.id) is None  # not visible before the commit
        wait = asyncio.create_task(waiter.wait_for_work(["default"], 30.0))
        await asyncio.sleep(0.01)
        assert not wait.done()
        await conn.commit()
        await asyncio.wait_for(wait, 5.0)
    info = await backend.get(committed.id)
    assert info is not None and info.state.value == "queued"
    assert [j.id for j in await waiter.claim(["default"], 5, worker="w", lease=30.0)] == [
        committed.id
    ]
