"""Caps skip candidates: per-task concurrency (store-wide), per-tenant max_running."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pytest

from conveyor.backends.base import Backend, OutcomeKind

if TYPE_CHECKING:
    from tests.contract.conftest import MakeJob, OpenBackend, Ops


async def test_task_cap_holds_across_instances(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob, ops: Ops
) -> None:
    other = await open_backend()
    await backend.enqueue([make_job("capped") for _ in range(6)])
    await backend.enqueue([make_job("free") for _ in range(2)])
    caps = {"capped": 2}

    first = await backend.claim(["default"], 10, worker="w1", lease=30.0, task_caps=caps)
    assert Counter(j.task for j in first) == {"capped": 2, "free": 2}
    assert await other.claim(["default"], 10, worker="w2", lease=30.0, task_caps=caps) == []

    done = next(j for j in first if j.task == "capped")
    await ops.succeed(backend, done)
    again = await other.claim(["default"], 10, worker="w2", lease=30.0, task_caps=caps)
    assert [j.task for j in again] == ["capped"]

    # A job that leaves running by any path frees its slot: here, a retry.
    retry = next(j for j in first if j.task == "capped" and j.id != done.id)
    await backend.finish([ops.outcome(retry, OutcomeKind.RETRY, retry_delay=60.0)])
    assert len(await other.claim(["default"], 10, worker="w2", lease=30.0, task_caps=caps)) == 1


async def test_task_cap_counts_jobs_of_this_claim(backend: Backend, make_job: MakeJob) -> None:
    await backend.enqueue([make_job("t") for _ in range(5)])
    claimed = await backend.claim(["default"], 5, worker="w", lease=30.0, task_caps={"t": 3})
    assert len(claimed) == 3


async def test_task_cap_zero_pauses_a_task(backend: Backend, make_job: MakeJob) -> None:
    await backend.enqueue([make_job("paused"), make_job("other")])
    claimed = await backend.claim(["default"], 5, worker="w", lease=30.0, task_caps={"paused": 0})
    assert [j.task for j in claimed] == ["other"]


async def test_capped_head_does_not_block_the_rest_of_the_tenant(
    backend: Backend, make_job: MakeJob
) -> None:
    jobs = [
        make_job("slow", tenant="a"),
        make_job("slow", tenant="a"),
        make_job("fast", tenant="a"),
    ]
    await backend.enqueue(jobs)
    claimed = await backend.claim(["default"], 3, worker="w", lease=30.0, task_caps={"slow": 1})
    assert [j.id for j in claimed] == [jobs[0].id, jobs[2].id]


async def test_capped_tenant_does_not_block_others(backend: Backend, make_job: MakeJob) -> None:
    await backend.enqueue([make_job("slow", tenant="a", priority=0) for _ in range(100)])
    await backend.enqueue([make_job("fast", tenant="b", priority=9) for _ in range(3)])
    claimed = await backend.claim(["default"], 10, worker="w", lease=30.0, task_caps={"slow": 2})
    assert Counter(j.tenant for j in claimed) == {"a": 2, "b": 3}


async def test_tenant_max_running(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    await backend.set_tenant("default", "a", weight=1.0, max_running=2)
    await backend.enqueue([make_job(tenant=t) for _ in range(5) for t in ("a", "b")])
    claimed = await backend.claim(["default"], 10, worker="w", lease=30.0)
    assert Counter(j.tenant for j in claimed) == {"a": 2, "b": 5}
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []

    await ops.succeed(backend, next(j for j in claimed if j.tenant == "a"))
    more = await backend.claim(["default"], 10, worker="w", lease=30.0)
    assert [j.tenant for j in more] == ["a"]


async def test_tenant_cap_set_while_jobs_run_counts_them(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    """A cap set (or set again) while the tenant's jobs run counts those jobs at once,
    by whatever path they later leave running."""
    await backend.enqueue([make_job(tenant="a") for _ in range(6)])
    running = await backend.claim(["default"], 3, worker="w", lease=30.0)
    assert len(running) == 3
    await backend.set_tenant("default", "a", weight=1.0, max_running=3)
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    [a_stats] = [s for s in await backend.stats() if s.tenant == "a"]
    assert (a_stats.queued, a_stats.running) == (3, 3)

    await ops.succeed(backend, running[0])
    [next_one] = await backend.claim(["default"], 10, worker="w", lease=30.0)

    # Off and on again while three run: the new cap counts them as well.
    await backend.set_tenant("default", "a", weight=1.0, max_running=None)
    await backend.finish([ops.outcome(running[1], OutcomeKind.RETRY, retry_delay=60.0)])
    await backend.set_tenant("default", "a", weight=1.0, max_running=2)
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    await ops.succeed(backend, running[2])
    assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 1
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    await ops.succeed(backend, next_one)
    assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 1


async def test_tenant_max_running_is_per_queue(backend: Backend, make_job: MakeJob) -> None:
    await backend.set_tenant("q1", "a", weight=1.0, max_running=1)
    await backend.enqueue([make_job(queue=q, tenant="a") for _ in range(3) for q in ("q1", "q2")])
    claimed = await backend.claim(["q1", "q2"], 10, worker="w", lease=30.0)
    assert Counter(j.queue for j in claimed) == {"q1": 1, "q2": 3}


async def test_tenant_max_running_zero_pauses_a_tenant(backend: Backend, make_job: MakeJob) -> None:
    await backend.set_tenant("default", "a", weight=1.0, max_running=0)
    await backend.enqueue([make_job(tenant="a")])
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    await backend.set_tenant("default", "a", weight=1.0, max_running=None)
    assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 1


async def test_set_tenant_validates(backend: Backend) -> None:
    for weight in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            await backend.set_tenant("default", "a", weight=weight, max_running=None)
    with pytest.raises(ValueError):
        await backend.set_tenant("default", "a", weight=1.0, max_running=-1)
