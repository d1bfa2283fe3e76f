"""Redis backend: dequeue cost stays flat as the backlog and the tenant count grow.

    python benchmarks/redis_scale.py --url redis://127.0.0.1:6379/0 [--only tenants]

Measures claim(10) + finish(10) round trips through the backend protocol (no worker
process, so only the store's cost moves) in four setups, each in its own key prefix
that is deleted afterwards:

    backlog  10,000 queued jobs, one tenant      vs  1,000,000 queued jobs, one tenant
    tenants  one tenant, 100,000 jobs            vs  10,000 tenants x 10 jobs

and prints the ratio against the issue's bar: the big case keeps >= 80 % of the small
case's rate. The two stores of a comparison are measured in alternating chunks, so that
the load of other work on the machine affects both alike.

With ``--worker`` the tenants comparison is made end to end, as a user sees it: each
round fills both stores afresh and drains each with one ``conveyor worker -c 10 -p 1
--burst`` process (async no-op task ``bench.anoop``), rated from the jobs' own start and
finish times, alternating between the two setups.
Needs about 1 GB of free memory in Redis for the 1,000,000-job case; use a server of
your own (it writes a lot), e.g. ``redis-server --port 6390 --save ''``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import conveyor
import redis
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id

BATCH = 10_000
HERE = Path(__file__).resolve().parent


def new_job(tenant: str | None, task: str = "bench.noop") -> NewJob:
    return NewJob(
        id=new_job_id(),
        task=task,
        queue="default",
        tenant=tenant,
        priority=5,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=3,
        result_ttl=3600.0,
    )


async def fill(backend: Backend, jobs: int, tenants: int, task: str = "bench.noop") -> float:
    started = time.perf_counter()
    for offset in range(0, jobs, BATCH):
        batch = [
            new_job(None if tenants == 1 else f"tenant-{(offset + i) % tenants}", task)
            for i in range(min(BATCH, jobs - offset))
        ]
        await backend.enqueue(batch)
    return jobs / (time.perf_counter() - started)


def server_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system, main thread included)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def drain_rate(
    backend: Backend, jobs: int, limit: int = 10, client: redis.Redis | None = None
) -> tuple[float, float]:
    """Claim+finish throughput over ``jobs`` jobs, and the CPU seconds per job of this
    process plus the server (when ``client`` is given): the CPU figure moves much less
    than the rate with the load of other work on a shared machine."""
    done = 0
    cpu = time.process_time()
    server = server_cpu(client) if client else 0.0
    started = time.perf_counter()
    while done < jobs:
        got = await backend.claim(["default"], limit, worker="bench", lease=60.0)
        if not got:
            break
        await backend.finish([Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in got])
        done += len(got)
    rate = done / (time.perf_counter() - started)
    used = time.process_time() - cpu + (server_cpu(client) - server if client else 0.0)
    return rate, used / max(done, 1)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{{{prefix}}}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


async def compare(
    url: str, small: tuple[int, int], big: tuple[int, int], rounds: int, chunk: int
) -> dict[str, Any]:
    """Fill two stores, then measure them in alternating chunks, so that drifting load
    on the machine hits both alike; the ratio is the median of per-round ratios."""
    prefixes = [f"scale-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    backends = [create_backend(f"{url}?prefix={p}") for p in prefixes]
    try:
        enqueue_rates = []
        for backend, (jobs, tenants) in zip(backends, (small, big), strict=True):
            await backend.open()
            enqueue_rates.append(round(await fill(backend, jobs, tenants)))
        for backend in backends:  # warm-up
            await drain_rate(backend, 200)
        rates: list[list[float]] = [[], []]
        cpus: list[list[float]] = [[], []]
        client = redis.Redis.from_url(url)
        for _ in range(rounds):
            for i, backend in enumerate(backends):
                rate, cpu = await drain_rate(backend, chunk, client=client)
                rates[i].append(rate)
                cpus[i].append(cpu)
        client.close()
    finally:
        for backend, prefix in zip(backends, prefixes, strict=True):
            await backend.close()
            delete_prefix(url, prefix)
    ratios = sorted(b / a for a, b in zip(rates[0], rates[1], strict=True))
    # The same ratio from CPU time per job (client + server): small's over big's.
    cpu_ratios = sorted(a / b for a, b in zip(cpus[0], cpus[1], strict=True))
    return {
        "small": {"queued": small[0], "tenants": small[1], "enqueue_per_s": enqueue_rates[0]},
        "big": {"queued": big[0], "tenants": big[1], "enqueue_per_s": enqueue_rates[1]},
        "small_claim_finish_per_s": round(statistics.median(rates[0])),
        "big_claim_finish_per_s": round(statistics.median(rates[1])),
        "ratio": round(ratios[len(ratios) // 2], 3),
        "small_cpu_us_per_job": round(statistics.median(cpus[0]) * 1e6, 1),
        "big_cpu_us_per_job": round(statistics.median(cpus[1]) * 1e6, 1),
        "cpu_ratio": round(cpu_ratios[len(cpu_ratios) // 2], 3),
    }


def worker_rate(url: str, jobs: int, client: redis.Redis) -> tuple[float, float, float]:
    """Jobs/s of one ``conveyor worker`` process draining the store at ``url`` (which
    holds ``jobs`` queued jobs), first start to last finish by the store's clock; and the
    worker's and the Redis server's CPU seconds per job (start-up included)."""
    cmd = [str(Path(sys.executable).parent / "conveyor"), "worker", "bench_tasks:app"]
    cmd += ["-c", "10", "-p", "1", "--burst"]
    env = {**os.environ, "CONVEYOR_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING"}
    before, server = os.times(), server_cpu(client)
    subprocess.run(cmd, cwd=HERE, env=env, check=True, timeout=600)
    after, server = os.times(), server_cpu(client) - server
    worker = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    app = conveyor.App(url)
    try:
        done = app.jobs(state="succeeded", limit=jobs + 10)
    finally:
        app.close()
    if len(done) != jobs:
        raise SystemExit(f"expected {jobs} succeeded jobs, found {len(done)}")
    first = min(j.started_at for j in done if j.started_at)
    last = max(j.finished_at for j in done if j.finished_at)
    return jobs / (last - first).total_seconds(), worker / jobs, server / jobs


async def compare_worker(
    url: str, small: tuple[int, int], big: tuple[int, int], rounds: int
) -> dict[str, Any]:
    """``compare`` end to end: each round fills both setups afresh and drains each with a
    worker process; the ratio is the median of per-round ratios."""
    rates: list[list[float]] = [[], []]
    cpus: list[list[tuple[float, float]]] = [[], []]
    client = redis.Redis.from_url(url)
    try:
        for _ in range(rounds):
            for i, (jobs, tenants) in enumerate((small, big)):
                prefix = f"scale-{uuid.uuid4().hex[:12]}"
                store = f"{url}?prefix={prefix}"
                backend = create_backend(store)
                try:
                    await backend.open()
                    await fill(backend, jobs, tenants, task="bench.anoop")
                    rate, worker, server = worker_rate(store, jobs, client)
                    rates[i].append(rate)
                    cpus[i].append((worker, server))
                finally:
                    await backend.close()
                    delete_prefix(url, prefix)
    finally:
        client.close()
    ratios = sorted(b / a for a, b in zip(rates[0], rates[1], strict=True))
    return {
        "small": {"queued": small[0], "tenants": small[1]},
        "big": {"queued": big[0], "tenants": big[1]},
        "small_per_s": [round(r) for r in rates[0]],
        "big_per_s": [round(r) for r in rates[1]],
        "ratio": round(ratios[len(ratios) // 2], 3),
        # median worker / Redis CPU µs per job
        "small_cpu_us": [round(statistics.median(c) * 1e6, 1) for c in zip(*cpus[0], strict=True)],
        "big_cpu_us": [round(statistics.median(c) * 1e6, 1) for c in zip(*cpus[1], strict=True)],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if args.worker:
        # Tenants only: reading a million jobs' timestamps back is an operator query
        # that would hold the server for seconds.
        result["tenants"] = await compare_worker(
            args.url, (100_000, 1), (100_000, 10_000), args.rounds
        )
        return result
    if args.only in (None, "backlog"):
        result["backlog"] = await compare(
            args.url, (10_000, 1), (args.big, 1), args.rounds, args.chunk
        )
    if args.only in (None, "tenants"):
        result["tenants"] = await compare(
            args.url, (100_000, 1), (100_000, 10_000), args.rounds, args.chunk
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--big", type=int, default=1_000_000, help="jobs in the big backlog")
    parser.add_argument("--rounds", type=int, default=9, help="alternating measurements")
    parser.add_argument("--chunk", type=int, default=500, help="jobs claimed per measurement")
    parser.add_argument("--only", choices=["backlog", "tenants"], help="run one comparison")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--worker",
        action="store_true",
        help="tenants, end to end: drain with a worker process",
    )
    args = parser.parse_args()
    if args.worker and args.only == "backlog":
        parser.error("--worker compares tenants only (too many jobs to read back for backlog)")
    result = asyncio.run(main_async(args))
    for name, r in result.items():
        if args.worker:
            print(
                f"{name} (worker process): {r['small']['queued']:,} queued / "
                f"{r['small']['tenants']:,} tenant(s): {r['small_per_s']} jobs/s;  "
                f"{r['big']['queued']:,} queued / {r['big']['tenants']:,} tenant(s): "
                f"{r['big_per_s']} jobs/s;  ratio {r['ratio']:.2f} (bar 0.80);  CPU per job, "
                f"worker + Redis: {' + '.join(map(str, r['small_cpu_us']))} µs / "
                f"{' + '.join(map(str, r['big_cpu_us']))} µs"
            )
            continue
        print(
            f"{name}: {r['small']['queued']:,} queued / {r['small']['tenants']:,} tenant(s): "
            f"{r['small_claim_finish_per_s']:,} jobs/s;  {r['big']['queued']:,} queued / "
            f"{r['big']['tenants']:,} tenant(s): {r['big_claim_finish_per_s']:,} jobs/s;  "
            f"ratio {r['ratio']:.2f} (bar 0.80);  CPU (client + Redis) per job "
            f"{r['small_cpu_us_per_job']} / {r['big_cpu_us_per_job']} µs: "
            f"ratio {r['cpu_ratio']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
