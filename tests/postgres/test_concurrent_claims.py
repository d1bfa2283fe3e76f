"""Many claimers at once (separate backend instances, so separate connections and
transactions): caps never overshoot, no job is held twice, fairness still holds."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import psycopg

from conveyor.backends.base import ClaimedJob, Outcome, OutcomeKind
from conveyor.backends.postgres import PostgresBackend
from tests.postgres.conftest import OpenPG, new_job
from tests.services import POSTGRES_URL

CLAIMERS = 8
TASK_CAPS = {"capped": 3, "tiny": 1}
TENANT_CAP = 2  # max_running of tenant "limited" in queue "default"


async def _running_counts(
    conn: psycopg.AsyncConnection[tuple[str, str, str]], schema: str
) -> tuple[Counter[str], Counter[str]]:
    """Running jobs per task (store-wide) and per tenant of queue "default"."""
    cur = await conn.execute(
        f"SELECT task, queue, tenant FROM {schema}.jobs WHERE state = 'running'"
    )
    rows = await cur.fetchall()
    by_task = Counter(task for task, _, _ in rows)
    by_tenant = Counter(tenant for _, queue, tenant in rows if queue == "default")
    return by_task, by_tenant


async def test_eight_concurrent_claimers_never_overshoot_caps(open_pg: OpenPG) -> None:
    first = await open_pg()
    await first.set_tenant("default", "limited", weight=1.0, max_running=TENANT_CAP)
    jobs = []
    for i in range(600):
        task = ("capped", "tiny", "free")[i % 3]
        queue = "default" if i % 4 else "other"  # one task across two queues
        tenant = ("limited", "a", "b", None)[i % 4]
        jobs.append(new_job(task, queue=queue, tenant=tenant))
    await first.enqueue(jobs)
    claimers = [first] + [await open_pg() for _ in range(CLAIMERS - 1)]

    held: dict[str, ClaimedJob] = {}
    done: set[str] = set()
    violations: list[str] = []
    rng = random.Random(7)

    monitor = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)

    async def check() -> None:
        by_task, by_tenant = await _running_counts(monitor, first.schema)
        for task, cap in TASK_CAPS.items():
            if by_task[task] > cap:
                violations.append(f"task {task}: {by_task[task]} running > cap {cap}")
        if by_tenant["limited"] > TENANT_CAP:
            violations.append(f"tenant limited: {by_tenant['limited']} > {TENANT_CAP}")

    async def finish(backend: PostgresBackend, jobs_: list[ClaimedJob]) -> None:
        for job in jobs_:
            held.pop(job.id)
            done.add(job.id)
        outcomes = [
            Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED, result_json="null") for j in jobs_
        ]
        assert await backend.finish(outcomes) == [True] * len(jobs_)

    async def claimer(backend: PostgresBackend, name: str) -> None:
        mine: list[ClaimedJob] = []
        for _ in range(3000):  # bounded; normally ends when everything is done
            if len(done) == len(jobs):
                break
            queues = ["default", "other"] if rng.random() < 0.5 else ["other", "default"]
            got = await backend.claim(
                queues, rng.randint(1, 5), worker=name, lease=60.0, task_caps=TASK_CAPS
            )
            for job in got:
                assert job.id not in held, f"{job.id} claimed while held by another claimer"
                assert job.id not in done, f"{job.id} claimed again after it succeeded"
                held[job.id] = job
                mine.append(job)
            await check()
            # Finish some of what we hold, so slots free up while others claim.
            rng.shuffle(mine)
            cut = rng.randint(0, len(mine))
            finishing, mine = mine[:cut], mine[cut:]
            if finishing:
                await finish(backend, finishing)
            await asyncio.sleep(0)
        await finish(backend, mine)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(claimer(b, f"w{i}") for i, b in enumerate(claimers))), 120
        )
    finally:
        await monitor.close()
    assert violations == []
    assert len(done) == len(jobs)


async def test_concurrent_claimers_share_fairly(open_pg: OpenPG) -> None:
    """Round-robin between tenants holds when 8 claimers take turns on one queue."""
    first = await open_pg()
    await first.enqueue([new_job(tenant="flood") for _ in range(400)])
    await first.enqueue([new_job(tenant="small") for _ in range(20)])
    claimers = [first] + [await open_pg() for _ in range(CLAIMERS - 1)]

    async def claim(backend: PostgresBackend) -> list[ClaimedJob]:
        return await backend.claim(["default"], 5, worker="w", lease=60.0)

    batches = await asyncio.gather(*(claim(b) for b in claimers))
    counts = Counter(job.tenant for batch in batches for job in batch)
    # 40 claims in all: "small" gets every other one until its 20 jobs are gone.
    assert counts == {"flood": 20, "small": 20}
