"""Push wake-ups: an idle waiter sends nothing to Redis and wakes within milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time

import redis.asyncio as aioredis

from conveyor.backends import create_backend
from conveyor.backends.base import Outcome, OutcomeKind
from conveyor.backends.redis.backend import RedisBackend
from conveyor.job import JobState
from tests.redis.conftest import StartRedis
from tests.redis.jobs import job


async def test_wake_latency_is_milliseconds(store_url: str) -> None:
    waiter = create_backend(store_url)
    producer = create_backend(store_url)
    await waiter.open()
    await producer.open()
    try:
        latencies = []
        for _ in range(20):
            assert await waiter.claim(["default"], 10, worker="w", lease=30.0) == []
            waiting = asyncio.create_task(waiter.wait_for_work(["default"], 5.0))
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            await producer.enqueue([job(task="t")])
            await asyncio.wait_for(waiting, 5.0)
            latencies.append(time.perf_counter() - started)
            assert len(await waiter.claim(["default"], 10, worker="w", lease=30.0)) == 1
        # Generous bounds: a shared CI machine; typical figures are well below 1 ms.
        assert statistics.median(latencies) < 0.05, latencies
        assert max(latencies) < 1.0, latencies
    finally:
        await waiter.close()
        await producer.close()


async def test_an_idle_wait_does_not_poll(private_redis: StartRedis) -> None:
    server = private_redis(["--appendonly", "yes"])
    backend = create_backend(server.url)
    await backend.open()
    probe = aioredis.Redis.from_url(server.url)
    try:
        assert await backend.claim(["default"], 10, worker="w", lease=30.0) == []

        async def commands() -> int:
            stats = await probe.info("stats")
            return int(stats["total_commands_processed"])

        before = await commands()
        started = time.monotonic()
        await backend.wait_for_work(["default"], 1.0)
        assert time.monotonic() - started >= 0.9
        # Only the probe's own INFO calls: the wait itself sent nothing.
        assert await commands() - before <= 2
    finally:
        await probe.aclose()
        await backend.close()


async def test_a_freed_task_cap_wakes_a_waiting_worker(store_url: str) -> None:
    """finish_and_claim wakes waiters only when a freed slot may unblock a capped job."""
    waiter = create_backend(store_url)
    finisher = create_backend(store_url)
    await waiter.open()
    await finisher.open()
    caps = {"t": 1}
    try:
        await finisher.enqueue([job(task="t"), job(task="t")])
        (running,) = await finisher.claim(["default"], 10, worker="a", lease=30.0, task_caps=caps)
        assert await waiter.claim(["default"], 10, worker="b", lease=30.0, task_caps=caps) == []
        waiting = asyncio.create_task(waiter.wait_for_work(["default"], 60.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        done = Outcome(running.id, running.lease_token, OutcomeKind.SUCCEEDED)
        # The finisher takes no new job (limit 0): the freed slot is the waiter's to use.
        applied, claimed = await finisher.finish_and_claim(
            [done], ["default"], 0, worker="a", lease=30.0, task_caps=caps
        )
        assert applied == [True] and claimed == []
        await asyncio.wait_for(waiting, 10.0)  # woken, long before its 60 s wait ends
        claimed = await waiter.claim(["default"], 10, worker="b", lease=30.0, task_caps=caps)
        assert len(claimed) == 1
    finally:
        await waiter.close()
        await finisher.close()


async def test_only_an_enqueue_with_news_publishes(store_url: str) -> None:
    """A job joining a lane that holds jobs already wakes nobody (a waiting worker that
    left those jobs would leave it too); the first job of a lane, another tenant's, and
    a scheduled job (waiters recompute their next due time) each publish."""
    backend = create_backend(store_url)
    await backend.open()
    assert isinstance(backend, RedisBackend)
    listener = aioredis.Redis.from_url(store_url.split("?")[0])
    pubsub = listener.pubsub()
    await pubsub.subscribe(backend.keys.wake("default"))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    async def wakes() -> int:
        n = 0
        while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            n += 1
        return n

    try:
        await backend.enqueue([job(task="t")])
        assert await wakes() == 1  # the lane's first job
        await backend.enqueue([job(task="t")])
        await backend.enqueue([job(task="t"), job(task="t")])
        assert await wakes() == 0  # a busy lane: no news
        await backend.enqueue([dataclasses.replace(job(task="t"), tenant="other")])
        assert await wakes() == 1
        await backend.enqueue([dataclasses.replace(job(task="t"), delay=60.0)])
        assert await wakes() == 1
        assert len(await backend.claim(["default"], 10, worker="w", lease=30.0)) == 5
        assert len(await backend.query(state=JobState.QUEUED)) == 0  # every lane empty
        await backend.enqueue([job(task="t")])
        assert await wakes() == 1  # empty again: news
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await backend.close()
