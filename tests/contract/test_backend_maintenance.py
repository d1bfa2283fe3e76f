"""Locks, stats, wake-ups, and a randomized run checking the books balance."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from conveyor.backends.base import Backend, ClaimedJob, Lease, OutcomeKind
from conveyor.job import JobState

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, OpenBackend, Ops


async def test_locks(backend: Backend, open_backend: OpenBackend, clock: FakeClock) -> None:
    other = await open_backend()
    assert await backend.try_lock("reaper", "w1", ttl=10.0)
    assert not await other.try_lock("reaper", "w2", ttl=10.0)
    assert await other.try_lock("promoter", "w2", ttl=10.0)  # names are independent
    clock.advance(9.0)
    assert await backend.try_lock("reaper", "w1", ttl=10.0)  # renewed until 19
    clock.advance(9.0)
    assert not await other.try_lock("reaper", "w2", ttl=10.0)
    clock.advance(1.0)
    assert await other.try_lock("reaper", "w2", ttl=10.0)  # expired: taken over
    assert not await backend.try_lock("reaper", "w1", ttl=10.0)
    await backend.unlock("reaper", "w1")  # not the holder: no effect
    assert not await backend.try_lock("reaper", "w1", ttl=10.0)
    await other.unlock("reaper", "w2")
    assert await backend.try_lock("reaper", "w1", ttl=10.0)


async def test_stats(backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops) -> None:
    await backend.set_tenant("default", "idle", weight=2.0, max_running=4)
    await backend.enqueue([make_job(tenant="a") for _ in range(3)])
    clock.advance(5.0)
    await backend.enqueue([make_job(tenant="b"), make_job(tenant="b", delay=30.0)])
    await backend.enqueue([make_job(queue="other")])
    claimed = await ops.claim_one(backend)  # a's oldest
    await ops.succeed(backend, claimed)
    await ops.claim_one(backend)  # b's turn (fair share)
    clock.advance(2.0)

    stats = {(s.queue, s.tenant): s for s in await backend.stats()}
    assert set(stats) == {("default", "a"), ("default", "b"), ("default", "idle"), ("other", None)}
    a = stats[("default", "a")]
    assert (a.queued, a.running, a.succeeded, a.scheduled, a.dead) == (2, 0, 1, 0, 0)
    assert a.oldest_wait == pytest.approx(7.0)
    b = stats[("default", "b")]
    assert (b.queued, b.scheduled, b.running, b.succeeded) == (0, 1, 1, 0)
    assert b.oldest_wait is None
    idle = stats[("default", "idle")]
    assert (idle.weight, idle.max_running, idle.queued, idle.oldest_wait) == (2.0, 4, 0, None)
    other = stats[("other", None)]
    assert other.queued == 1 and other.weight == 1.0 and other.max_running is None


async def test_oldest_wait_is_the_longest_wait_not_the_oldest_job(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    # The older job became ready later (a delay): the tenant's oldest wait is the
    # younger job's, ready since it was enqueued.
    await backend.enqueue([make_job(tenant="a", delay=10.0)])
    clock.advance(1.0)
    await backend.enqueue([make_job(tenant="a")])
    clock.advance(9.0)
    assert await backend.promote() == 1
    clock.advance(2.0)
    [a] = [s for s in await backend.stats() if s.tenant == "a"]
    assert (a.queued, a.oldest_wait) == (2, pytest.approx(11.0))


async def test_wait_for_work_wakes_on_another_instance(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob
) -> None:
    producer = await open_backend()
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    waiter = asyncio.create_task(backend.wait_for_work(["default"], 10.0))
    await asyncio.sleep(0.05)  # let it start polling (not a time-based assertion)
    assert not waiter.done()
    started = time.monotonic()
    await producer.enqueue([make_job()])
    await asyncio.wait_for(waiter, 5.0)
    assert time.monotonic() - started < 1.0
    assert len(await backend.claim(["default"], 1, worker="w", lease=30.0)) == 1


async def test_wait_for_work_sees_work_that_arrived_before_the_wait(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob
) -> None:
    producer = await open_backend()
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    await producer.enqueue([make_job()])  # lands between the empty claim and the wait
    started = time.monotonic()
    await backend.wait_for_work(["default"], 10.0)
    assert time.monotonic() - started < 1.0


async def test_wait_for_work_wakes_on_own_enqueue(backend: Backend, make_job: MakeJob) -> None:
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    await backend.enqueue([make_job()])
    started = time.monotonic()
    await backend.wait_for_work(["default"], 10.0)
    assert time.monotonic() - started < 1.0


async def test_wait_for_work_times_out(backend: Backend) -> None:
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    started = time.monotonic()
    await backend.wait_for_work(["default"], 0.2)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2.0


async def test_wait_for_work_returns_when_a_job_falls_due(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    await backend.enqueue([make_job(run_at=clock.now + 0.1)])
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    started = time.monotonic()
    await backend.wait_for_work(["default"], 10.0)
    assert time.monotonic() - started < 2.0


async def test_wait_for_work_does_not_hold_up_other_calls(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    waiter = asyncio.create_task(backend.wait_for_work(["default"], 30.0))
    await asyncio.sleep(0.05)  # let it start waiting
    started = time.monotonic()
    reply = await backend.heartbeat([Lease(claimed.id, claimed.lease_token)], lease=30.0)
    assert reply.lost == frozenset()
    assert time.monotonic() - started < 1.0

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    started = time.monotonic()
    assert await backend.get(claimed.id) is not None
    assert time.monotonic() - started < 1.0


async def test_randomized_run_keeps_the_books(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    """Random operations from two instances; afterwards every job is accounted for.

    Claim decisions rest on counters (ready jobs per tenant, running jobs per task,
    ...). If any path forgot to maintain them, jobs would get stuck or caps would
    drift, and the final drain below would not add up.
    """
    rng = random.Random(1234)
    instances = [backend, await open_backend()]
    tenants = ["a", "b", None]
    tasks = ["t1", "t2", "t3"]
    caps = {"t1": 2}
    await backend.set_tenant("default", "b", weight=2.0, max_running=3)
    await backend.set_queue("default", aging=7.0)
    running: dict[str, ClaimedJob] = {}

    for _ in range(400):
        b = rng.choice(instances)
        op = rng.random()
        if op < 0.3:
            jobs = [
                make_job(
                    rng.choice(tasks),
                    tenant=rng.choice(tenants),
                    priority=rng.randint(0, 9),
                    delay=rng.choice([None, 0.0, 5.0]),
                    key=rng.choice([None, None, f"k{rng.randint(0, 5)}"]),
                    max_attempts=rng.randint(1, 3),
                    result_ttl=rng.choice([None, 20.0]),
                )
                for _ in range(rng.randint(1, 4))
            ]
            await b.enqueue(jobs)
        elif op < 0.55:
            got = await b.claim(
                ["default"], rng.randint(1, 4), worker="w", lease=10.0, task_caps=caps
            )
            for job in got:
                assert job.id not in running
                running[job.id] = job
            assert sum(1 for j in running.values() if j.task == "t1") <= 2
        elif op < 0.75 and running:
            job = running.pop(rng.choice(sorted(running)))
            kind = rng.choice(list(OutcomeKind))
            await b.finish(
                [
                    ops.outcome(
                        job,
                        kind,
                        result_json="1",
                        error_json=None,
                        retry_delay=rng.choice([0.0, 3.0]),
                    )
                ]
            )
        elif op < 0.85:
            clock.advance(rng.choice([1.0, 4.0, 11.0]))
            await b.reap()
            await b.promote()
            await b.purge()
            # Drop leases the reaper took away (finishing them would be rejected).
            for job_id in list(running):
                info = await b.get(job_id)
                if info is None or info.state is not JobState.RUNNING:
                    running.pop(job_id)
        elif op < 0.92:
            every = await b.query(limit=10_000)
            if every:
                await b.cancel(rng.choice(every).id)
        else:
            dead = await b.query(state=JobState.DEAD, limit=10_000)
            if dead:
                try:
                    await b.replay(rng.choice(dead).id)
                except Exception as exc:  # key taken by an active job
                    assert type(exc).__name__ == "InvalidTransition"

    # Drain: finish everything that runs, then claim until nothing is left.
    for job in running.values():
        await backend.finish([ops.outcome(job, OutcomeKind.SUCCEEDED, result_json="1")])
    await backend.set_tenant("default", "b", weight=2.0, max_running=None)
    clock.advance(1000.0)
    await backend.reap()
    await backend.promote()
    waiting = Counter(j.state for j in await backend.query(limit=10_000))
    assert waiting[JobState.RUNNING] == 0
    drained = 0
    while batch := await backend.claim(["default"], 50, worker="w", lease=10.0):
        drained += len(batch)
        for job in batch:
            await ops.succeed(backend, job)
    assert drained == waiting[JobState.QUEUED]
    final = Counter(j.state for j in await backend.query(limit=10_000))
    assert final[JobState.QUEUED] == final[JobState.RUNNING] == 0
    stats = await backend.stats()
    assert sum(s.queued + s.running + s.scheduled + s.retrying for s in stats) == 0
