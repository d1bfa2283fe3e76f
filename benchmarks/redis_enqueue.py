"""Redis backend: the sync enqueue paths, against a private Redis server.

    python benchmarks/redis_enqueue.py                     # starts its own redis-server
    python benchmarks/redis_enqueue.py --url redis://127.0.0.1:6391/0 --repeats 3

Measures, in one client thread with a no-op task:

* ``single``: ``task.enqueue()``, one call (one round trip) per job;
* ``by_name``: ``app.enqueue("bench.noop")``, the same by task name;
* ``many``: ``app.enqueue_many([task.s() ...])`` in calls of ``--batch`` jobs;
* ``many_2t``: the same from ``--threads`` threads sharing the app (0 or 1: skipped).

and prints for each: calls or jobs per second (wall clock), this process's CPU time per
job (user + system, every thread) and the Redis server's CPU time per job (``INFO cpu``).
Without ``--url`` a ``redis-server`` of its own is started on a free port without
persistence (``--save ''``) and stopped at the end, so that no other client's commands
count in its figures; with ``--url`` the server must be one nobody else uses meanwhile.
Each repeat writes under a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import conveyor
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH; pass --url instead")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
        proc = subprocess.Popen([*cmd, "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(admin: Any, jobs: int, run: Callable[[], None]) -> dict[str, float]:
    cpu0, times0 = server_cpu(admin), os.times()
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    times1, cpu1 = os.times(), server_cpu(admin)
    client = (times1.user - times0.user) + (times1.system - times0.system)
    return {
        "per_s": round(jobs / elapsed),
        "client_cpu_us": round(client / jobs * 1e6, 1),
        "redis_cpu_us": round((cpu1 - cpu0) / jobs * 1e6, 1),
    }


def run_once(
    url: str, single: int, many: int, batch: int, threads: int
) -> dict[str, dict[str, float]]:
    prefix = f"bench-enq-{uuid.uuid4().hex[:8]}"
    app = conveyor.App(f"{url}{'&' if '?' in url else '?'}prefix={prefix}", result_ttl=3600)

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    admin = redis.Redis.from_url(url)
    try:
        noop.enqueue()  # connect and load the script outside the measured loops

        def singles() -> None:
            for _ in range(single):
                noop.enqueue()

        def by_name() -> None:
            for _ in range(single):
                app.enqueue("bench.noop")

        def bulk(share: int = many) -> None:
            for offset in range(0, share, batch):
                app.enqueue_many([noop.s() for _ in range(min(batch, share - offset))])

        def bulk_threads() -> None:
            # One thread validates its next batch while another waits for Redis (the
            # GIL is released on the socket): client and server work overlap.
            workers = [
                threading.Thread(target=bulk, args=(many // threads,)) for _ in range(threads)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        figures = {
            "single": timed(admin, single, singles),
            "by_name": timed(admin, single, by_name),
            "many": timed(admin, many, bulk),
        }
        if threads > 1:
            figures[f"many_{threads}t"] = timed(admin, many // threads * threads, bulk_threads)
        return figures
    finally:
        app.close()
        for key in admin.scan_iter(match=f"{prefix}*", count=10_000):
            admin.unlink(key)
        admin.close()


def script_cost(url: str, calls: int, per_call: int) -> float:
    """Redis's own time (``INFO commandstats``, µs) per job inside enqueue.lua, for
    ``calls`` script calls of ``per_call`` jobs sent in one pipeline: no client waits
    between calls, so the figure leaves out the round trips' system time."""
    from conveyor.backends.base import NewJob
    from conveyor.backends.redis._scripts import script_source
    from conveyor.backends.redis.backend import RedisBackend
    from conveyor.job import new_job_id

    prefix = f"bench-lua-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend(f"{url}{'&' if '?' in url else '?'}prefix={prefix}")
    admin = redis.Redis.from_url(url)
    try:
        sha = admin.script_load(script_source("enqueue"))
        batches = [
            backend._enqueue_args(
                [
                    NewJob(
                        id=new_job_id(),
                        task="bench.noop",
                        queue="default",
                        tenant=None,
                        priority=5,
                        args_json="[]",
                        kwargs_json="{}",
                        max_attempts=3,
                        result_ttl=3600.0,
                    )
                    for _ in range(per_call)
                ]
            )
            for _ in range(calls + 1)
        ]
        admin.evalsha(sha, 1, backend.keys.route, *batches.pop())  # the queue exists
        admin.config_resetstat()
        pipe = admin.pipeline(transaction=False)
        for batch in batches:
            pipe.evalsha(sha, 1, backend.keys.route, *batch)
        pipe.execute()
        usec = float(admin.info("commandstats")["cmdstat_evalsha"]["usec"])
        return round(usec / (calls * per_call), 2)
    finally:
        for key in admin.scan_iter(match=f"*{prefix}*", count=10_000):
            admin.unlink(key)
        admin.close()


@contextmanager
def callgrind_redis() -> Iterator[tuple[str, Callable[[Callable[[], None]], int]]]:
    """A private redis-server under callgrind: (url, count), where ``count(run)`` is the
    number of instructions the server executed during ``run()`` -- a figure that other
    processes' load on the machine does not move, unlike CPU time."""
    exe, valgrind = shutil.which("redis-server"), shutil.which("valgrind")
    if exe is None or valgrind is None:
        raise SystemExit("--instructions needs redis-server and valgrind on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no"]
        cmd += [f"--callgrind-out-file={tmp}/cg.%p", exe, "--port", str(port)]
        cmd += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = str(proc.pid)

        def control(*args: str) -> None:
            subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)

        def count(run: Callable[[], None]) -> int:
            control("-z")
            control("-i", "on")
            run()
            control("-i", "off")
            before = set(Path(tmp).glob("cg.*"))
            control("-d")
            total = 0
            for dump in set(Path(tmp).glob("cg.*")) - before:
                for line in dump.read_text().splitlines():
                    if line.startswith(("totals:", "summary:")):
                        total = max(total, int(line.split()[1]))
                dump.unlink()
            return total

        try:
            client = redis.Redis(port=port)
            for _ in range(1500):  # valgrind starts slowly
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0", count
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def instructions(single: int, many: int, batch: int) -> dict[str, float]:
    with callgrind_redis() as (url, count):
        app = conveyor.App(f"{url}?prefix=bench-ir", result_ttl=3600)

        @app.task(name="bench.noop")
        def noop() -> None:
            return None

        try:
            noop.enqueue()
            one = count(lambda: [noop.enqueue() for _ in range(single)])

            def bulk() -> None:
                for offset in range(0, many, batch):
                    app.enqueue_many([noop.s() for _ in range(min(batch, many - offset))])

            per_batch = count(bulk)
        finally:
            app.close()
    return {"single": round(one / single), "many": round(per_batch / many)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a Redis server nobody else uses (default: start one)")
    parser.add_argument("--single", type=int, default=20_000, help="jobs enqueued one call each")
    parser.add_argument("--many", type=int, default=200_000, help="jobs for enqueue_many")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many call")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=2, help="also enqueue_many from this many threads"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--script-only",
        action="store_true",
        help="only Redis's time per job inside enqueue.lua (1 and --batch jobs per call)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="only the Redis server's instructions per job (callgrind; set --single/--many low)",
    )
    args = parser.parse_args()
    if args.instructions:
        for _ in range(args.repeats):
            ir = instructions(args.single, args.many, args.batch)
            print(
                f"Redis instructions per job: single call {ir['single']:,}, "
                f"enqueue_many ({args.batch}/call) {ir['many']:,}"
            )
        return
    if args.script_only:
        with private_redis() if args.url is None else _given(args.url) as url:
            for _ in range(args.repeats):
                one = script_cost(url, 5000, 1)
                many = script_cost(url, 50, args.batch)
                print(
                    f"enqueue.lua, Redis µs per job: 1 job/call {one}, "
                    f"{args.batch} jobs/call {many}"
                )
        return

    with private_redis() if args.url is None else _given(args.url) as url:
        runs = [
            run_once(url, args.single, args.many, args.batch, args.threads)
            for _ in range(args.repeats)
        ]
        server = redis.Redis.from_url(url).info("server")["redis_version"]
    result: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "conveyor": conveyor.__version__,
        "conveyor_src": str(Path(conveyor.__file__).parent),
        "redis_server": server,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    print(result["command"])
    print(
        f"conveyor {result['conveyor']} from {result['conveyor_src']}, redis {server}, "
        f"{result['machine']}, load average {result['load_average']}"
    )
    print(f"{'measure':<9} {'per_s':>10} {'client_cpu_us':>14} {'redis_cpu_us':>13}   (per job)")
    for name in runs[0]:
        for run in runs:
            r = run[name]
            print(f"{name:<9} {r['per_s']:>10,} {r['client_cpu_us']:>14} {r['redis_cpu_us']:>13}")
        if len(runs) > 1:
            median = statistics.median(run[name]["per_s"] for run in runs)
            print(f"{name:<9} {round(median):>10,}  (median)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
