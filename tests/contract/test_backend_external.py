"""External completion: park (running -> waiting), complete_external, expiry, cancel."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from conveyor.backends.base import (
    EXTERNAL_TIMEOUT,
    Backend,
    ClaimedJob,
    ExternalReply,
    Outcome,
    OutcomeKind,
    job_error_json,
)
from conveyor.job import JobState, from_timestamp
from conveyor.serialize import dumps

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, Ops


async def park(backend: Backend, job: ClaimedJob, deadline: float = 60.0) -> None:
    out = Outcome(job.id, job.lease_token, OutcomeKind.PARKED, retry_delay=deadline)
    assert await backend.finish([out]) == [True]


def done(job_id: str, token: str, result: object = None) -> Outcome:
    return Outcome(job_id, token, OutcomeKind.SUCCEEDED, result_json=dumps(result))


async def test_park_frees_the_slot_and_keeps_the_deadline(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(tenant="a")
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed, deadline=60.0)
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.WAITING
    assert info.lease_expires_at == from_timestamp(clock.now + 60.0)
    (row,) = [s for s in await backend.stats() if s.tenant == "a"]
    assert (row.waiting, row.running, row.queued) == (1, 0, 0)
    # Parked, the job holds no lease: heartbeats are refused, a repeated park is a
    # no-op, and the reaper leaves it alone when the old lease time passes.
    reply = await backend.heartbeat([_lease(claimed)], lease=30.0)
    assert reply.lost == {job.id}
    again = Outcome(job.id, claimed.lease_token, OutcomeKind.PARKED, retry_delay=999.0)
    assert await backend.finish([again]) == [False]
    clock.advance(40.0)
    assert await backend.reap() == 0
    assert (await backend.get(job.id)).state is JobState.WAITING  # type: ignore[union-attr]


def _lease(job: ClaimedJob):  # type: ignore[no-untyped-def]
    from conveyor.backends.base import Lease

    return Lease(job.id, job.lease_token)


async def test_complete_with_the_token_succeeds_once(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job()
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed)
    clock.advance(10.0)
    assert await backend.complete_external(done(job.id, "wrong")) is ExternalReply.UNKNOWN
    assert await backend.complete_external(done("nope", claimed.lease_token)) is (
        ExternalReply.UNKNOWN
    )
    reply = await backend.complete_external(done(job.id, claimed.lease_token, {"ok": 1}))
    assert reply is ExternalReply.APPLIED
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.SUCCEEDED and info.result == {"ok": 1}
    assert info.finished_at == from_timestamp(clock.now)
    again = await backend.complete_external(done(job.id, claimed.lease_token, 2))
    assert again is ExternalReply.CLOSED
    assert (await backend.get(job.id)).result == {"ok": 1}  # type: ignore[union-attr]


async def test_fail_from_outside_follows_the_retry_rules(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(max_attempts=2)
    await backend.enqueue([job])
    first = await ops.claim_one(backend)
    await park(backend, first)
    err = job_error_json(1, "ExternalFailure", "bad", clock.now)
    retry = Outcome(job.id, first.lease_token, OutcomeKind.RETRY, error_json=err, retry_delay=5)
    assert await backend.complete_external(retry) is ExternalReply.APPLIED
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.RETRYING
    assert [e.type for e in info.errors] == ["ExternalFailure"]
    clock.advance(5.0)
    second = await ops.claim_one(backend)
    assert second.id == job.id and second.attempt == 2
    await park(backend, second)
    # The first attempt's token no longer completes anything.
    assert await backend.complete_external(done(job.id, first.lease_token)) is (
        ExternalReply.UNKNOWN
    )
    retry = Outcome(job.id, second.lease_token, OutcomeKind.RETRY, error_json=err)
    assert await backend.complete_external(retry) is ExternalReply.APPLIED
    assert (await backend.get(job.id)).state is JobState.DEAD  # type: ignore[union-attr]


async def test_deadline_expiry_retries_then_refuses_the_late_completion(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(max_attempts=2)
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed, deadline=30.0)
    clock.advance(29.0)
    assert await backend.expire_waiting() == []
    clock.advance(1.0)
    # Past the deadline, before the reaper ran: already refused as late.
    assert await backend.complete_external(done(job.id, claimed.lease_token)) is (
        ExternalReply.LATE
    )
    assert await backend.expire_waiting() == [(job.id, JobState.QUEUED)]
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.QUEUED
    assert info.errors[-1].type == EXTERNAL_TIMEOUT and info.errors[-1].attempt == 1
    assert await backend.complete_external(done(job.id, claimed.lease_token)) is (
        ExternalReply.LATE
    )
    second = await ops.claim_one(backend)
    await park(backend, second, deadline=30.0)
    clock.advance(31.0)
    assert await backend.expire_waiting() == [(job.id, JobState.DEAD)]
    assert (await backend.get(job.id)).state is JobState.DEAD  # type: ignore[union-attr]


async def test_deadline_expiry_applies_the_retry_delay(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(task="tasks.slow", max_attempts=2)
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed, deadline=30.0)
    clock.advance(30.0)
    asked: list[tuple[str, int]] = []

    def delay(task: str, attempt: int) -> float:
        asked.append((task, attempt))
        return 7.5

    assert await backend.expire_waiting(delay) == [(job.id, JobState.RETRYING)]
    assert asked == [("tasks.slow", 1)]
    info = await backend.get(job.id)
    assert info is not None and info.state is JobState.RETRYING
    assert info.run_at == from_timestamp(clock.now + 7.5)
    assert info.errors[-1].type == EXTERNAL_TIMEOUT and info.errors[-1].attempt == 1
    # Expired once: a second pass finds nothing, a late completion is refused.
    assert await backend.expire_waiting(delay) == []
    assert await backend.complete_external(done(job.id, claimed.lease_token)) is (
        ExternalReply.LATE
    )
    clock.advance(7.0)
    await backend.promote()
    assert (await backend.get(job.id)).state is JobState.RETRYING  # type: ignore[union-attr]
    clock.advance(0.5)
    await backend.promote()
    assert (await backend.get(job.id)).state is JobState.QUEUED  # type: ignore[union-attr]
    # The last attempt times out too: dead, whatever the delay.
    second = await ops.claim_one(backend)
    await park(backend, second, deadline=30.0)
    clock.advance(30.0)
    assert await backend.expire_waiting(delay) == [(job.id, JobState.DEAD)]
    assert asked == [("tasks.slow", 1), ("tasks.slow", 2)]
    assert (await backend.get(job.id)).state is JobState.DEAD  # type: ignore[union-attr]


async def test_cancel_of_a_waiting_job_cancels_it(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job()
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed)
    assert await backend.cancel(job.id) is JobState.CANCELLED
    assert await backend.complete_external(done(job.id, claimed.lease_token)) is (
        ExternalReply.CLOSED
    )
    assert [s.waiting for s in await backend.stats()] == [0]


async def test_park_after_a_cancel_request_cancels(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job()
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    assert await backend.cancel(job.id) is JobState.RUNNING
    await park(backend, claimed)
    assert (await backend.get(job.id)).state is JobState.CANCELLED  # type: ignore[union-attr]


async def test_external_completion_settles_dependents(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    parent = make_job()
    child = make_job(after=(parent.id,))
    await backend.enqueue([parent, child])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed)
    assert (await backend.get(child.id)).state is JobState.BLOCKED  # type: ignore[union-attr]
    assert await backend.complete_external(done(parent.id, claimed.lease_token, 7)) is (
        ExternalReply.APPLIED
    )
    assert (await backend.get(child.id)).state is JobState.QUEUED  # type: ignore[union-attr]


async def test_expired_to_dead_cancels_dependents(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    parent = make_job(max_attempts=1)
    child = make_job(after=(parent.id,))
    await backend.enqueue([parent, child])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed, deadline=5.0)
    clock.advance(5.0)
    assert await backend.expire_waiting() == [(parent.id, JobState.DEAD)]
    info = await backend.get(child.id)
    assert info is not None and info.state is JobState.CANCELLED
    assert json.loads(json.dumps(info.errors[-1].type)) == "DependencyFailed"


async def test_a_waiting_job_holds_its_dedup_key(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    job = make_job(key="k")
    await backend.enqueue([job])
    claimed = await ops.claim_one(backend)
    await park(backend, claimed)
    assert await backend.enqueue([make_job(key="k")]) == [job.id]
    listed = await backend.query(state=JobState.WAITING)
    assert [j.id for j in listed] == [job.id]


async def test_reap_lost_reports_the_jobs_it_sent_to_dead(
    backend: Backend, make_job: MakeJob, clock: FakeClock, ops: Ops
) -> None:
    """The worker announces job.dead for them (the reaper's own outcome)."""
    last = make_job(max_attempts=1)
    again = make_job(max_attempts=2)
    cancelled = make_job(max_attempts=1)
    await backend.enqueue([last, again, cancelled])
    await backend.claim(["default"], 3, worker="w", lease=10.0)
    assert await backend.cancel(cancelled.id) is JobState.RUNNING
    assert await backend.reap_lost() == (0, [])
    clock.advance(10.0)
    assert await backend.reap_lost() == (3, [last.id])
