"""Finished-job totals (job_totals) agree with the jobs table after every kind of
transition into or out of succeeded, dead and cancelled, and stats() reads them."""

from __future__ import annotations

from collections import Counter

import psycopg
from psycopg import sql

from conveyor.backends.base import ClaimedJob, Outcome, OutcomeKind
from conveyor.backends.postgres import PostgresBackend
from conveyor.job import JobState
from tests.postgres.conftest import OpenPG, new_job
from tests.services import POSTGRES_URL

FINISHED = ("succeeded", "dead", "cancelled")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _table_counts(schema: str) -> Counter[tuple[str, str | None, str]]:
    """(queue, tenant, state) -> jobs, counted row by row from the jobs table."""
    query = sql.SQL("SELECT queue, tenant, state, count(*) FROM {}.jobs GROUP BY 1, 2, 3")
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
    return Counter({(q, t or None, s): n for q, t, s, n in rows})


async def _stats_counts(backend: PostgresBackend) -> Counter[tuple[str, str | None, str]]:
    counts: Counter[tuple[str, str | None, str]] = Counter()
    for s in await backend.stats():
        for state in JobState:
            n = getattr(s, state.value, 0)
            if n:
                counts[(s.queue, s.tenant, state.value)] = n
    return counts


async def _check(backend: PostgresBackend) -> None:
    assert await _stats_counts(backend) == _table_counts(backend.schema)


def _outcome(job: ClaimedJob, kind: OutcomeKind, delay: float = 0.0) -> Outcome:
    error = None if kind is OutcomeKind.SUCCEEDED else '{"type": "E", "message": "x"}'
    return Outcome(job.id, job.lease_token, kind, "null", error, delay)


async def test_totals_follow_every_transition(open_pg: OpenPG) -> None:
    clock = Clock()
    backend = await open_pg(clock=clock)
    ttl = {"max_attempts": 1, "result_ttl": 3600.0}
    jobs = [new_job(tenant=("a", "b", None)[i % 3], **ttl) for i in range(30)]
    jobs += [new_job(queue="other", tenant="a", **ttl) for _ in range(6)]
    await backend.enqueue(jobs)
    await _check(backend)

    # finish: succeeded, dead, a retry with no attempt left (-> dead), a cancel
    # request honoured as a retry (-> cancelled), and a release (-> queued).
    claimed = await backend.claim(["default", "other"], 12, worker="w", lease=30.0)
    kinds = [OutcomeKind.SUCCEEDED] * 6 + [OutcomeKind.DEAD, OutcomeKind.RETRY]
    kinds += [OutcomeKind.CANCELLED, OutcomeKind.RELEASED, OutcomeKind.SUCCEEDED]
    await backend.cancel(claimed[len(kinds)].id)  # running: cancel requested
    kinds.append(OutcomeKind.RETRY)
    assert await backend.finish([_outcome(j, k) for j, k in zip(claimed, kinds, strict=True)])
    await _check(backend)
    # A repeated (stale) finish changes nothing.
    assert await backend.finish([_outcome(claimed[0], OutcomeKind.SUCCEEDED)]) == [False]
    await _check(backend)

    # cancel of waiting jobs, then replay of a cancelled and of a dead job
    waiting = (await backend.query(state=JobState.QUEUED, limit=3))[:3]
    for job in waiting:
        assert await backend.cancel(job.id) is JobState.CANCELLED
    await _check(backend)
    for state in (JobState.CANCELLED, JobState.DEAD):
        assert await backend.replay((await backend.query(state=state, limit=1))[0].id)
    await _check(backend)

    # reap: expired leases of jobs with no attempt left -> dead; with a cancel request
    # -> cancelled
    claimed = await backend.claim(["default"], 4, worker="w", lease=5.0)
    await backend.cancel(claimed[0].id)
    clock.now += 10.0
    assert await backend.reap() == len(claimed)
    await _check(backend)

    # purge: every succeeded or cancelled record has expired by now
    clock.now += 2 * 3600.0
    purged = await backend.purge()
    assert purged > 0
    await _check(backend)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT state, sum(n) FROM {}.job_totals GROUP BY state").format(
                sql.Identifier(backend.schema)
            )
        )
        left = dict(await cur.fetchall())
    # Only the dead jobs stay (they never expire); rows that summed to 0 were dropped.
    assert set(left) <= {"dead"}


async def test_totals_follow_workflow_settling(open_pg: OpenPG) -> None:
    """Dependents cancelled by the settle trigger, a job enqueued after a parent that
    already failed (cancelled by conveyor_link), and a blocked job cancelled by hand."""
    backend = await open_pg()
    parent = new_job(tenant="a", max_attempts=1)
    await backend.enqueue([parent])
    children = [new_job(tenant=t, after=(parent.id,)) for t in ("a", "b", None)]
    await backend.enqueue(children)
    spare = new_job(tenant="b", after=(parent.id,))
    await backend.enqueue([spare])
    assert await backend.cancel(spare.id) is JobState.CANCELLED  # blocked -> cancelled
    await _check(backend)
    (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30.0)
    assert await backend.finish([_outcome(claimed, OutcomeKind.DEAD)]) == [True]
    await _check(backend)  # the three children were cancelled by the trigger
    late = new_job(tenant="a", after=(parent.id,))
    await backend.enqueue([late])  # its parent is dead already: cancelled at once
    info = await backend.get(late.id)
    assert info is not None and info.state is JobState.CANCELLED
    await _check(backend)


async def test_migration_counts_the_finished_jobs_already_stored(open_pg: OpenPG) -> None:
    backend = await open_pg()
    await backend.enqueue([new_job(tenant="a") for _ in range(5)])
    claimed = await backend.claim(["default"], 5, worker="w", lease=30.0)
    await backend.finish([_outcome(j, OutcomeKind.SUCCEEDED) for j in claimed[:3]])
    await backend.finish([_outcome(j, OutcomeKind.DEAD) for j in claimed[3:]])
    schema = sql.Identifier(backend.schema)
    migration = next(text for v, _, text in _migrations() if v == 4)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        # Back to just before 0004, as a store made by an older version.
        for undo in (
            "DROP TRIGGER jobs_count_finished ON {}.jobs",
            "DROP FUNCTION {}.conveyor_count_finished()",
            "DROP INDEX {}.jobs_blocked",
            "DROP TABLE {}.job_totals",
        ):
            await conn.execute(sql.SQL(undo).format(schema))
        async with conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL search_path = {}").format(schema))
            await conn.execute(migration.encode())
    await _check(backend)


def _migrations() -> list[tuple[int, str, str]]:
    from conveyor.backends.postgres import _sql

    return _sql.migrations()
