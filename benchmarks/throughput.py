"""Conveyor throughput on one store: enqueue rates, drain rate, idle pickup latency.

    python benchmarks/throughput.py                    # SQLite in a temp dir, 10,000 jobs
    python benchmarks/throughput.py -n 50000 -c 10 --task bench.anoop --json out.json
    python benchmarks/throughput.py --url redis://127.0.0.1:6379/0 --enqueue-only

Processing rate is measured from the store's own timestamps (first start -> last finish)
of one `conveyor worker` process, so process start-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def conveyor_exe() -> str:
    return str(Path(sys.executable).parent / "conveyor")


def start_worker(url: str, concurrency: int, burst: bool) -> subprocess.Popen[bytes]:
    cmd = [conveyor_exe(), "worker", "bench_tasks:app", "-c", str(concurrency), "-p", "1"]
    if burst:
        cmd.append("--burst")
    env = {**os.environ, "CONVEYOR_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(cmd, cwd=HERE, env=env)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + sys) of process ``pid`` and its children, live or reaped
    (Linux /proc): a local database server's, e.g. a private PostgreSQL's postmaster,
    whose connection backends exit when the worker closes its connections."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid:  # utime + stime, and those of its children it reaped
            total += sum(int(f) for f in fields[11:15]) / tick
        elif int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    url: str,
    n: int,
    concurrency: int,
    task: str,
    single: int,
    latency: int,
    enqueue_only: bool,
    server_pid: int | None = None,
) -> dict[str, Any]:
    os.environ["CONVEYOR_URL"] = url
    import bench_tasks
    import conveyor

    app = bench_tasks.app
    t = app.tasks[task]

    # 0. the CPU cost of a worker that starts, finds nothing and stops (burst mode):
    # subtracted below, so the per-job CPU figures count the jobs only.
    start_cpu = children_cpu()
    if not enqueue_only:
        worker = start_worker(url, concurrency, burst=True)
        if worker.wait(timeout=600) != 0:
            raise SystemExit("worker failed")
    start_cpu = children_cpu() - start_cpu

    # 1. enqueue, one call per job (rate, and this process's CPU time per call)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(single):
        t.enqueue()
    single_rate = single / (time.perf_counter() - started)
    single_cpu = (time.process_time() - cpu) / single * 1e6

    # 2. enqueue_many, batches of 1,000
    started, cpu = time.perf_counter(), time.process_time()
    for offset in range(0, n, 1000):
        app.enqueue_many([t.s() for _ in range(min(1000, n - offset))])
    bulk_rate = n / (time.perf_counter() - started)
    bulk_cpu = (time.process_time() - cpu) / n * 1e6
    enqueued = {
        "engine": url.split(":", 1)[0],
        "enqueue_single_per_s": round(single_rate),
        "enqueue_single_cpu_us": round(single_cpu, 1),
        "enqueue_many_per_s": round(bulk_rate),
        "enqueue_many_cpu_us_per_job": round(bulk_cpu, 1),
        "conveyor": conveyor.__version__,
    }
    if enqueue_only:
        app.close()
        return enqueued

    # 3. drain everything with one worker process
    total = n + single
    worker_cpu = children_cpu()
    server_cpu = tree_cpu(server_pid) if server_pid else 0.0
    worker = start_worker(url, concurrency, burst=True)
    if worker.wait(timeout=600) != 0:
        raise SystemExit("worker failed")
    worker_cpu = children_cpu() - worker_cpu - start_cpu
    server_cpu = tree_cpu(server_pid) - server_cpu if server_pid else 0.0
    done = app.jobs(state="succeeded", limit=total + 10)
    if len(done) != total:
        raise SystemExit(f"expected {total} succeeded jobs, found {len(done)}")
    first = min(j.started_at for j in done if j.started_at)
    last = max(j.finished_at for j in done if j.finished_at)
    process_rate = total / (last - first).total_seconds()

    # 4. idle pickup latency: a waiting worker, one job at a time
    worker = start_worker(url, concurrency, burst=False)
    try:
        time.sleep(1.5)  # let it start and go idle
        waits = []
        for _ in range(latency):
            h = t.enqueue()
            job = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                job = h.info()
                if job.started_at is not None:
                    break
                time.sleep(0.001)
            assert job is not None and job.started_at is not None, "job was not picked up"
            waits.append((job.started_at - job.enqueued_at).total_seconds() * 1000)
            time.sleep(0.02)  # let the worker go idle again
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    app.close()
    return {
        **enqueued,
        "jobs": total,
        "concurrency": concurrency,
        "task": task,
        "processed_per_s": round(process_rate),
        "worker_cpu_us_per_job": round(worker_cpu / total * 1e6, 1),
        **({"server_cpu_us_per_job": round(server_cpu / total * 1e6, 1)} if server_pid else {}),
        "pickup_p50_ms": round(statistics.median(waits), 2),
        "pickup_p99_ms": round(percentile(waits, 0.99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="store URL (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("-n", "--jobs", type=int, default=10_000, help="jobs for enqueue_many")
    parser.add_argument("--single", type=int, default=2_000, help="jobs enqueued one call each")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--task", default="bench.noop", choices=["bench.noop", "bench.anoop"])
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--server-pid",
        type=int,
        help="pid of a LOCAL database server (e.g. a private PostgreSQL's postmaster): "
        "also report its CPU time per processed job (Linux only)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--enqueue-only",
        action="store_true",
        help="measure the two enqueue rates, then stop (the jobs stay in the store)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/bench.db"
        result = measure(
            url,
            args.jobs,
            args.concurrency,
            args.task,
            args.single,
            args.latency_samples,
            args.enqueue_only,
            args.server_pid,
        )
    result["machine"] = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    result["load_average"] = round(os.getloadavg()[0], 2)
    result["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
