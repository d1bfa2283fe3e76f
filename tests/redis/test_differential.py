"""The Redis backend makes the same decisions as the SQLite reference.

One random sequence of operations runs against both engines with the same jobs and the
same fake clock; every claim must pick the same jobs in the same order, every finish,
cancel and replay must answer alike, and the job records and stats must agree.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import create_backend
from conveyor.backends.base import Backend, ClaimedJob, NewJob, Outcome, OutcomeKind
from conveyor.errors import InvalidTransition
from conveyor.job import Job, new_job_id

TENANTS = [None, "a", "b", "c"]
#: More tenants than a claim reads from a priority level at once (8): the claim's cached
#: view of the level must agree with the reference as tenants move past its end.
MANY_TENANTS = [None, *(f"t{i:02d}" for i in range(20))]
TASKS = ["t1", "t2", "t3"]
QUEUES = ["q1", "q2"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def comparable(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.state,
        job.queue,
        job.tenant,
        job.priority,
        job.attempt,
        job.run_at,
        job.started_at,
        job.finished_at,
        job.expires_at,
        job.lease_expires_at,
        job.result,
        tuple((e.attempt, e.type, e.message) for e in job.errors),
        job.key,
        job.cancel_requested,
    )


@pytest.mark.parametrize("tenants", [TENANTS, MANY_TENANTS], ids=["4-tenants", "21-tenants"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_same_decisions_as_sqlite(
    store_url: str, tmp_path: Path, seed: int, tenants: list[str | None]
) -> None:
    rng = random.Random(seed)
    clock = Clock()
    engines: list[Backend] = [
        create_backend(f"sqlite:///{tmp_path / 'ref.db'}", clock=clock),
        create_backend(store_url, clock=clock),
    ]
    for b in engines:
        await b.open()
    running: dict[str, list[ClaimedJob]] = {}  # id -> claimed record per engine
    caps = {"t1": 2}

    async def both(call: Any) -> list[Any]:
        results = []
        for b in engines:
            try:
                results.append(await call(b))
            except InvalidTransition:
                results.append("invalid")
        return results

    try:
        await both(lambda b: b.set_tenant("q1", "b", weight=2.0, max_running=3))
        for step in range(300):
            op = rng.random()
            if op < 0.25:
                jobs = [
                    NewJob(
                        id=new_job_id(),
                        task=rng.choice(TASKS),
                        queue=rng.choice(QUEUES),
                        tenant=rng.choice(tenants),
                        priority=rng.randint(0, 9),
                        args_json="[]",
                        kwargs_json="{}",
                        max_attempts=rng.randint(1, 3),
                        delay=rng.choice([None, 0.0, 3.0, 20.0]),
                        key=rng.choice([None, None, None, f"k{rng.randint(0, 4)}"]),
                        result_ttl=rng.choice([None, 30.0]),
                    )
                    for _ in range(rng.randint(1, 5))
                ]
                ids = await both(lambda b, jobs=jobs: b.enqueue(jobs))
                assert ids[0] == ids[1], step
            elif op < 0.5:
                # Every queue, in a random order: SQLite's claim promotes due jobs of all
                # queues, Redis's only of the queues it claims from (the promoter loop
                # does the rest); claiming from all keeps the records comparable.
                queues = rng.sample(QUEUES, len(QUEUES))
                limit = rng.randint(1, 6)
                got = await both(
                    lambda b, q=queues, n=limit: b.claim(
                        q, n, worker="w", lease=10.0, task_caps=caps
                    )
                )
                assert [(j.id, j.attempt) for j in got[0]] == [(j.id, j.attempt) for j in got[1]], (
                    step
                )
                for ref, red in zip(got[0], got[1], strict=True):
                    running[ref.id] = [ref, red]
            elif op < 0.7 and running:
                job_id = rng.choice(sorted(running))
                kind = rng.choice(list(OutcomeKind))
                delay = rng.choice([0.0, 4.0])
                pair = running.pop(job_id)
                results = []
                for b, claimed in zip(engines, pair, strict=True):
                    out = Outcome(
                        claimed.id,
                        claimed.lease_token,
                        kind,
                        result_json='"r"' if kind is OutcomeKind.SUCCEEDED else None,
                        error_json='{"attempt":1,"type":"E","message":"m"}',
                        retry_delay=delay,
                    )
                    results.append(await b.finish([out]))
                assert results[0] == results[1], step
            elif op < 0.8:
                clock.now += rng.choice([1.0, 5.0, 11.0, 40.0])
                assert (await both(lambda b: b.reap()))[0] >= 0
                promoted = await both(lambda b: b.promote())
                assert promoted[0] == promoted[1], step
                purged = await both(lambda b: b.purge())
                assert purged[0] == purged[1], step
            elif op < 0.87:
                every = await engines[0].query(limit=10_000)
                if every:
                    job_id = rng.choice(every).id
                    states = await both(lambda b, i=job_id: b.cancel(i))
                    assert states[0] == states[1], step
            elif op < 0.94:
                every = await engines[0].query(limit=10_000)
                if every:
                    job_id = rng.choice(every).id
                    replayed = await both(lambda b, i=job_id: b.replay(i))
                    assert replayed[0] == replayed[1], step
            elif op < 0.97:
                queue = rng.choice(QUEUES)
                aging = rng.choice([None, 5.0, 15.0])
                await both(lambda b, q=queue, a=aging: b.set_queue(q, aging=a))
            else:
                queue, tenant = rng.choice(QUEUES), rng.choice(tenants)
                weight = rng.choice([1.0, 0.5, 3.0])
                max_running = rng.choice([None, None, 1, 2])
                await both(
                    lambda b, q=queue, t=tenant, w=weight, m=max_running: b.set_tenant(
                        q, t, weight=w, max_running=m
                    )
                )
            # Leases the reaper took away are no longer ours to finish.
            for job_id in list(running):
                job = await engines[0].get(job_id)
                if job is None or job.lease_expires_at is None:
                    running.pop(job_id)

            listings = await both(lambda b: b.query(limit=10_000))
            assert [comparable(j) for j in listings[0]] == [comparable(j) for j in listings[1]], (
                step
            )
        stats = await both(lambda b: b.stats())
        assert stats[0] == stats[1]
    finally:
        for b in engines:
            await b.close()
