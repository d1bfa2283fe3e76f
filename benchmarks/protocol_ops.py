"""Enqueue and claim+finish rates through the backend protocol alone (no worker loop).

    python benchmarks/protocol_ops.py LABEL redis|sqlite

Useful to compare two checkouts on the same machine (run them interleaved, several
times, and compare medians and best-of: a shared machine is noisy). Redis uses the
server at 127.0.0.1:6379 under a fresh key prefix; SQLite a fresh file in /tmp.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from pathlib import Path

from conveyor.backends import create_backend
from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id


async def main(label: str, engine: str) -> None:
    prefix = f"bench_ops_{secrets.token_hex(3)}"
    url = {
        "redis": f"redis://127.0.0.1:6379/0?prefix={prefix}",
        "sqlite": f"sqlite:////tmp/{prefix}.db",
    }[engine]
    b = create_backend(url)
    await b.open()
    n = 3000
    jobs = [NewJob(new_job_id(), "t", "default", None, 5, "[]", "{}", 3) for _ in range(n)]
    s = time.perf_counter()
    for i in range(0, n, 100):
        await b.enqueue(jobs[i : i + 100])
    e1 = time.perf_counter()
    done = 0
    while True:
        got = await b.claim(["default"], 10, worker="w", lease=30)
        if not got:
            break
        await b.finish(
            [Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED, result_json="1") for j in got]
        )
        done += len(got)
    e2 = time.perf_counter()
    assert done == n
    print(label, engine, "enqueue/s", round(n / (e1 - s)), "claim+finish/s", round(n / (e2 - e1)))
    await b.close()
    await cleanup(engine, prefix)


async def cleanup(engine: str, prefix: str) -> None:
    """Leave nothing behind: the file, or the keys under this run's prefix."""
    if engine == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"/tmp/{prefix}.db{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url("redis://127.0.0.1:6379/0")
    keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])
    await client.aclose()


asyncio.run(main(sys.argv[1], sys.argv[2]))
