"""Enqueue, read back, query; lifecycle of a backend instance."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, Capabilities
from conveyor.job import Job, JobState

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, OpenBackend, Ops


async def test_enqueue_get_roundtrip(backend: Backend, make_job: MakeJob, clock: FakeClock) -> None:
    new = make_job(
        "media.resize",
        queue="media",
        tenant="org-7",
        priority=3,
        args=["abc", 2, None, {"x": [1.5]}],
        kwargs={"size": "large", "ü": "ñ"},
        max_attempts=5,
        timeout=12.5,
        result_ttl=60.0,
        key="resize:abc",
    )
    [job_id] = await backend.enqueue([new])
    assert job_id == new.id

    job = await backend.get(job_id)
    assert isinstance(job, Job)
    assert job.id == new.id
    assert job.task == "media.resize"
    assert job.state is JobState.QUEUED
    assert job.queue == "media"
    assert job.tenant == "org-7"
    assert job.priority == 3
    assert job.args == ["abc", 2, None, {"x": [1.5]}]
    assert job.kwargs == {"size": "large", "ü": "ñ"}
    assert job.attempt == 0
    assert job.max_attempts == 5
    assert job.timeout == 12.5
    assert job.key == "resize:abc"
    assert job.enqueued_at == datetime.fromtimestamp(clock.now, UTC)
    assert job.enqueued_at.tzinfo is not None
    assert job.started_at is None and job.finished_at is None and job.run_at is None
    assert job.result is None and job.errors == () and job.error is None
    assert job.progress is None and job.cancel_requested is False


async def test_default_tenant_is_none(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    [job_id] = await backend.enqueue([make_job(tenant=None)])
    job = await backend.get(job_id)
    assert job is not None and job.tenant is None
    claimed = await ops.claim_one(backend)
    assert claimed.tenant is None


async def test_enqueue_returns_ids_in_input_order(backend: Backend, make_job: MakeJob) -> None:
    jobs = [make_job(tenant=f"t{i % 3}", priority=i % 10) for i in range(50)]
    assert await backend.enqueue(jobs) == [j.id for j in jobs]
    assert await backend.enqueue([]) == []


async def test_get_missing_is_none(backend: Backend) -> None:
    assert await backend.get("0190f1e2-0000-7000-8000-000000000000") is None


async def test_query_filters_newest_first(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    a1 = make_job("a", queue="q1", tenant="x")
    a2 = make_job("a", queue="q1", tenant="y")
    b1 = make_job("b", queue="q2", tenant="x")
    b2 = make_job("b", queue="q2", priority=6)
    await backend.enqueue([a1, a2, b1, b2])
    claimed = await ops.claim_one(backend, "q2")
    assert claimed.id == b1.id

    every = await backend.query()
    assert [j.id for j in every] == [b2.id, b1.id, a2.id, a1.id]
    assert [j.id for j in await backend.query(queue="q1")] == [a2.id, a1.id]
    assert [j.id for j in await backend.query(tenant="x")] == [b1.id, a1.id]
    assert [j.id for j in await backend.query(task="b")] == [b2.id, b1.id]
    assert [j.id for j in await backend.query(state=JobState.RUNNING)] == [b1.id]
    assert [j.id for j in await backend.query(state=JobState.QUEUED, queue="q2")] == [b2.id]
    assert [j.id for j in await backend.query(state=JobState.QUEUED, limit=2)] == [b2.id, a2.id]
    assert await backend.query(state=JobState.DEAD) == []


async def test_now_uses_injected_clock(backend: Backend, clock: FakeClock) -> None:
    assert await backend.now() == clock.now
    clock.advance(42.0)
    assert await backend.now() == clock.now


async def test_capabilities_are_declared(backend: Backend) -> None:
    assert isinstance(backend.capabilities, Capabilities)


async def test_open_is_idempotent_and_instances_share_the_store(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob
) -> None:
    await backend.open()
    other = await open_backend()
    [job_id] = await other.enqueue([make_job()])
    seen = await backend.get(job_id)
    assert seen is not None and seen.state is JobState.QUEUED


async def test_many_instances_open_a_fresh_store_at_once(
    open_backend: OpenBackend, make_job: MakeJob
) -> None:
    # Creating the schema must be race-free when several workers start together.
    instances = await asyncio.gather(*(open_backend() for _ in range(4)))
    ids = await asyncio.gather(*(b.enqueue([make_job()]) for b in instances))
    assert len(await instances[0].query()) == len(ids) == 4


async def test_get_many_keeps_order_and_reports_missing_ids(
    backend: Backend, make_job: MakeJob
) -> None:
    a, b = make_job("a"), make_job("b")
    await backend.enqueue([a, b])
    found = await backend.get_many([b.id, "missing", a.id])
    assert [j.task if j else None for j in found] == ["b", None, "a"]
    assert await backend.get_many([]) == []
