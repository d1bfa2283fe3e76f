"""waiting_counts on Redis reads the non-queued states page by page: pages add up."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.backends import create_backend
from conveyor.backends.base import NewJob
from conveyor.backends.redis import backend as redis_backend
from tests.redis.jobs import job


def scheduled(tenant: str, priority: int) -> NewJob:
    return dataclasses.replace(job(tenant, "t", priority), delay=60.0)


async def test_scheduled_counts_summed_across_pages(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "_DEPTH_PAGE", 3)  # 11 jobs: 4 pages, pairs split
    backend = create_backend(store_url)
    await backend.open()
    try:
        jobs = [scheduled("a", 1) for _ in range(5)] + [scheduled("b", 2) for _ in range(6)]
        await backend.enqueue(jobs)
        found = [(d.tenant, d.priority, d.state, d.count) for d in await backend.waiting_counts()]
        assert found == [("a", 1, "scheduled", 5), ("b", 2, "scheduled", 6)]
    finally:
        await backend.close()
