"""Cluster-safe keys: every key a store writes shares one hash tag (one cluster slot)."""

from __future__ import annotations

from collections import Counter

from redis.crc import key_slot

import redis
from conveyor.backends import create_backend
from conveyor.backends.base import Lease, NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id


def job(queue: str, tenant: str | None, **options: object) -> NewJob:
    return NewJob(
        id=new_job_id(),
        task=f"task.{queue}",
        queue=queue,
        tenant=tenant,
        priority=3,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=2,
        **options,  # type: ignore[arg-type]
    )


async def test_every_key_of_a_store_is_in_one_slot(store_url: str) -> None:
    backend = create_backend(store_url)
    await backend.open()
    try:
        await backend.set_queue("q}odd{name", aging=5.0)
        await backend.set_tenant("default", "t1", weight=2.0, max_running=3)
        await backend.enqueue(
            [
                job("default", "t1", key="k1", result_ttl=60.0),
                job("default", None, delay=30.0),
                job("q}odd{name", "t:2"),
                job("other", "t1"),
            ]
        )
        claimed = await backend.claim(
            ["default", "q}odd{name", "other"], 10, worker="w", lease=0.01
        )
        assert len(claimed) == 3
        await backend.heartbeat([Lease(c.id, c.lease_token) for c in claimed], lease=30.0)
        first = claimed[0]
        await backend.finish([Outcome(first.id, first.lease_token, OutcomeKind.SUCCEEDED)])
        await backend.try_lock("maintenance", "w", ttl=10.0)
        await backend.reap()
        await backend.promote()
        await backend.purge()
        await backend.stats()
    finally:
        await backend.close()

    prefix = store_url.split("prefix=", 1)[1]
    client = redis.Redis.from_url(store_url.split("?", 1)[0])
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    finally:
        client.close()
    assert len(keys) > 20
    slots = Counter(key_slot(k) for k in keys)
    assert len(slots) == 1, slots
    assert all(k.startswith(f"{{{prefix}}}:".encode()) for k in keys)
