"""Many claimers at once (separate backend instances, so separate connections and
transactions): caps never overshoot, no job is held twice, fairness still holds."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator

import psycopg
import pytest

from conveyor.backends.base import ClaimedJob, Outcome, OutcomeKind
from conveyor.backends.postgres import PostgresBackend
from tests.postgres.conftest import new_job
from tests.services import POSTGRES_URL

CLAIMERS = 8
TASK_CAPS = {"capped": 3, "tiny": 1}
TENANT_CAP = 2  # max_running of tenant "limited" in queue "default"
#: How long to keep trying to open all claimers while the server has no connection
#: slots to spare (other suites running on the same server).
OPEN_PATIENCE = 90.0


Monitor = psycopg.AsyncConnection[tuple[str, str, str]]


@pytest.fixture
async def claimers(pg_url: str) -> AsyncIterator[tuple[list[PostgresBackend], Monitor]]:
    """CLAIMERS backends on the test's schema, each with its own connections, and one
    more connection to watch the jobs table.

    All or nothing: if the server refuses a connection ("too many clients" while other
    suites run), every backend opened so far is closed again before the next try. A
    test that kept its half and waited for the rest would hold connections that others
    wait for, and several such tests at once would all time out (seen as a flaky
    failure when suites shared the server).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_PATIENCE
    while True:
        opened: list[PostgresBackend] = []
        try:
            for _ in range(CLAIMERS):
                backend = PostgresBackend(pg_url)
                await backend.open()
                opened.append(backend)
            monitor: Monitor = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
            break
        except psycopg.OperationalError:  # includes psycopg_pool.PoolTimeout
            for backend in opened:
                await backend.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(random.uniform(0.5, 2.0))
    try:
        yield opened, monitor
    finally:
        await monitor.close()
        for backend in opened:
            with contextlib.suppress(Exception):
                await backend.close()


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


async def test_eight_concurrent_claimers_never_overshoot_caps(
    claimers: tuple[list[PostgresBackend], Monitor],
) -> None:
    backends, monitor = claimers
    first = backends[0]
    await first.set_tenant("default", "limited", weight=1.0, max_running=TENANT_CAP)
    jobs = []
    for i in range(600):
        task = ("capped", "tiny", "free")[i % 3]
        queue = "default" if i % 4 else "other"  # one task across two queues
        tenant = ("limited", "a", "b", None)[i % 4]
        jobs.append(new_job(task, queue=queue, tenant=tenant))
    await first.enqueue(jobs)

    held: dict[str, ClaimedJob] = {}
    done: set[str] = set()
    violations: list[str] = []
    rng = random.Random(7)

    async def check() -> None:
        by_task, by_tenant = await _running_counts(monitor, first.schema)
        for task, cap in TASK_CAPS.items():
            if by_task[task] > cap:
                violations.append(f"task {task}: {by_task[task]} running > cap {cap}")
        if by_tenant["limited"] > TENANT_CAP:
            violations.append(f"tenant limited: {by_tenant['limited']} > {TENANT_CAP}")

    def outcomes_of(jobs_: list[ClaimedJob]) -> list[Outcome]:
        for job in jobs_:
            held.pop(job.id)
            done.add(job.id)
        return [
            Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED, result_json="null") for j in jobs_
        ]

    async def finish(backend: PostgresBackend, jobs_: list[ClaimedJob]) -> None:
        assert await backend.finish(outcomes_of(jobs_)) == [True] * len(jobs_)

    async def claimer(backend: PostgresBackend, name: str) -> None:
        mine: list[ClaimedJob] = []
        for _ in range(3000):  # bounded; normally ends when everything is done
            if len(done) == len(jobs):
                break
            queues = ["default", "other"] if rng.random() < 0.5 else ["other", "default"]
            limit = rng.randint(1, 5)
            # Finish some of what we hold, so slots free up while others claim: half of
            # the time in the claim's own transaction (finish_and_claim), as workers do.
            rng.shuffle(mine)
            cut = rng.randint(0, len(mine))
            finishing, mine = mine[:cut], mine[cut:]
            if finishing and rng.random() < 0.5:
                applied, got = await backend.finish_and_claim(
                    outcomes_of(finishing),
                    queues,
                    limit,
                    worker=name,
                    lease=60.0,
                    task_caps=TASK_CAPS,
                )
                assert applied == [True] * len(finishing)
            else:
                if finishing:
                    await finish(backend, finishing)
                got = await backend.claim(
                    queues, limit, worker=name, lease=60.0, task_caps=TASK_CAPS
                )
            for job in got:
                assert job.id not in held, f"{job.id} claimed while held by another claimer"
                assert job.id not in done, f"{job.id} claimed again after it succeeded"
                held[job.id] = job
                mine.append(job)
            await check()
            await asyncio.sleep(0)
        await finish(backend, mine)

    await asyncio.wait_for(
        asyncio.gather(*(claimer(b, f"w{i}") for i, b in enumerate(backends))), 120
    )
    assert violations == []
    assert len(done) == len(jobs)


async def test_concurrent_claimers_share_fairly(
    claimers: tuple[list[PostgresBackend], Monitor],
) -> None:
    """Round-robin between tenants holds when 8 claimers take turns on one queue."""
    backends, _ = claimers
    first = backends[0]
    await first.enqueue([new_job(tenant="flood") for _ in range(400)])
    await first.enqueue([new_job(tenant="small") for _ in range(20)])

    async def claim(backend: PostgresBackend) -> list[ClaimedJob]:
        return await backend.claim(["default"], 5, worker="w", lease=60.0)

    batches = await asyncio.gather(*(claim(b) for b in backends))
    counts = Counter(job.tenant for batch in batches for job in batch)
    # 40 claims in all: "small" gets every other one until its 20 jobs are gone.
    assert counts == {"flood": 20, "small": 20}
