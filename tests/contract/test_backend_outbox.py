"""The outbox (``take_events`` / ``ack_events``): the store records ``job.cancelled`` for
the jobs it cancels itself, in the same atomic operation, on every engine; never for a
running job that its worker cancels (the worker announces that one)."""

from __future__ import annotations

from conveyor.backends.base import JOB_CANCELLED, Backend, Lease, OutcomeKind, RateBucket
from conveyor.job import JobState
from tests.contract.conftest import FakeClock, MakeJob, Ops


async def pairs(backend: Backend) -> list[tuple[str, str]]:
    return [(e.name, e.job_id) for e in await backend.take_events(100)]


async def test_cancel_of_a_job_no_worker_holds_is_recorded_once(
    backend: Backend, make_job: MakeJob
) -> None:
    queued, delayed = make_job("q"), make_job("d", delay=60.0)
    await backend.enqueue([queued, delayed])
    assert await backend.take_events(10) == []
    assert await backend.cancel(queued.id) is JobState.CANCELLED
    assert await backend.cancel(delayed.id) is JobState.CANCELLED
    assert await backend.cancel(queued.id) is JobState.CANCELLED  # already: nothing new
    assert await pairs(backend) == [(JOB_CANCELLED, queued.id), (JOB_CANCELLED, delayed.id)]


async def test_events_stay_until_acked_and_come_oldest_first(
    backend: Backend, make_job: MakeJob
) -> None:
    jobs = [make_job("t") for _ in range(3)]
    await backend.enqueue(jobs)
    for job in jobs:
        await backend.cancel(job.id)
    first = await backend.take_events(2)
    assert [e.job_id for e in first] == [jobs[0].id, jobs[1].id]
    assert [e.job_id for e in await backend.take_events(2)] == [jobs[0].id, jobs[1].id]
    await backend.ack_events([e.ref for e in first])
    await backend.ack_events([e.ref for e in first])  # acking twice is harmless
    assert await pairs(backend) == [(JOB_CANCELLED, jobs[2].id)]
    await backend.ack_events([e.ref for e in await backend.take_events(10)])
    assert await backend.take_events(10) == []


async def test_a_cascade_records_every_dependent_it_cancels(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    a = make_job("a", max_attempts=1)
    b = make_job("b", after=(a.id,))
    c = make_job("c", after=(b.id,))
    always = make_job("report", after=(a.id,), after_policy="always")
    await backend.enqueue([a, b, c, always])
    claimed = await ops.claim_one(backend)
    assert await backend.finish([ops.outcome(claimed, OutcomeKind.DEAD)]) == [True]
    # a died (its worker announces that); b and c were cancelled by the store.
    assert sorted(await pairs(backend)) == sorted([(JOB_CANCELLED, b.id), (JOB_CANCELLED, c.id)])
    late = make_job("late", after=(a.id,))  # enqueued after its dependency failed
    await backend.enqueue([late])
    assert (JOB_CANCELLED, late.id) in await pairs(backend)


async def test_a_cancel_its_worker_honours_is_not_recorded(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    job = make_job("long")
    child = make_job("child", after=(job.id,))
    await backend.enqueue([job, child])
    claimed = await ops.claim_one(backend)
    assert await backend.cancel(job.id) is JobState.RUNNING  # a request only
    assert await backend.take_events(10) == []
    assert await backend.finish([ops.outcome(claimed, OutcomeKind.CANCELLED)]) == [True]
    # The worker announces its own job; only the dependent the store cancelled is owed.
    assert await pairs(backend) == [(JOB_CANCELLED, child.id)]


async def test_the_reaper_records_the_running_job_it_cancels_for_a_lost_worker(
    backend: Backend, make_job: MakeJob, ops: type[Ops], clock: FakeClock
) -> None:
    """Its worker is gone, so nobody else would announce it (the outbox trigger leaves
    running -> cancelled out); requeued and dead jobs owe nothing here."""
    cancelled = make_job("asked", max_attempts=1)
    child = make_job("child", after=(cancelled.id,))
    requeued, dead = make_job("again", max_attempts=2), make_job("last", max_attempts=1)
    await backend.enqueue([cancelled, child, requeued, dead])
    assert len(await backend.claim(["default"], 3, worker="lost", lease=10.0)) == 3
    assert await backend.cancel(cancelled.id) is JobState.RUNNING  # a request only
    assert await backend.take_events(10) == []
    clock.advance(10.0)
    assert await backend.reap_lost() == (3, [dead.id])
    assert (await backend.get(cancelled.id)).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert sorted(await pairs(backend)) == sorted(
        [(JOB_CANCELLED, cancelled.id), (JOB_CANCELLED, child.id)]
    )
    assert await backend.reap_lost() == (0, [])  # nothing reaped twice, nothing recorded
    assert len(await pairs(backend)) == 2


async def test_a_rate_limit_deferral_that_cancels_a_running_job_records_it(
    backend: Backend, make_job: MakeJob
) -> None:
    """Over its rate limit with a cancel pending, the job is cancelled instead of waiting
    for its slot: its attempt was given back, so no worker outcome will announce it."""
    one = RateBucket("task:t", 1, 60.0)
    await backend.enqueue([make_job("t"), make_job("t")])
    first, second = await backend.claim(["default"], 2, worker="w", lease=30)
    assert await backend.take_rate(Lease(first.id, first.lease_token), [one]) == 0.0
    assert await backend.cancel(second.id) is JobState.RUNNING  # a request only
    assert await backend.take_events(10) == []
    assert await backend.take_rate(Lease(second.id, second.lease_token), [one]) == 60.0
    assert (await backend.get(second.id)).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert await pairs(backend) == [(JOB_CANCELLED, second.id)]
    third = make_job("t")  # deferred without a cancel request: nothing owed
    await backend.enqueue([third])
    (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30)
    assert await backend.take_rate(Lease(claimed.id, claimed.lease_token), [one]) > 0.0
    assert await pairs(backend) == [(JOB_CANCELLED, second.id)]
