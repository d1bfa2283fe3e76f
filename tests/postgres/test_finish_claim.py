"""finish_and_claim on PostgreSQL: one statement, one transaction (conveyor_finish_claim)."""

from __future__ import annotations

import asyncio
import time

import psycopg

from conveyor.backends.base import Outcome, OutcomeKind
from conveyor.job import JobState
from tests.postgres.conftest import OpenPG, new_job
from tests.services import POSTGRES_URL


def _queue_lock_key(schema: str, queue: str) -> str:
    """The advisory lock key conveyor_claim takes for ``queue`` (see schema.sql)."""
    return f"conveyor:{schema}:queue:{queue}"


async def test_the_outcomes_commit_with_the_claim(open_pg: OpenPG) -> None:
    """While the claim waits for its queue's lock, the outcomes sent with it are not
    committed yet: finish and claim are one transaction (one commit, one WAL flush)."""
    backend = await open_pg()
    await backend.enqueue([new_job(), new_job()])
    [first] = await backend.claim(["default"], 1, worker="w", lease=30.0)
    outcome = Outcome(first.id, first.lease_token, OutcomeKind.SUCCEEDED, result_json="1")
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as other:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [_queue_lock_key(backend.schema, "default")],
            )
            both = asyncio.create_task(
                backend.finish_and_claim([outcome], ["default"], 5, worker="w", lease=30.0)
            )
            await asyncio.sleep(0.3)
            assert not both.done()  # the claim waits for the lock ...
            cur = await other.execute(
                f'SELECT state FROM "{backend.schema}".jobs WHERE id = %s', [first.id]
            )
            # ... and the finish, in the same transaction, is not visible yet.
            assert await cur.fetchone() == ("running",)
        applied, claimed = await asyncio.wait_for(both, 10.0)
    assert applied == [True]
    assert len(claimed) == 1 and claimed[0].id != first.id
    done = await backend.get(first.id)
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == 1


async def test_its_own_wakeup_does_not_wake_the_worker(open_pg: OpenPG) -> None:
    """A finish that frees a capped slot notifies the queue; the claim in the same
    transaction already used that slot, so its worker does not wake for it."""
    backend, other = await open_pg(), await open_pg()
    await backend.enqueue([new_job("solo") for _ in range(3)])
    caps = {"solo": 1}
    [first] = await backend.claim(["default"], 5, worker="w", lease=30.0, task_caps=caps)
    # Another instance waits too: the notification is sent (it is for other workers).
    assert await other.claim(["default"], 5, worker="o", lease=30.0, task_caps=caps) == []
    other_wait = asyncio.create_task(other.wait_for_work(["default"], 30.0))
    outcome = Outcome(first.id, first.lease_token, OutcomeKind.SUCCEEDED)
    applied, claimed = await backend.finish_and_claim(
        [outcome], ["default"], 5, worker="w", lease=30.0, task_caps=caps
    )
    assert applied == [True] and len(claimed) == 1  # the freed slot, used at once
    await asyncio.wait_for(other_wait, 5.0)
    started = time.monotonic()
    await backend.wait_for_work(["default"], 0.5)
    assert time.monotonic() - started > 0.4  # it timed out: no spurious wake-up


async def test_a_park_goes_the_two_statement_way(open_pg: OpenPG) -> None:
    backend = await open_pg()
    await backend.enqueue([new_job(), new_job()])
    [first] = await backend.claim(["default"], 1, worker="w", lease=30.0)
    parked = Outcome(first.id, first.lease_token, OutcomeKind.PARKED, retry_delay=60.0)
    applied, claimed = await backend.finish_and_claim(
        [parked], ["default"], 5, worker="w", lease=30.0
    )
    assert applied == [True] and len(claimed) == 1
    job = await backend.get(first.id)
    assert job is not None and job.state is JobState.WAITING


async def test_queue_and_task_names_survive_the_array_literals(open_pg: OpenPG) -> None:
    """Queues and capped tasks travel as array literals: quotes, backslashes, commas
    and braces in their names must arrive unchanged."""
    backend = await open_pg()
    queue, task = 'q "1",\\{x}', 'task "a",\\b}'
    await backend.enqueue([new_job(task, queue=queue) for _ in range(3)])
    caps = {task: 1, "other,{}": 2}
    [first] = await backend.claim([queue, "plain"], 5, worker="w", lease=30.0, task_caps=caps)
    assert first.queue == queue and first.task == task
    outcome = Outcome(first.id, first.lease_token, OutcomeKind.SUCCEEDED)
    applied, claimed = await backend.finish_and_claim(
        [outcome], ["plain", queue], 5, worker="w", lease=30.0, task_caps=caps
    )
    assert applied == [True]
    assert [(j.queue, j.task) for j in claimed] == [(queue, task)]  # the cap holds: one


async def test_outcome_documents_keep_results_errors_and_delays(open_pg: OpenPG) -> None:
    backend = await open_pg()
    await backend.enqueue([new_job(), new_job()])
    done, failed = await backend.claim(["default"], 2, worker="w", lease=30.0)
    result = '{"text": "a \\"quoted\\" \\\\ line\\nand ünïcode"}'
    error = '{"type": "E", "message": "x\\ty", "attempt": 1, "traceback": null, "at": 0}'
    applied, _ = await backend.finish_and_claim(
        [
            Outcome(done.id, done.lease_token, OutcomeKind.SUCCEEDED, result_json=result),
            Outcome(
                failed.id,
                failed.lease_token,
                OutcomeKind.RETRY,
                error_json=error,
                retry_delay=90.25,
            ),
        ],
        ["default"],
        5,
        worker="w",
        lease=30.0,
    )
    assert applied == [True, True]
    got = await backend.get(done.id)
    assert got is not None and got.result == {"text": 'a "quoted" \\ line\nand ünïcode'}
    retried = await backend.get(failed.id)
    assert retried is not None and retried.state is JobState.RETRYING
    assert retried.run_at is not None and retried.finished_at is None
    assert retried.errors[-1].message == "x\ty"
