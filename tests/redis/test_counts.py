"""Counts per (state, tenant) behind stats: which the store keeps, which it derives.

A claim or a finish spread over many tenants would write a count field per job, so the
count hash keeps neither 'queued' (stats counts the lanes) nor, unless the queue has
tenant caps, 'running' (stats counts the leases). Fields of those states that older
versions kept are not read, and the purge drops them once.
"""

from __future__ import annotations

import redis
from conveyor.backends.base import Backend, Outcome, OutcomeKind
from tests.redis.jobs import job


def count_key(store_url: str) -> str:
    return "{" + store_url.split("prefix=", 1)[1] + "}:q:7:default:cnt"


async def stats(backend: Backend) -> dict[str | None, tuple[int, int, int]]:
    return {s.tenant: (s.queued, s.running, s.succeeded) for s in await backend.stats()}


async def test_claims_and_finishes_without_tenant_caps_write_only_final_counts(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    await backend.enqueue([job(t) for t in ("a", "b", "c") for _ in range(2)])
    assert client.hgetall(count_key(store_url)) == {}
    got = await backend.claim(["default"], 4, worker="w", lease=60.0)
    assert client.hgetall(count_key(store_url)) == {}
    assert await stats(backend) == {"a": (0, 2, 0), "b": (1, 1, 0), "c": (1, 1, 0)}
    await backend.finish([Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in got])
    assert client.hgetall(count_key(store_url)) == {
        "succeeded:a": "2",
        "succeeded:b": "1",
        "succeeded:c": "1",
    }
    assert await stats(backend) == {"a": (0, 0, 2), "b": (1, 0, 1), "c": (1, 0, 1)}


async def test_running_counts_are_kept_while_the_queue_has_tenant_caps(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    await backend.enqueue([job(t) for t in ("a", "b") for _ in range(2)])
    running = await backend.claim(["default"], 2, worker="w", lease=60.0)
    await backend.set_tenant("default", "a", weight=1.0, max_running=5)
    assert client.hgetall(count_key(store_url)) == {"running:a": "1", "running:b": "1"}
    more = await backend.claim(["default"], 2, worker="w", lease=60.0)
    assert client.hgetall(count_key(store_url)) == {"running:a": "2", "running:b": "2"}
    await backend.finish([Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in more])
    assert client.hgetall(count_key(store_url)) == {
        "running:a": "1",
        "running:b": "1",
        "succeeded:a": "1",
        "succeeded:b": "1",
    }
    # The last cap gone, the counts go too (nothing would keep them true).
    await backend.set_tenant("default", "a", weight=1.0, max_running=None)
    assert client.hgetall(count_key(store_url)) == {"succeeded:a": "1", "succeeded:b": "1"}
    assert await stats(backend) == {"a": (0, 1, 1), "b": (0, 1, 1)}
    assert len(running) == 2


async def test_counts_older_versions_kept_are_not_read_and_purge_drops_them_once(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    await backend.enqueue([job("a"), job("a")])
    await backend.claim(["default"], 1, worker="w", lease=60.0)
    client.hset(count_key(store_url), mapping={"queued:a": 7, "running:a": 5, "queued:gone": 3})
    assert await stats(backend) == {"a": (1, 1, 0)}
    await backend.purge()
    assert client.hgetall(count_key(store_url)) == {}
    assert await stats(backend) == {"a": (1, 1, 0)}
