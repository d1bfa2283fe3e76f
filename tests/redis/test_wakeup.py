"""Push wake-ups: an idle waiter sends nothing to Redis and wakes within milliseconds."""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis

from conveyor.backends import create_backend
from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id
from tests.redis.conftest import StartRedis


def job() -> NewJob:
    return NewJob(
        id=new_job_id(),
        task="t",
        queue="default",
        tenant=None,
        priority=5,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=1,
    )


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
            await producer.enqueue([job()])
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
        await finisher.enqueue([job(), job()])
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
