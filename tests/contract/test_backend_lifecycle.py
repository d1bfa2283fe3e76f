"""A job's life: delays, leases, fencing, the reaper, retries, outcomes, progress."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, HeartbeatReply, Lease, OutcomeKind, job_error_json
from conveyor.job import JobState, from_timestamp

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, OpenBackend, Ops


def error(attempt: int, message: str = "boom", at: float = 0.0) -> str:
    return job_error_json(attempt, "ValueError", message, at, "Traceback...")


async def test_delayed_job_waits_until_due(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(delay=10.0)
    await backend.enqueue([job])
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.SCHEDULED
    assert info.run_at == from_timestamp(clock.now + 10.0)

    clock.advance(9.999)
    assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []
    assert await backend.promote() == 0
    clock.advance(0.001)
    assert (await ops.claim_one(backend)).id == job.id


async def test_run_at_wins_over_delay(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    future = make_job(run_at=clock.now + 5.0, delay=1000.0)
    past = make_job(run_at=clock.now - 5.0, delay=1000.0)
    zero = make_job(delay=0.0)
    await backend.enqueue([future, past, zero])
    states = {j.id: j.state for j in await backend.query()}
    assert states == {
        future.id: JobState.SCHEDULED,
        past.id: JobState.QUEUED,
        zero.id: JobState.QUEUED,
    }
    clock.advance(5.0)
    assert await backend.promote() == 1
    info = await backend.get(future.id)
    assert info is not None and info.state is JobState.QUEUED


async def test_claim_sets_the_lease_and_counts_the_attempt(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(max_attempts=4, timeout=7.0)
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend, lease=30.0, worker="host:1")
    assert claimed.attempt == 1
    assert claimed.max_attempts == 4
    assert claimed.timeout == 7.0
    assert claimed.lease_expires_at == clock.now + 30.0
    assert claimed.enqueued_at == clock.now
    assert len(claimed.lease_token) >= 16
    info = await backend.get(job.id)
    assert info is not None
    assert info.state is JobState.RUNNING and info.attempt == 1 and info.worker == "host:1"
    assert info.started_at == from_timestamp(clock.now)
    assert info.lease_expires_at == from_timestamp(clock.now + 30.0)


async def test_heartbeat_extends_the_lease(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend, lease=30.0)
    lease = Lease(claimed.id, claimed.lease_token)
    for _ in range(5):
        clock.advance(20.0)
        reply = await backend.heartbeat([lease], lease=30.0)
        assert reply.lost == frozenset() and reply.cancel_requested == frozenset()
        assert await backend.reap() == 0
    info = await backend.get(claimed.id)
    assert info is not None and info.lease_expires_at == from_timestamp(clock.now + 30.0)
    assert await backend.heartbeat([], lease=30.0) == HeartbeatReply(frozenset(), frozenset())


async def test_reaper_requeues_an_expired_lease(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=3)])
    claimed = await ops.claim_one(backend, lease=30.0)
    clock.advance(29.0)
    assert await backend.reap() == 0
    clock.advance(1.0)
    assert await backend.reap() == 1
    info = await backend.get(claimed.id)
    assert info is not None
    assert info.state is JobState.QUEUED
    assert info.attempt == 1  # the lost attempt counts
    assert info.lease_expires_at is None
    assert [(e.attempt, e.type) for e in info.errors] == [(1, "WorkerLost")]
    assert info.errors[0].message == "worker lost (lease expired)"
    assert info.errors[0].at == from_timestamp(clock.now)

    again = await ops.claim_one(backend)
    assert again.id == claimed.id and again.attempt == 2
    assert again.lease_token != claimed.lease_token


async def test_reaper_kills_a_job_out_of_attempts(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=2)])
    for _ in range(2):
        await ops.claim_one(backend, lease=10.0)
        clock.advance(10.0)
        assert await backend.reap() == 1
    info = (await backend.query())[0]
    assert info.state is JobState.DEAD
    assert info.finished_at == from_timestamp(clock.now)
    assert [e.attempt for e in info.errors] == [1, 2]
    assert info.error is not None and info.error.type == "WorkerLost"
    assert await backend.claim(["default"], 1, worker="w", lease=10.0) == []


async def test_stale_lease_is_fenced_off(
    backend: Backend, open_backend: OpenBackend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    other = await open_backend()
    await backend.enqueue([make_job()])
    stale = await ops.claim_one(backend, lease=10.0)
    clock.advance(11.0)
    await other.reap()
    fresh = await ops.claim_one(other, worker="w2")
    assert fresh.id == stale.id

    assert await backend.finish([ops.outcome(stale, OutcomeKind.SUCCEEDED, result_json="1")]) == [
        False
    ]
    assert not await backend.progress(Lease(stale.id, stale.lease_token), 0.5, "stale")
    reply = await backend.heartbeat([Lease(stale.id, stale.lease_token)], lease=30.0)
    assert reply.lost == {stale.id}
    info = await backend.get(stale.id)
    assert info is not None
    assert info.state is JobState.RUNNING and info.worker == "w2" and info.result is None
    assert info.progress is None

    await ops.succeed(other, fresh, result=2)
    info = await backend.get(stale.id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.result == 2


async def test_finish_is_per_outcome(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    await backend.enqueue([make_job(), make_job()])
    a, b = await backend.claim(["default"], 2, worker="w", lease=30.0)
    bogus = ops.outcome(a, OutcomeKind.SUCCEEDED, result_json="0")
    bogus = type(bogus)(id=b.id, lease_token="not-the-token", kind=OutcomeKind.SUCCEEDED)
    good = ops.outcome(a, OutcomeKind.SUCCEEDED, result_json='{"ok":true}')
    assert await backend.finish([bogus, good]) == [False, True]
    assert await backend.finish([good]) == [False]  # not running any more
    assert await backend.finish([]) == []
    info = await backend.get(a.id)
    assert info is not None and info.result == {"ok": True}


async def test_succeeded_record(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(result_ttl=100.0)])
    claimed = await ops.claim_one(backend)
    clock.advance(3.0)
    await ops.succeed(backend, claimed, result={"n": [1, 2]})
    info = await backend.get(claimed.id)
    assert info is not None
    assert info.state is JobState.SUCCEEDED
    assert info.result == {"n": [1, 2]}
    assert info.finished_at == from_timestamp(clock.now)
    assert info.expires_at == from_timestamp(clock.now + 100.0)
    assert info.lease_expires_at is None


async def test_retry_with_delay_waits_then_runs_again(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=3)])
    claimed = await ops.claim_one(backend)
    retry = ops.outcome(
        claimed, OutcomeKind.RETRY, error_json=error(1, at=clock.now), retry_delay=10
    )
    assert await backend.finish([retry]) == [True]
    info = await backend.get(claimed.id)
    assert info is not None
    assert info.state is JobState.RETRYING
    assert info.run_at == from_timestamp(clock.now + 10.0)
    assert [(e.attempt, e.type, e.message, e.traceback) for e in info.errors] == [
        (1, "ValueError", "boom", "Traceback...")
    ]
    assert info.lease_expires_at is None

    clock.advance(9.0)
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []
    clock.advance(1.0)
    again = await ops.claim_one(backend)
    assert again.id == claimed.id and again.attempt == 2


async def test_retry_without_delay_is_queued_at_once(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    retry = ops.outcome(claimed, OutcomeKind.RETRY, error_json=error(1), retry_delay=0.0)
    assert await backend.finish([retry]) == [True]
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.QUEUED
    assert (await ops.claim_one(backend)).attempt == 2


async def test_retry_on_the_last_attempt_is_dead(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    # The core should say DEAD here; the store still never starts a job more than
    # max_attempts times.
    await backend.enqueue([make_job(max_attempts=1)])
    claimed = await ops.claim_one(backend)
    retry = ops.outcome(claimed, OutcomeKind.RETRY, error_json=error(1), retry_delay=0.0)
    assert await backend.finish([retry]) == [True]
    info = await backend.get(claimed.id)
    assert info is not None and info.state is JobState.DEAD
    assert info.finished_at == from_timestamp(clock.now)
    assert [e.attempt for e in info.errors] == [1]
    assert await backend.claim(["default"], 1, worker="w", lease=30.0) == []


async def test_dead_outcome_keeps_the_history(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=2, result_ttl=1.0)])
    first = await ops.claim_one(backend)
    await backend.finish([ops.outcome(first, OutcomeKind.RETRY, error_json=error(1, "one"))])
    second = await ops.claim_one(backend)
    dead = ops.outcome(second, OutcomeKind.DEAD, error_json=error(2, "two"))
    assert await backend.finish([dead]) == [True]
    info = await backend.get(first.id)
    assert info is not None
    assert info.state is JobState.DEAD
    assert [e.message for e in info.errors] == ["one", "two"]
    assert info.error is not None and info.error.attempt == 2
    assert info.finished_at == from_timestamp(clock.now)
    assert info.expires_at is None  # the dead-letter queue is kept
    clock.advance(10_000.0)
    assert await backend.purge() == 0
    assert [j.id for j in await backend.query(state=JobState.DEAD)] == [first.id]


async def test_released_job_gets_its_attempt_back(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job(max_attempts=1)])
    claimed = await ops.claim_one(backend)
    assert await backend.finish([ops.outcome(claimed, OutcomeKind.RELEASED)]) == [True]
    info = await backend.get(claimed.id)
    assert info is not None
    assert info.state is JobState.QUEUED and info.attempt == 0 and info.errors == ()
    assert info.lease_expires_at is None
    assert (await ops.claim_one(backend)).attempt == 1


async def test_progress_is_recorded_and_fenced(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    lease = Lease(claimed.id, claimed.lease_token)
    assert await backend.progress(lease, 0.4, "resized 4/10")
    info = await backend.get(claimed.id)
    assert info is not None and (info.progress, info.progress_message) == (0.4, "resized 4/10")
    assert not await backend.progress(Lease(claimed.id, "wrong"), 0.9, "nope")
    await ops.succeed(backend, claimed)
    assert not await backend.progress(lease, 1.0, "late")
    info = await backend.get(claimed.id)
    assert info is not None and info.progress == 0.4


async def test_result_ttl_purge(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    short = make_job(result_ttl=100.0)
    forever = make_job(result_ttl=None)
    await backend.enqueue([short, forever])
    for claimed in await backend.claim(["default"], 2, worker="w", lease=30.0):
        await ops.succeed(backend, claimed)
    clock.advance(99.0)
    assert await backend.purge() == 0
    clock.advance(1.0)
    assert await backend.purge() == 1
    assert await backend.get(short.id) is None
    clock.advance(10**9)
    assert await backend.purge() == 0
    assert await backend.get(forever.id) is not None


async def test_errors_json_is_stored_verbatim(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    claimed = await ops.claim_one(backend)
    record = json.loads(error(1, 'unicode ✓ "quoted"', at=123.5))
    await backend.finish([ops.outcome(claimed, OutcomeKind.DEAD, error_json=json.dumps(record))])
    info = await backend.get(claimed.id)
    assert info is not None and info.error is not None
    assert info.error.message == 'unicode ✓ "quoted"'
    assert info.error.at == from_timestamp(123.5)
