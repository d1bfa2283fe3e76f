"""``waiting_counts``: waiting jobs per (queue, tenant, priority, state), on every engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, DepthCount, Outcome, OutcomeKind, job_error_json

if TYPE_CHECKING:
    from tests.contract.conftest import FakeClock, MakeJob, Ops


def rows(found: list[DepthCount]) -> list[tuple[str, str | None, int, str, int]]:
    return [(d.queue, d.tenant, d.priority, d.state, d.count) for d in found]


async def test_empty_store_has_no_depth(backend: Backend) -> None:
    assert await backend.waiting_counts() == []


async def test_counts_every_waiting_state_by_priority(
    backend: Backend, make_job: MakeJob, ops: Ops, clock: FakeClock
) -> None:
    parent = make_job(priority=1)
    await backend.enqueue(
        [
            parent,
            make_job(priority=1),
            make_job(tenant="a", priority=5),
            make_job(tenant="a", priority=5, task="other"),  # another lane, same level
            make_job(tenant="a", priority=3, delay=60.0),  # scheduled
            make_job(queue="media", tenant="b", priority=2),
        ]
    )
    await backend.enqueue([make_job(tenant="a", priority=4, after=(parent.id,))])  # blocked
    # retrying: claimed, then failed with a delay
    await backend.enqueue([make_job(queue="retry", tenant="c", priority=7)])
    claimed = await ops.claim_one(backend, "retry")
    error = job_error_json(1, "ValueError", "boom", clock.now)
    retry = ops.outcome(claimed, OutcomeKind.RETRY, error_json=error, retry_delay=10.0)
    assert await backend.finish([retry]) == [True]
    # waiting: claimed, then parked for an external completion
    await backend.enqueue([make_job(queue="ext", priority=6)])
    claimed = await ops.claim_one(backend, "ext")
    parked = Outcome(claimed.id, claimed.lease_token, OutcomeKind.PARKED, retry_delay=60.0)
    assert await backend.finish([parked]) == [True]
    # running and finished jobs are not waiting: never counted
    await backend.enqueue([make_job(queue="done", priority=0), make_job(queue="done")])
    await ops.succeed(backend, await ops.claim_one(backend, "done"))
    await ops.claim_one(backend, "done")

    assert rows(await backend.waiting_counts()) == [
        ("default", None, 1, "queued", 2),
        ("default", "a", 3, "scheduled", 1),
        ("default", "a", 4, "blocked", 1),
        ("default", "a", 5, "queued", 2),
        ("ext", None, 6, "waiting", 1),
        ("media", "b", 2, "queued", 1),
        ("retry", "c", 7, "retrying", 1),
    ]

    # The delayed job falls due: promoted, it counts as queued at its priority.
    clock.advance(61.0)
    await backend.promote()
    assert ("default", "a", 3, "queued", 1) in rows(await backend.waiting_counts())
    assert ("default", "a", 3, "scheduled", 1) not in rows(await backend.waiting_counts())
