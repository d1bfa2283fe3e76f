"""Purge forgets idle tenants, so per-tenant state does not grow without bound."""

from __future__ import annotations

import redis
from conveyor.backends import create_backend
from conveyor.backends.base import Outcome, OutcomeKind
from tests.redis.jobs import job


async def test_purge_forgets_idle_tenants_but_keeps_debts(store_url: str) -> None:
    backend = create_backend(store_url)
    await backend.open()
    try:
        await backend.enqueue([job(f"small-{i}") for i in range(10)])
        await backend.enqueue([job("big") for _ in range(40)])
        done = 0
        while batch := await backend.claim(["default"], 10, worker="w", lease=30.0):
            outcomes = [Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in batch]
            assert await backend.finish(outcomes) == [True] * len(batch)
            done += len(batch)
        assert done == 50
        await backend.purge()
        tenant_key = backend.keys.queue("default") + "tv"  # type: ignore[attr-defined]
        client = redis.Redis.from_url(store_url.split("?", 1)[0], decode_responses=True)
        try:
            # The small tenants are behind the queue's clock: forgotten. "big" ran last
            # and is one turn ahead: it keeps that debt.
            assert client.hkeys(tenant_key) == ["big"]
        finally:
            client.close()
    finally:
        await backend.close()


async def test_purge_drops_outbox_entries_past_the_retention(store_url: str) -> None:
    """Stream ids are the server's milliseconds: an entry from long ago (written here
    with an explicit old id) goes, a fresh one stays."""
    backend = create_backend(store_url)
    await backend.open()
    try:
        outbox = backend.keys.outbox  # type: ignore[attr-defined]
        client = redis.Redis.from_url(store_url.split("?", 1)[0], decode_responses=True)
        try:
            client.xadd(outbox, {"e": "job.cancelled", "id": "ancient"}, id="1000-0")
        finally:
            client.close()
        fresh = job("t")
        await backend.enqueue([fresh])
        await backend.cancel(fresh.id)
        await backend.purge()
        assert [e.job_id for e in await backend.take_events(10)] == [fresh.id]
    finally:
        await backend.close()
