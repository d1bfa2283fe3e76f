"""Which job runs next: priority, tenant fairness, FIFO, queue order, aging."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, Ops


async def test_priority_is_strict(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    low = [make_job(priority=9) for _ in range(3)]
    mid = [make_job(priority=5) for _ in range(3)]
    urgent = [make_job(priority=0, tenant="other")]
    await backend.enqueue(low + mid + urgent)
    order = [j.id for j in await ops.claim_order(backend, 10)]
    assert order == [j.id for j in urgent + mid + low]


async def test_fifo_within_a_tenant_across_tasks(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    jobs = [make_job(task=f"task{i % 3}", tenant="a") for i in range(12)]
    for job in jobs:  # one at a time: FIFO must not depend on batching
        await backend.enqueue([job])
    claimed = await backend.claim(["default"], 12, worker="w", lease=30.0)
    assert [j.id for j in claimed] == [j.id for j in jobs]


async def test_round_robin_between_tenants(backend: Backend, make_job: MakeJob) -> None:
    flood = [make_job(tenant="a") for _ in range(100)]
    await backend.enqueue(flood)
    late = [make_job(tenant="b") for _ in range(2)]
    await backend.enqueue(late)
    first = await backend.claim(["default"], 4, worker="w", lease=30.0)
    assert {j.id for j in late} <= {j.id for j in first}


async def test_round_robin_after_a_flood_is_under_way(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job(tenant="a") for _ in range(200)])
    await ops.claim_order(backend, 50)
    single = make_job(tenant="b")
    await backend.enqueue([single])
    nxt = await ops.claim_order(backend, 2)
    assert single.id in {j.id for j in nxt}


async def test_weights_share_claims(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    await backend.set_tenant("default", "heavy", weight=3.0, max_running=None)
    jobs = [make_job(tenant=t) for _ in range(100) for t in ("heavy", "light")]
    await backend.enqueue(jobs)
    counts = Counter(j.tenant for j in await ops.claim_order(backend, 40))
    assert 29 <= counts["heavy"] <= 31
    assert 9 <= counts["light"] <= 11


async def test_default_tenant_takes_part_in_fairness(backend: Backend, make_job: MakeJob) -> None:
    await backend.enqueue([make_job(tenant=None) for _ in range(20)])
    await backend.enqueue([make_job(tenant="x") for _ in range(20)])
    counts = Counter(j.tenant for j in await backend.claim(["default"], 10, worker="w", lease=30))
    assert counts[None] == 5 and counts["x"] == 5


async def test_idle_tenant_banks_no_credit(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    # b is served once, then goes idle while a runs 50 jobs.
    await backend.enqueue([make_job(tenant="b")])
    await ops.claim_order(backend, 1)
    await backend.enqueue([make_job(tenant="a") for _ in range(200)])
    await ops.claim_order(backend, 50)
    # b comes back with plenty of work: it shares from now on instead of
    # monopolising the queue for the 49 turns it "missed".
    await backend.enqueue([make_job(tenant="b") for _ in range(50)])
    counts = Counter(j.tenant for j in await ops.claim_order(backend, 20))
    assert 9 <= counts["b"] <= 11, counts


async def test_weight_set_while_active_changes_the_share(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job(tenant=t) for _ in range(100) for t in ("a", "b")])
    await ops.claim_order(backend, 10)
    await backend.set_tenant("default", "b", weight=4.0, max_running=None)
    counts = Counter(j.tenant for j in await ops.claim_order(backend, 50))
    assert 38 <= counts["b"] <= 42, counts


async def test_fairness_is_per_priority_level(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    # Priority wins over fairness: b's urgent jobs all go before a's normal ones.
    await backend.enqueue([make_job(tenant="a", priority=5) for _ in range(5)])
    urgent = [make_job(tenant="b", priority=1) for _ in range(5)]
    await backend.enqueue(urgent)
    first = await ops.claim_order(backend, 5)
    assert [j.id for j in first] == [j.id for j in urgent]


async def test_queues_are_served_in_the_order_given(backend: Backend, make_job: MakeJob) -> None:
    low = [make_job(queue="low", priority=0) for _ in range(3)]
    high = [make_job(queue="high", priority=9) for _ in range(2)]
    await backend.enqueue(low + high)
    claimed = await backend.claim(["high", "low"], 3, worker="w", lease=30.0)
    assert [j.id for j in claimed] == [high[0].id, high[1].id, low[0].id]
    assert [j.queue for j in claimed] == ["high", "high", "low"]
    # A queue not listed is never served.
    assert await backend.claim(["other"], 10, worker="w", lease=30.0) == []


async def test_aging_moves_waiting_jobs_up(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    await backend.set_queue("default", aging=10.0)
    old = make_job(priority=5)
    await backend.enqueue([old])
    clock.advance(10.0)
    assert await backend.promote() >= 1
    job = await backend.get(old.id)
    assert job is not None and job.priority == 4

    newer = make_job(priority=4)
    await backend.enqueue([newer])
    clock.advance(25.0)  # 35 s waited: three levels in all
    await backend.promote()
    job = await backend.get(old.id)
    assert job is not None and job.priority == 2
    newer_job = await backend.get(newer.id)
    assert newer_job is not None and newer_job.priority == 2

    clock.advance(1000.0)
    await backend.promote()
    job = await backend.get(old.id)
    assert job is not None and job.priority == 0  # never below 0
    claimed = await backend.claim(["default"], 2, worker="w", lease=30.0)
    assert [j.id for j in claimed] == [old.id, newer.id]


async def test_aging_beats_a_stream_of_higher_priority_work(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.set_queue("default", aging=5.0)
    starving = make_job(priority=3)
    await backend.enqueue([starving])
    for _ in range(20):
        await backend.enqueue([make_job(priority=1)])
        clock.advance(2.0)
        claimed = await ops.claim_one(backend)  # claim promotes and ages first
        if claimed.id == starving.id:
            break
    else:
        raise AssertionError("aging never let the low-priority job through")


async def test_aging_off_by_default_and_can_be_turned_off(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    plain = make_job(priority=5)
    await backend.enqueue([plain])
    clock.advance(1000.0)
    await backend.promote()
    job = await backend.get(plain.id)
    assert job is not None and job.priority == 5

    await backend.set_queue("default", aging=10.0)  # applies to jobs already waiting
    await backend.promote()
    job = await backend.get(plain.id)
    assert job is not None and job.priority < 5
    level = job.priority

    await backend.set_queue("default", aging=None)
    clock.advance(1000.0)
    await backend.promote()
    job = await backend.get(plain.id)
    assert job is not None and job.priority == level


async def test_set_queue_rejects_bad_aging(backend: Backend) -> None:
    import pytest

    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            await backend.set_queue("default", aging=bad)


async def test_purge_keeps_the_fair_share(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    # a ran alone and is one turn ahead of the queue's clock; purging its finished jobs
    # must not forgive that, so a newcomer goes first.
    await backend.enqueue([make_job(tenant="a", result_ttl=1.0) for _ in range(10)])
    for job in await ops.claim_order(backend, 10):
        await ops.succeed(backend, job)
    clock.advance(2.0)
    assert await backend.purge() == 10
    await backend.enqueue([make_job(tenant="a"), make_job(tenant="b")])
    first = await ops.claim_one(backend)
    assert first.tenant == "b"
