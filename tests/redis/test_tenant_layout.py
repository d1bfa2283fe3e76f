"""Ready structures of tenants: one task needs no task set; drained lanes leave nothing.

A tenant with one task with ready jobs at a level keeps that task in the level's 't1'
hash; a second task moves both into the (prio, tenant) sorted set 't:'. Stores written
before 't1' existed keep single tasks in 't:' sets: they must still be claimed in the
same order, and their leftovers tidied up.
"""

from __future__ import annotations

import time

import redis
from conveyor.backends.base import Backend, Outcome, OutcomeKind
from tests.redis.jobs import job


def queue_prefix(store_url: str) -> str:
    return "{" + store_url.split("prefix=", 1)[1] + "}:q:7:default:"


def lane(qp: str, tenant: str, task: str = "t.a", priority: int = 5) -> str:
    return f"{qp}l:{priority}:{len(tenant)}:{tenant}:{task}"


def ready_keys(client: redis.Redis, qp: str) -> list[str]:
    """Keys of the ready structures (levels, task sets and hashes, lanes, ready sets)."""
    kinds = ("p:", "t:", "t1:", "l:", "r:")
    return sorted(
        k for k in client.scan_iter(match=qp + "*", count=1000) if k[len(qp) :].startswith(kinds)
    )


async def drain(backend: Backend, limit: int = 10) -> list[tuple[str, str]]:
    """Claim and finish until nothing is ready; (tenant, task) of each job in order."""
    order: list[tuple[str, str]] = []
    while got := await backend.claim(["default"], limit, worker="w", lease=60.0):
        order += [(j.tenant or "", j.task) for j in got]
        await backend.finish([Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in got])
    return order


async def test_one_task_lives_in_the_hash_and_a_second_moves_both_to_a_set(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    qp = queue_prefix(store_url)
    await backend.enqueue([job("a"), job("a")])
    assert client.hgetall(qp + "t1:5") == {"a": "t.a"}
    assert not client.exists(qp + "t:5:a")
    await backend.enqueue([job("a", task="t.b")])
    assert client.hgetall(qp + "t1:5") == {}
    assert client.zrange(qp + "t:5:a", 0, -1) == ["t.a", "t.b"]
    # Priority first, then the oldest head of the tenant's tasks (FIFO).
    assert await drain(backend, limit=2) == [("a", "t.a"), ("a", "t.a"), ("a", "t.b")]
    assert ready_keys(client, qp) == []


async def test_lanes_a_claim_empties_leave_no_level_entry(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    # A lane of one job, claimed in a claim that takes one job per tenant: an earlier
    # version read one id of it, did not notice the lane was empty, and left the tenant
    # in its level and its task set behind (so workers were woken for nothing).
    await backend.enqueue([job("a"), job("b"), job("b"), job("c", task="t.c", priority=2)])
    got = await backend.claim(["default"], 10, worker="w", lease=60.0)
    assert len(got) == 4
    assert ready_keys(client, queue_prefix(store_url)) == []
    assert [d for d in await backend.waiting_counts() if d.state == "queued"] == []


async def test_a_lane_emptied_by_a_full_claim_leaves_at_the_next_claim(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    # A tenant with one task is popped (ZPOPMIN reads and removes the lane's head in
    # one call): a claim that reaches its limit there does not learn that the lane
    # emptied, and the tenant stays listed at its level until a claim finds it empty.
    qp = queue_prefix(store_url)
    await backend.enqueue([job("a"), job("b")])
    [first] = await backend.claim(["default"], 1, worker="w", lease=60.0)
    assert first.tenant == "a"
    assert client.zscore(qp + "p:5", "a") is not None
    assert not client.exists(lane(qp, "a"))
    # Nobody counts the listed tenant's empty lane as work.
    stats = {s.tenant: (s.queued, s.running) for s in await backend.stats()}
    assert stats == {"a": (0, 1), "b": (1, 0)}
    assert [(d.tenant, d.count) for d in await backend.waiting_counts() if d.state == "queued"] == [
        ("b", 1)
    ]
    [second] = await backend.claim(["default"], 1, worker="w", lease=60.0)
    assert second.tenant == "b"
    assert await backend.claim(["default"], 1, worker="w", lease=60.0) == []
    assert ready_keys(client, qp) == []


async def test_a_claim_drops_a_bounded_number_of_empty_lanes_and_asks_to_be_called_again(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    # Tenants just served sit at the end of their level with their popped lanes: when a
    # backlog drains, one claim would meet them all. It drops at most 200, then returns
    # what it has with "next due: now", so the caller claims again at once.
    tenants = [f"t{i:03d}" for i in range(300)]
    await backend.enqueue([job(t) for t in [*tenants, "z"]])
    assert len(await backend.claim(["default"], 301, worker="w", lease=60.0)) == 301
    qp = queue_prefix(store_url)
    assert client.zcard(qp + "p:5") == 301  # every lane empty, every tenant listed
    await backend.enqueue([job("z")])  # behind the 300 at the level (same vtime, name)

    assert await backend.claim(["default"], 10, worker="w", lease=60.0) == []
    assert client.zcard(qp + "p:5") == 101
    assert backend._due_at is not None and backend._due_at <= time.monotonic()  # type: ignore[attr-defined]
    [late] = await backend.claim(["default"], 10, worker="w", lease=60.0)
    assert late.tenant == "z"
    assert ready_keys(client, qp) == []  # it went on past z, and found z's lane empty


async def test_a_store_written_with_task_sets_is_claimed_alike_and_tidied(
    backend: Backend, client: redis.Redis, store_url: str
) -> None:
    qp = queue_prefix(store_url)
    jobs = [job("a"), job("b"), job("a"), job("c"), job("b"), job("a")]
    await backend.enqueue(jobs)
    # The layout before 't1': every (prio, tenant) has a task set, even of one task;
    # and a tenant left in its level with an empty lane (the old drained-lane leftover).
    for tenant, task in client.hgetall(qp + "t1:5").items():
        client.zadd(f"{qp}t:5:{tenant}", {task: 0})
    client.delete(qp + "t1:5")
    client.zadd(qp + "t:5:gone", {"t.a": 0})
    client.zadd(qp + "p:5", {"gone": 0})
    # New jobs of those tenants join the old sets, not the hash.
    await backend.enqueue([job("c", task="t.b")])
    assert client.hgetall(qp + "t1:5") == {}
    assert client.zrange(qp + "t:5:c", 0, -1) == ["t.a", "t.b"]

    order = await drain(backend, limit=3)
    # Fair share by virtual time, then name: a b c, a b c, a — whatever the layout.
    assert order == [
        ("a", "t.a"),
        ("b", "t.a"),
        ("c", "t.a"),
        ("a", "t.a"),
        ("b", "t.a"),
        ("c", "t.b"),
        ("a", "t.a"),
    ]
    assert ready_keys(client, qp) == []
