"""Rate limits (``take_rate``): one budget for the whole store, slots reserved in order."""

from __future__ import annotations

from conveyor.backends.base import Backend, Lease, OutcomeKind, RateBucket
from conveyor.job import JobState
from tests.contract.conftest import FakeClock, MakeJob, OpenBackend, Ops

PER_SECOND_2 = RateBucket("task:t", 2, 1.0)


def lease_of(job: object) -> Lease:
    return Lease(job.id, job.lease_token)  # type: ignore[attr-defined]


async def test_a_burst_up_to_the_limit_runs_then_jobs_wait_for_their_slot(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob, clock: FakeClock
) -> None:
    other = await open_backend()  # a second worker draws on the same budget
    await backend.enqueue([make_job("t") for _ in range(4)])
    jobs = await backend.claim(["default"], 4, worker="w", lease=30)
    assert await backend.take_rate(lease_of(jobs[0]), [PER_SECOND_2]) == 0.0
    assert await other.take_rate(lease_of(jobs[1]), [PER_SECOND_2]) == 0.0
    third = await backend.take_rate(lease_of(jobs[2]), [PER_SECOND_2])
    fourth = await other.take_rate(lease_of(jobs[3]), [PER_SECOND_2])
    assert (third, fourth) == (0.5, 1.0)  # one start per 0.5 s, in order
    for deferred in jobs[2:]:
        job = await backend.get(deferred.id)
        assert job is not None and job.state is JobState.SCHEDULED
        assert job.attempt == 0  # no attempt used
    # The deferred outcome is gone: a late finish of that attempt is rejected.
    late = Ops.outcome(jobs[2], OutcomeKind.SUCCEEDED, result_json="1")
    assert await backend.finish([late]) == [False]
    clock.advance(0.5)
    (again,) = await backend.claim(["default"], 4, worker="w", lease=30)
    assert again.id == jobs[2].id and again.attempt == 1
    assert await backend.take_rate(lease_of(again), [PER_SECOND_2]) == 0.0  # its slot
    clock.advance(0.5)
    (last,) = await backend.claim(["default"], 4, worker="w", lease=30)
    assert await backend.take_rate(lease_of(last), [PER_SECOND_2]) == 0.0


async def test_a_job_under_two_limits_waits_for_the_stricter(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    loose = RateBucket("task:t", 100, 1.0)
    strict = RateBucket("tenant:a", 1, 10.0)
    await backend.enqueue([make_job("t", tenant="a") for _ in range(2)])
    first, second = await backend.claim(["default"], 2, worker="w", lease=30)
    assert await backend.take_rate(lease_of(first), [loose, strict]) == 0.0
    assert await backend.take_rate(lease_of(second), [loose, strict]) == 10.0
    clock.advance(10)
    (back,) = await backend.claim(["default"], 2, worker="w", lease=30)
    assert await backend.take_rate(lease_of(back), [loose, strict]) == 0.0


async def test_budget_refills_with_time(
    backend: Backend, make_job: MakeJob, clock: FakeClock
) -> None:
    await backend.enqueue([make_job("t") for _ in range(3)])
    jobs = await backend.claim(["default"], 3, worker="w", lease=30)
    for job in jobs[:2]:
        assert await backend.take_rate(lease_of(job), [PER_SECOND_2]) == 0.0
    clock.advance(5)
    assert await backend.take_rate(lease_of(jobs[2]), [PER_SECOND_2]) == 0.0


async def test_a_stale_lease_changes_nothing(
    backend: Backend, make_job: MakeJob, ops: type[Ops]
) -> None:
    await backend.enqueue([make_job("t")])
    job = await ops.claim_one(backend)
    assert await backend.take_rate(Lease(job.id, "not-the-token"), [PER_SECOND_2]) == 0.0
    stored = await backend.get(job.id)
    assert stored is not None and stored.state is JobState.RUNNING


async def test_a_cancel_requested_while_running_wins_over_the_deferral(
    backend: Backend, make_job: MakeJob
) -> None:
    one = RateBucket("task:t", 1, 60.0)
    await backend.enqueue([make_job("t"), make_job("t")])
    first, second = await backend.claim(["default"], 2, worker="w", lease=30)
    assert await backend.take_rate(lease_of(first), [one]) == 0.0
    assert await backend.cancel(second.id) is JobState.RUNNING  # a request
    assert await backend.take_rate(lease_of(second), [one]) == 60.0
    stored = await backend.get(second.id)
    assert stored is not None and stored.state is JobState.CANCELLED
