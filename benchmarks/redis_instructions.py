"""Redis backend: instructions per job, counted by callgrind (repeatable on a busy machine).

Wall-clock rates and even CPU times move with the load of a shared machine; the number
of instructions a job costs does not. Two measurements, each of one phase only (the
enqueue before it is not counted):

    # the Redis side: claim(10)+finish cycles (finish_claim.lua) against a server run
    # under callgrind, collection switched on for the cycles only
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg/redis.%p \\
        redis-server --port 6392 --save '' &
    python benchmarks/redis_instructions.py store --url redis://127.0.0.1:6392/0 \\
        --server-pid <valgrind's pid> --out-dir /tmp/cg [--tenants 1000]

    # the worker side: one in-process Worker (-c 10) draining async no-op jobs, itself
    # run under callgrind (any server for the jobs)
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg/worker.%p \\
        python benchmarks/redis_instructions.py worker --url redis://127.0.0.1:6391/0 \\
        --out-dir /tmp/cg

Prints instructions per job. Each run uses its own key prefix, deleted afterwards. The
worker figure moves a little between runs (how many jobs one claim gets depends on
timing); the store figure is exact for a given Redis build.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import uuid

import conveyor
import redis
from conveyor.backends import create_backend
from conveyor.backends.base import NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def collected(pid: int, out_dir: str) -> int:
    """Dump the counts collected since the last zeroing; their total instructions."""
    before = set(glob.glob(os.path.join(out_dir, "*")))
    callgrind(pid, "-d")
    new = sorted(set(glob.glob(os.path.join(out_dir, "*"))) - before, key=os.path.getmtime)
    total = 0
    with open(new[-1]) as dump:
        for line in dump:
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
    for path in new:
        os.remove(path)
    return total


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{{{prefix}}}:*", count=2000):
            client.unlink(key)
    finally:
        client.close()


async def store(url: str, jobs: int, tenants: int, pid: int, out_dir: str) -> float:
    prefix = f"instr-{uuid.uuid4().hex[:8]}"
    backend = create_backend(f"{url}?prefix={prefix}")
    await backend.open()
    try:
        for offset in range(0, jobs, 5000):
            await backend.enqueue(
                [
                    NewJob(
                        id=new_job_id(),
                        task="bench.noop",
                        queue="default",
                        tenant=None if tenants == 1 else f"tenant-{(offset + i) % tenants}",
                        priority=5,
                        args_json="[]",
                        kwargs_json="{}",
                        max_attempts=3,
                        result_ttl=3600.0,
                    )
                    for i in range(min(5000, jobs - offset))
                ]
            )
        outcomes: list[Outcome] = []
        callgrind(pid, "-z")
        callgrind(pid, "-i", "on")
        done = 0
        while True:
            _, got = await backend.finish_and_claim(
                outcomes, ["default"], 10, worker="bench", lease=60.0
            )
            done += len(outcomes)
            if not got:
                break
            outcomes = [Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in got]
        callgrind(pid, "-i", "off")
        return collected(pid, out_dir) / done
    finally:
        await backend.close()
        delete_prefix(url, prefix)


def worker(url: str, jobs: int, out_dir: str) -> float:
    prefix = f"instr-{uuid.uuid4().hex[:8]}"
    app = conveyor.App(f"{url}?prefix={prefix}", result_ttl=3600)

    @app.task(name="bench.anoop")
    async def anoop() -> None:
        return None

    try:
        for offset in range(0, jobs, 1000):
            app.enqueue_many([anoop.s() for _ in range(min(1000, jobs - offset))])
        run = conveyor.Worker(app, concurrency=10, handle_signals=False)
        pid = os.getpid()
        callgrind(pid, "-z")
        callgrind(pid, "-i", "on")
        run.run(burst=True)
        callgrind(pid, "-i", "off")
        return collected(pid, out_dir) / run.processed
    finally:
        app.close()
        delete_prefix(url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("side", choices=["store", "worker"])
    parser.add_argument("--url", required=True)
    parser.add_argument("-n", "--jobs", type=int, default=4000)
    parser.add_argument("--tenants", type=int, default=1, help="store: jobs spread over this many")
    parser.add_argument("--server-pid", type=int, help="store: pid of the server under callgrind")
    parser.add_argument("--out-dir", required=True, help="callgrind's --callgrind-out-file dir")
    args = parser.parse_args()
    if args.side == "store":
        if args.server_pid is None:
            parser.error("store needs --server-pid")
        per_job = asyncio.run(
            store(args.url, args.jobs, args.tenants, args.server_pid, args.out_dir)
        )
        print(f"Redis: {per_job:,.0f} instructions per job ({args.tenants:,} tenant(s))")
    else:
        per_job = worker(args.url, args.jobs, args.out_dir)
        print(f"worker: {per_job:,.0f} instructions per job")


if __name__ == "__main__":
    main()
