"""Dependencies (``after=``): the ``blocked`` state, release and cancellation, on every engine."""

from __future__ import annotations

import pytest

from conveyor.backends.base import Backend, DependencyNotFound, OutcomeKind
from conveyor.job import JobState
from tests.contract.conftest import FakeClock, MakeJob, Ops


async def state(backend: Backend, job_id: str) -> JobState:
    job = await backend.get(job_id)
    assert job is not None
    return job.state


async def test_blocked_until_every_dependency_succeeded(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    a, b = make_job("a"), make_job("b")
    child = make_job("c", after=(a.id, b.id))
    assert await backend.enqueue([a, b, child]) == [a.id, b.id, child.id]
    assert await state(backend, child.id) is JobState.BLOCKED
    first = await ops.claim_one(backend)
    second = await ops.claim_one(backend)
    assert await backend.claim(["default"], 5, worker="w", lease=30) == []  # child blocked
    await ops.succeed(backend, first)
    assert await state(backend, child.id) is JobState.BLOCKED
    await ops.succeed(backend, second)
    assert await state(backend, child.id) is JobState.QUEUED
    claimed = await ops.claim_one(backend)
    assert claimed.id == child.id
    stats = {(s.queue, s.tenant): s for s in await backend.stats()}
    assert stats[("default", None)].blocked == 0


async def test_blocked_jobs_are_counted_and_listed(backend: Backend, make_job: MakeJob) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,))
    await backend.enqueue([parent, child])
    assert [j.id for j in await backend.query(state=JobState.BLOCKED)] == [child.id]
    (stats,) = await backend.stats()
    assert stats.blocked == 1 and stats.queued == 1


async def test_dead_dependency_cancels_dependents_in_a_cascade(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    parent = make_job("p", max_attempts=1)
    child = make_job("c", after=(parent.id,))
    grandchild = make_job("g", after=(child.id,))
    await backend.enqueue([parent, child, grandchild])
    claimed = await ops.claim_one(backend)
    dead = ops.outcome(claimed, OutcomeKind.DEAD, error_json=None)
    assert await backend.finish([dead]) == [True]
    for job_id in (child.id, grandchild.id):
        job = await backend.get(job_id)
        assert job is not None and job.state is JobState.CANCELLED
        assert job.error is not None and job.error.type == "DependencyFailed"
        assert job.finished_at is not None
    child_job = await backend.get(child.id)
    assert child_job is not None and child_job.error is not None
    assert parent.id in child_job.error.message and "dead" in child_job.error.message
    assert await backend.claim(["default"], 5, worker="w", lease=30) == []


async def test_policy_always_runs_after_a_failed_dependency(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,), after_policy="always")
    await backend.enqueue([parent, child])
    assert await backend.cancel(parent.id) is JobState.CANCELLED
    assert await state(backend, child.id) is JobState.QUEUED
    assert (await ops.claim_one(backend)).id == child.id


async def test_dependencies_already_finished_are_settled_at_enqueue(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    ok, failed = make_job("ok"), make_job("bad")
    await backend.enqueue([ok, failed])
    await ops.succeed(backend, await ops.claim_one(backend))
    await backend.cancel(failed.id)
    runs = make_job("c1", after=(ok.id,))
    cancelled = make_job("c2", after=(ok.id, failed.id))
    anyway = make_job("c3", after=(failed.id,), after_policy="always")
    await backend.enqueue([runs, cancelled, anyway])
    assert await state(backend, runs.id) is JobState.QUEUED
    assert await state(backend, anyway.id) is JobState.QUEUED
    job = await backend.get(cancelled.id)
    assert job is not None and job.state is JobState.CANCELLED
    assert job.error is not None and job.error.type == "DependencyFailed"


async def test_unknown_dependency_is_refused_and_nothing_is_inserted(
    backend: Backend, make_job: MakeJob
) -> None:
    fine = make_job("fine")
    bad = make_job("c", after=("no-such-job",))
    with pytest.raises(DependencyNotFound):
        await backend.enqueue([fine, bad])
    assert await backend.get(fine.id) is None
    assert await backend.get(bad.id) is None


async def test_cancelling_a_blocked_job_cancels_its_dependents(
    backend: Backend, make_job: MakeJob
) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,))
    grandchild = make_job("g", after=(child.id,))
    await backend.enqueue([parent, child, grandchild])
    assert await backend.cancel(child.id) is JobState.CANCELLED
    assert await state(backend, grandchild.id) is JobState.CANCELLED
    assert await state(backend, parent.id) is JobState.QUEUED


async def test_released_job_with_a_future_due_time_is_scheduled(
    backend: Backend, make_job: MakeJob, ops: type[Ops], clock: FakeClock
) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,), delay=60.0)
    await backend.enqueue([parent, child])
    await ops.succeed(backend, await ops.claim_one(backend))
    assert await state(backend, child.id) is JobState.SCHEDULED
    clock.advance(61)
    assert (await ops.claim_one(backend)).id == child.id


async def test_reaped_dead_dependency_cancels_dependents(
    backend: Backend, make_job: MakeJob, ops: type[Ops], clock: FakeClock
) -> None:
    parent = make_job("p", max_attempts=1)
    child = make_job("c", after=(parent.id,))
    await backend.enqueue([parent, child])
    await ops.claim_one(backend, lease=10.0)
    clock.advance(11)
    assert await backend.reap() == 1
    assert await state(backend, parent.id) is JobState.DEAD
    assert await state(backend, child.id) is JobState.CANCELLED


async def test_retry_does_not_release_dependents(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    parent = make_job("p", max_attempts=2)
    child = make_job("c", after=(parent.id,))
    await backend.enqueue([parent, child])
    claimed = await ops.claim_one(backend)
    await backend.finish([ops.outcome(claimed, OutcomeKind.RETRY, retry_delay=0.0)])
    assert await state(backend, child.id) is JobState.BLOCKED
    await ops.succeed(backend, await ops.claim_one(backend))
    assert await state(backend, child.id) is JobState.QUEUED


async def test_a_blocked_job_holds_its_dedup_key(backend: Backend, make_job: MakeJob) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,), key="k")
    await backend.enqueue([parent, child])
    again = make_job("c", key="k")
    assert await backend.enqueue([again]) == [child.id]


async def test_replaying_a_cancelled_dependent_queues_it(
    backend: Backend, make_job: MakeJob
) -> None:
    parent = make_job("p")
    child = make_job("c", after=(parent.id,))
    await backend.enqueue([parent, child])
    await backend.cancel(parent.id)
    assert await state(backend, child.id) is JobState.CANCELLED
    assert await backend.replay(child.id) is True
    assert await state(backend, child.id) is JobState.QUEUED


async def test_key_window_outlives_the_job(
    backend: Backend, make_job: MakeJob, ops: type[Ops], clock: FakeClock
) -> None:
    first = make_job("t", key="report:7", unique_for=3600.0)
    assert await backend.enqueue([first]) == [first.id]
    await ops.succeed(backend, await ops.claim_one(backend))
    again = make_job("t", key="report:7", unique_for=3600.0)
    assert await backend.enqueue([again]) == [first.id]  # finished, but in its window
    plain = make_job("t", key="report:7")
    assert await backend.enqueue([plain]) == [plain.id]  # no window asked: only active
    await ops.succeed(backend, await ops.claim_one(backend))
    clock.advance(3601)
    later = make_job("t", key="report:7", unique_for=3600.0)
    assert await backend.enqueue([later]) == [later.id]


async def test_key_window_respects_an_active_holder(backend: Backend, make_job: MakeJob) -> None:
    active = make_job("t", key="k")
    await backend.enqueue([active])
    windowed = make_job("t", key="k", unique_for=60.0)
    assert await backend.enqueue([windowed]) == [active.id]


async def test_a_dependency_refused_for_its_key_in_the_same_call_is_not_found(
    backend: Backend, make_job: MakeJob
) -> None:
    holder = make_job("h", key="k")
    await backend.enqueue([holder])
    refused = make_job("h", key="k")
    child = make_job("c", after=(refused.id,))
    with pytest.raises(DependencyNotFound):
        await backend.enqueue([refused, child])
    assert await backend.get(child.id) is None
