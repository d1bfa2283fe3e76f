"""A cancelled primitive is cancelled, even while it waits for a pooled connection.

psycopg_pool waits for a free connection with asyncio.wait_for, which on Python < 3.12
can drop a cancellation that arrives just as a connection is handed over. A worker's
side loop that lost its cancellation that way never stopped, and neither did the worker.
"""

from __future__ import annotations

import asyncio
import random

from tests.postgres.conftest import OpenPG


async def test_cancellation_is_never_swallowed(open_pg: OpenPG) -> None:
    backend = await open_pg()
    rng = random.Random(3)
    swallowed = 0
    for _ in range(150):  # bounded; more callers than the pool has connections
        tasks = [asyncio.create_task(backend.try_lock(f"lock{i}", "me", 5.0)) for i in range(8)]
        await asyncio.sleep(rng.uniform(0, 0.003))
        requested = [task.cancel() for task in tasks]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for was_pending, result in zip(requested, results, strict=True):
            if was_pending and not isinstance(result, asyncio.CancelledError):
                swallowed += 1
    assert swallowed == 0
