"""The reaper racing a completion at the lease's expiry, at the backend-protocol level.

Two backend instances (two connections, like two workers) share one fake clock, which
stands exactly at, just before or just after the lease's expiry; one sends the success,
the other reaps, at the same time. Exactly one must win, every time: either the job is
``succeeded`` with no error and was not reaped, or the success was rejected and the job
is back in ``queued`` with a ``WorkerLost`` error. The store's counters stay consistent.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from conveyor.backends import create_backend
from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.job import JobState, new_job_id
from tests.chaos.conftest import FULL
from tests.contract.conftest import FakeClock

T = TypeVar("T")
LEASE = 2.0
ITERATIONS = 3000 if FULL else 500


def _job(i: int) -> NewJob:
    return NewJob(
        id=new_job_id(),
        task="chaos.race",
        queue="race",
        tenant=None,
        priority=5,
        args_json=f"[{i}]",
        kwargs_json="{}",
        max_attempts=3,
    )


async def _after(seconds: float, call: Awaitable[T]) -> T:
    await asyncio.sleep(seconds)
    return await call


@pytest.mark.timeout(240)
async def test_complete_vs_reap_at_the_expiry_boundary_exactly_one_wins(store_url: str) -> None:
    clock = FakeClock()
    rng = random.Random(11)
    worker = create_backend(store_url, clock=clock)
    reaper = create_backend(store_url, clock=clock)
    await worker.open()
    await reaper.open()
    wins: Counter[str] = Counter()
    try:
        for i in range(ITERATIONS):
            (job_id,) = await worker.enqueue([_job(i)])
            (claimed,) = await worker.claim(["race"], 1, worker="w", lease=LEASE)
            assert claimed.id == job_id and claimed.attempt == 1
            # Stand at the boundary: the reaper takes leases that ended at or before now.
            offset = rng.choice((-1e-3, 0.0, 0.0, 1e-3))
            clock.now = claimed.lease_expires_at + offset
            done = Outcome(job_id, claimed.lease_token, OutcomeKind.SUCCEEDED, result_json="1")
            # Each side starts after a random pause of up to 2 ms, so that neither always
            # reaches the store first (a backend's reap may take an extra round trip).
            accepted, reaped = await asyncio.gather(
                _after(rng.uniform(0, 0.002), worker.finish([done])),
                _after(rng.uniform(0, 0.002), reaper.reap()),
            )
            job = await reaper.get(job_id)
            assert job is not None
            if accepted == [True]:
                wins["complete"] += 1
                assert reaped == 0, (i, offset)
                assert job.state is JobState.SUCCEEDED and job.errors == (), (i, job)
            else:
                wins["reap"] += 1
                assert accepted == [False] and reaped == 1, (i, offset, accepted, reaped)
                assert offset >= 0, "reaped a lease that had not expired"
                assert job.state is JobState.QUEUED, (i, job)
                assert [e.type for e in job.errors] == ["WorkerLost"], job
                # Take it back out of the way, and prove the requeued job is claimable.
                (again,) = await worker.claim(["race"], 1, worker="w", lease=LEASE)
                assert again.id == job_id and again.attempt == 2
                finished = Outcome(job_id, again.lease_token, OutcomeKind.SUCCEEDED)
                assert await worker.finish([finished]) == [True]
            assert job.attempt == 1
        stats = [s for s in await reaper.stats() if s.queue == "race"]
        assert sum(s.running + s.queued + s.retrying for s in stats) == 0, stats
        assert sum(s.succeeded for s in stats) == ITERATIONS, stats
    finally:
        await worker.close()
        await reaper.close()
    # Both outcomes must have happened, or the race was not a race.
    assert wins["complete"] and wins["reap"], wins
    print(f"\n{ITERATIONS} races: {dict(wins)}")
