"""Operators: cancel in every state, replay, and dedup keys."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from conveyor.backends.base import Backend, Lease, OutcomeKind
from conveyor.errors import InvalidTransition
from conveyor.job import JobState, from_timestamp

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, OpenBackend, Ops


async def test_cancel_waiting_jobs(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=3, result_ttl=50.0)])
    retrying = await ops.claim_one(backend)
    await backend.finish([ops.outcome(retrying, OutcomeKind.RETRY, retry_delay=60.0)])
    scheduled = make_job(delay=60.0, result_ttl=50.0)
    queued = make_job(result_ttl=50.0)
    await backend.enqueue([scheduled, queued])

    for job_id in (scheduled.id, queued.id, retrying.id):
        assert await backend.cancel(job_id) is JobState.CANCELLED
        info = await backend.get(job_id)
        assert info is not None and info.state is JobState.CANCELLED
        assert info.finished_at == from_timestamp(clock.now)
        assert info.expires_at == from_timestamp(clock.now + 50.0)
    clock.advance(1000.0)
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []


async def test_cancel_queued_job_is_never_claimed(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    job = make_job(result_ttl=50.0)
    await backend.enqueue([job])
    assert await backend.cancel(job.id) is JobState.CANCELLED
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    info = await backend.get(job.id)
    assert info is not None and info.expires_at == from_timestamp(clock.now + 50.0)
    stats = {(s.queue, s.tenant): s for s in await backend.stats()}
    assert stats[("default", None)].queued == 0
    assert stats[("default", None)].cancelled == 1


async def test_cancel_running_job_is_a_request(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    lease = Lease(claimed.id, claimed.lease_token)
    assert await backend.cancel(claimed.id) is JobState.RUNNING
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.RUNNING and info.cancel_requested

    reply = await backend.heartbeat([lease], lease=30.0)
    assert reply.cancel_requested == {claimed.id} and reply.lost == frozenset()
    done = ops.outcome(claimed, OutcomeKind.CANCELLED)
    assert await backend.finish([done]) == [True]
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.CANCELLED


async def test_cancel_finished_or_missing(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    await ops.succeed(backend, claimed, result=5)
    assert await backend.cancel(claimed.id) is JobState.SUCCEEDED
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.result == 5
    assert await backend.cancel("0190f1e2-0000-7000-8000-000000000000") is None


async def test_replay_dead_job(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=1, priority=2)])
    claimed = await ops.claim_one(backend)
    await backend.finish(
        [
            ops.outcome(
                claimed, OutcomeKind.DEAD, error_json='{"attempt":1,"type":"E","message":"m"}'
            )
        ]
    )
    assert await backend.replay(claimed.id) is True
    info = await backend.get(claimed.id)
    assert info is not None
    assert info.state is JobState.QUEUED
    assert info.attempt == 0
    assert info.finished_at is None and info.expires_at is None and info.result is None
    assert [e.type for e in info.errors] == ["E"]  # history kept
    assert info.priority == 2
    again = await ops.claim_one(backend)
    assert again.id == claimed.id and again.attempt == 1


async def test_replay_cancelled_job(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    job = make_job(result_ttl=10.0)
    await backend.enqueue([job])
    await backend.cancel(job.id)
    assert await backend.replay(job.id) is True
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.QUEUED and info.expires_at is None
    assert (await ops.claim_one(backend)).id == job.id


async def test_replay_refuses_other_states(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    running, queued = make_job(), make_job()
    await backend.enqueue([running, queued])
    claimed = await ops.claim_one(backend)
    assert claimed.id == running.id
    assert await backend.replay(queued.id) is False
    assert await backend.replay(running.id) is False
    await ops.succeed(backend, claimed)
    assert await backend.replay(running.id) is False
    assert await backend.replay("0190f1e2-0000-7000-8000-000000000000") is False


async def test_dedup_key_returns_the_active_job(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    first = make_job(key="report:7")
    [first_id] = await backend.enqueue([first])
    dup = make_job(key="report:7")
    assert await backend.enqueue([dup]) == [first_id]
    assert await backend.get(dup.id) is None

    claimed = await ops.claim_one(backend)  # running is still active
    assert await backend.enqueue([make_job(key="report:7")]) == [first_id]
    await ops.succeed(backend, claimed)

    fresh = make_job(key="report:7")
    assert await backend.enqueue([fresh]) == [fresh.id]
    assert fresh.id != first_id


async def test_dedup_within_one_batch_and_with_scheduled_jobs(
    backend: Backend, make_job: MakeJob
) -> None:
    a = make_job(key="k", delay=100.0)
    b = make_job(key="k")
    c = make_job(key="other")
    d = make_job()
    assert await backend.enqueue([a, b, c, d]) == [a.id, a.id, c.id, d.id]
    assert len(await backend.query()) == 3


async def test_concurrent_dedup_across_instances(
    open_backend: OpenBackend, make_job: MakeJob
) -> None:
    instances = [await open_backend() for _ in range(3)]
    for round_ in range(5):
        jobs = [make_job(key=f"same:{round_}") for _ in instances]
        results = await asyncio.gather(
            *(b.enqueue([job]) for b, job in zip(instances, jobs, strict=True))
        )
        ids = {r[0] for r in results}
        assert len(ids) == 1
        assert ids <= {j.id for j in jobs}
    assert len(await instances[0].query()) == 5


async def test_replay_refused_while_the_key_is_taken(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job(key="k", max_attempts=1)])
    claimed = await ops.claim_one(backend)
    await backend.finish([ops.outcome(claimed, OutcomeKind.DEAD)])
    holder = make_job(key="k")
    assert await backend.enqueue([holder]) == [holder.id]
    with pytest.raises(InvalidTransition, match="k"):
        await backend.replay(claimed.id)
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.DEAD

    await backend.cancel(holder.id)
    assert await backend.replay(claimed.id) is True


async def test_cancel_request_survives_a_lost_worker(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=3)])
    claimed = await ops.claim_one(backend, lease=10.0)
    assert await backend.cancel(claimed.id) is JobState.RUNNING
    clock.advance(10.0)
    assert await backend.reap() == 1
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.CANCELLED
    assert info.error is not None and info.error.type == "WorkerLost"
    assert await backend.claim(["default"], 1, worker="w", lease=10.0) == []


async def test_cancel_request_wins_over_retry_and_release(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=3), make_job(max_attempts=3)])
    a, b = await backend.claim(["default"], 2, worker="w", lease=30.0)
    for job in (a, b):
        assert await backend.cancel(job.id) is JobState.RUNNING
    retry = ops.outcome(a, OutcomeKind.RETRY, error_json=None, retry_delay=0.0)
    release = ops.outcome(b, OutcomeKind.RELEASED)
    assert await backend.finish([retry, release]) == [True, True]
    for job in (a, b):
        info = await backend.get(job.id)
        assert info is not None and info.state is JobState.CANCELLED
    assert await backend.claim(["default"], 2, worker="w", lease=30.0) == []
