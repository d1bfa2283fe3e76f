"""finish_and_claim: the worker's steady state, outcomes first and then a claim."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, OutcomeKind
from conveyor.job import JobState

if TYPE_CHECKING:
    from tests.contract.conftest import MakeJob, Ops


async def test_outcomes_apply_before_the_claim(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job("capped") for _ in range(3)])
    caps = {"capped": 1}
    (first,) = await backend.claim(["default"], 5, worker="w", lease=30.0, task_caps=caps)

    # The slot the finished job frees counts for the claim in the same call.
    applied, claimed = await backend.finish_and_claim(
        [ops.outcome(first, OutcomeKind.SUCCEEDED, result_json="7")],
        ["default"],
        5,
        worker="w",
        lease=30.0,
        task_caps=caps,
    )
    assert applied == [True]
    assert len(claimed) == 1 and claimed[0].id != first.id
    done = await backend.get(first.id)
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == 7
    running = await backend.get(claimed[0].id)
    assert running is not None and running.state is JobState.RUNNING


async def test_stale_outcomes_are_fenced(backend: Backend, make_job: MakeJob, ops: Ops) -> None:
    await backend.enqueue([make_job()])
    job = await ops.claim_one(backend)
    stale = ops.outcome(job, OutcomeKind.SUCCEEDED)
    await ops.succeed(backend, job)
    applied, claimed = await backend.finish_and_claim(
        [stale], ["default"], 5, worker="w", lease=30.0
    )
    assert applied == [False] and claimed == []


async def test_without_outcomes_it_is_a_claim(backend: Backend, make_job: MakeJob) -> None:
    await backend.enqueue([make_job(), make_job()])
    applied, claimed = await backend.finish_and_claim([], ["default"], 1, worker="w", lease=30.0)
    assert applied == [] and len(claimed) == 1


async def test_a_retry_outcome_makes_its_job_claimable_again(
    backend: Backend, make_job: MakeJob, ops: Ops
) -> None:
    await backend.enqueue([make_job()])
    job = await ops.claim_one(backend)
    applied, claimed = await backend.finish_and_claim(
        [ops.outcome(job, OutcomeKind.RETRY, error_json=None, retry_delay=0.0)],
        ["default"],
        5,
        worker="w",
        lease=30.0,
    )
    assert applied == [True]
    assert [(j.id, j.attempt) for j in claimed] == [(job.id, 2)]
