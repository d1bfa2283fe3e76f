"""Redis backend: one worker's drain rate, its CPU and Redis's per job, and round trips.

    redis-server --port 6391 --save '' --daemonize yes     # a server of your own
    python benchmarks/redis_worker.py --url redis://127.0.0.1:6391/0 --repeats 3

Enqueues ``-n`` no-op jobs (``enqueue_many``, batches of 1,000), then drains them with an
in-process ``conveyor.Worker`` (``-c`` slots, burst mode) and prints, per repeat: jobs/s,
the worker process's CPU time per job (user + system), the Redis server's CPU time per
job (``INFO cpu``) and the script calls per job (``INFO commandstats``: ``FCALL``, and
``EVALSHA`` on a server without functions), i.e. round trips to Redis per job. The Redis
figures are only right on a server no other client uses while it runs. Each repeat uses
its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

import conveyor
import redis


def server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


SCRIPT_COMMANDS = ("fcall", "fcall_ro", "evalsha", "eval")


def script_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in SCRIPT_COMMANDS)


def drain_once(url: str, n: int, concurrency: int, task_name: str) -> dict[str, float]:
    prefix = f"bench-worker-{uuid.uuid4().hex[:8]}"
    store = f"{url}{'&' if '?' in url else '?'}prefix={prefix}"
    app = conveyor.App(store, result_ttl=3600)

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    @app.task(name="bench.anoop")
    async def anoop() -> None:
        return None

    admin = redis.Redis.from_url(url)
    try:
        task = app.tasks[task_name]
        for offset in range(0, n, 1000):
            app.enqueue_many([task.s() for _ in range(min(1000, n - offset))])
        worker = conveyor.Worker(app, concurrency=concurrency, handle_signals=False)
        cpu0, calls0, times0 = server_cpu(admin), script_calls(admin), os.times()
        started = time.perf_counter()
        worker.run(burst=True)
        elapsed = time.perf_counter() - started
        times1 = os.times()
        calls = script_calls(admin) - calls0
        redis_cpu = server_cpu(admin) - cpu0
        own_cpu = (times1.user - times0.user) + (times1.system - times0.system)
        done = worker.processed
        return {
            "jobs_per_s": done / elapsed,
            "worker_cpu_us_per_job": own_cpu / done * 1e6,
            "redis_cpu_us_per_job": redis_cpu / done * 1e6,
            "script_calls_per_job": calls / done,
        }
    finally:
        app.close()
        batch = list(admin.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        for i in range(0, len(batch), 500):
            admin.unlink(*batch[i : i + 500])
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6391/0", help="a server of your own")
    parser.add_argument("-n", "--jobs", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--task", default="bench.anoop", choices=["bench.anoop", "bench.noop"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = [
        drain_once(args.url, args.jobs, args.concurrency, args.task) for _ in range(args.repeats)
    ]
    for i, row in enumerate(rows, 1):
        print(f"repeat {i}: " + ", ".join(f"{k}={v:,.3f}" for k, v in row.items()))
    print(
        "median: " + ", ".join(f"{k}={statistics.median(r[k] for r in rows):,.3f}" for k in rows[0])
    )
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
