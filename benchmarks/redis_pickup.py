"""Redis backend: where an idle worker's pickup of one job spends its time.

    python benchmarks/redis_pickup.py                      # starts its own redis-server
    python benchmarks/redis_pickup.py --url redis://127.0.0.1:6391/0 --samples 500

A worker (concurrency 10, async no-op task) runs in this process; a producer in a child
process enqueues one job at a time, 50 ms apart (the worker is idle in between), and
passes its clock reading just before the call as the job's argument. The worker marks
four points with ``time.perf_counter()`` (one clock for both processes on Linux): the
wake-up message arrives (``msg``), the claim is sent (``claim``), its reply with the
job arrives (``reply``), the task starts (``start``). Printed: the median of each step
and of the whole, and the p90 of the whole. The marks wrap two private methods of the
backend, so this script follows the code it measures, not a public API.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import conveyor
import redis
from conveyor.backends.redis import _wakeup
from conveyor.backends.redis import backend as redis_backend
from conveyor.worker.loop import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis_enqueue import private_redis

STEPS = ("sent", "msg", "claim", "reply", "start")


def produce(url: str, samples: int) -> None:
    """The child: one job at a time, each carrying the time just before its enqueue."""
    app = conveyor.App(url, result_ttl=60)
    try:
        time.sleep(1.5)  # the worker starts and subscribes
        for _ in range(samples + 1):  # the first one warms the worker up, not counted
            app.enqueue("pickup.noop", args=[time.perf_counter()])
            time.sleep(0.05)
    finally:
        app.close()


def trace(url: str, samples: int) -> list[dict[str, float]]:
    cycle: dict[str, float] = {}  # the marks of the pickup under way
    done: list[dict[str, float]] = []

    def mark(step: str) -> None:
        cycle.setdefault(step, time.perf_counter())

    class MarkedFlag:
        def __init__(self, event: Any) -> None:
            self.event = event

        def set(self) -> None:
            mark("msg")
            self.event.set()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.event, name)

    ensure = _wakeup.WakeListener.ensure

    async def marked_ensure(self: Any, channels: Any) -> bool:
        if not isinstance(self.flag, MarkedFlag):
            self.flag = MarkedFlag(self.flag)
        return await ensure(self, channels)

    claim = redis_backend.RedisBackend.finish_and_claim

    async def marked_claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "msg" in cycle:
            mark("claim")
        got = await claim(self, *args, **kwargs)
        if got[1]:
            mark("reply")
        return got

    _wakeup.WakeListener.ensure = marked_ensure  # type: ignore[method-assign]
    redis_backend.RedisBackend.finish_and_claim = marked_claim  # type: ignore[method-assign]

    app = conveyor.App(url, result_ttl=60)

    @app.task(name="pickup.noop")
    async def noop(sent: float) -> None:
        done.append({"sent": sent, **cycle, "start": time.perf_counter()})
        cycle.clear()

    worker = Worker(app, concurrency=10, handle_signals=False)
    child = subprocess.Popen([sys.executable, __file__, "--produce", url, str(samples)])

    def stop_after_child() -> None:
        child.wait()
        time.sleep(0.3)
        worker.stop()

    threading.Thread(target=stop_after_child, daemon=True).start()
    worker.run()
    return [d for d in done[1:] if all(step in d for step in STEPS)]


def main() -> None:
    if sys.argv[1:2] == ["--produce"]:
        produce(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis server nobody else uses (default: a private one)")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    print("python benchmarks/redis_pickup.py " + shlex.join(sys.argv[1:]))
    with nullcontext(args.url) if args.url else private_redis() as url:
        prefix = f"bench-pickup-{uuid.uuid4().hex[:8]}"
        try:
            rows = trace(f"{url}{'&' if '?' in url else '?'}prefix={prefix}", args.samples)
        finally:
            admin = redis.Redis.from_url(url)
            for key in admin.scan_iter(match=f"*{prefix}*", count=10_000):
                admin.unlink(key)
            admin.close()
    print(f"{len(rows)} pickups traced of {args.samples}")
    for a, b in itertools.pairwise(STEPS):
        p50 = statistics.median([(r[b] - r[a]) * 1e3 for r in rows])
        print(f"{a:>6} -> {b:<6} p50 {p50:.3f} ms")
    total = sorted((r["start"] - r["sent"]) * 1e3 for r in rows)
    p50, p90 = statistics.median(total), total[len(total) * 9 // 10]
    print(f"  whole pickup p50 {p50:.3f} ms, p90 {p90:.3f} ms")


if __name__ == "__main__":
    main()
