"""query on Redis reads at most QUERY_PAGE jobs per (queue, state) per script call (a
script holds the whole server): a larger limit is served in pages, newest first, and
the pages add up to what one unbounded call would return."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from conveyor.backends import create_backend
from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.backends.redis import backend as redis_backend
from conveyor.job import JobState, new_job_id


def job(queue: str, tenant: str, task: str, **extra: float) -> NewJob:
    return NewJob(
        id=new_job_id(),
        task=task,
        queue=queue,
        tenant=tenant,
        priority=5,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=1,
        **extra,  # type: ignore[arg-type]
    )


def script_calls(stats: dict[str, dict[str, int]]) -> int:
    """Script calls in ``INFO commandstats``: scripts by ``EVALSHA``, or functions."""
    names = ("evalsha", "fcall", "fcall_ro")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)


async def test_pages_add_up_to_one_unbounded_query(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = create_backend(store_url)
    await backend.open()
    try:
        # Two queues; queued jobs in several lanes (tenants x tasks), scheduled ones,
        # running ones and finished ones, interleaved in id order.
        jobs = []
        for i in range(40):
            queue, tenant, task = f"q{i % 2}", f"t{i % 3}", f"k{i % 2}"
            jobs.append(job(queue, tenant, task, **({"delay": 60.0} if i % 5 == 0 else {})))
        await backend.enqueue(jobs)
        claimed = await backend.claim(["q0", "q1"], 12, worker="w", lease=60.0)
        await backend.finish(
            [Outcome(c.id, c.lease_token, OutcomeKind.SUCCEEDED) for c in claimed[:6]]
        )
        filters: list[dict[str, object]] = [
            {},
            {"queue": "q1"},
            {"tenant": "t1"},
            {"task": "k0", "tenant": "t2"},
            {"state": JobState.QUEUED},
            {"state": JobState.RUNNING},
            {"state": JobState.SCHEDULED, "tenant": "t0"},
            {"state": JobState.SUCCEEDED},
        ]
        whole = {i: await backend.query(limit=1000, **f) for i, f in enumerate(filters)}  # type: ignore[arg-type]
        assert len(whole[0]) == 40

        monkeypatch.setattr(redis_backend, "QUERY_PAGE", 4)
        for i, f in enumerate(filters):
            for limit in (1, 3, 4, 5, 17, 1000):
                paged = await backend.query(limit=limit, **f)  # type: ignore[arg-type]
                assert [j.id for j in paged] == [j.id for j in whole[i][:limit]], (f, limit)
        admin = Redis.from_url(store_url.partition("?")[0])
        await admin.config_resetstat()
        assert len(await backend.query(limit=1000)) == 40
        stats = await admin.info("commandstats")
        await admin.aclose()
        assert script_calls(stats) == 11  # 40 jobs, 4 per call, then none
    finally:
        await backend.close()


async def test_a_large_query_is_never_one_long_script(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "QUERY_PAGE", 50)
    backend = create_backend(store_url)
    await backend.open()
    try:
        await backend.enqueue([job("default", "", "t") for _ in range(500)])
        url, _, _ = store_url.partition("?")
        admin = Redis.from_url(url)
        await admin.config_resetstat()
        found = await backend.query(limit=10_000)
        assert len(found) == 500 and [j.id for j in found] == sorted(
            (j.id for j in found), reverse=True
        )
        stats = await admin.info("commandstats")
        # Each call read at most 50 jobs of the one (queue, state) that has any.
        assert stats["cmdstat_hgetall"]["calls"] <= 550
        assert script_calls(stats) >= 10
        await admin.aclose()
    finally:
        await backend.close()
