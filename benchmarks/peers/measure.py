"""The four measurements, each on an emptied peer, each with a bounded wait.

Method (the same for every peer):
- processing: the jobs are enqueued *before* the worker starts, then the worker drains
  them; the rate is jobs / (last job's start - first job's start), taken from the times
  the jobs themselves recorded, so worker start-up and enqueue time are not counted.
- idle pickup: one job at a time into a worker that has been idle for 50 ms; the
  latency is the job's recorded start minus the time just before the enqueue call.
- fairness: tenant A's 2,000 jobs, then tenant B's 20, enqueued before the worker starts;
  the result is the position (1-based, in start order) of B's last job.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from base import Peer
from common import count_records, read_records
from workers import running_workers, wait_for_records

_counter = itertools.count(1)


@dataclass(frozen=True)
class Settings:
    jobs: int
    concurrency: int
    latency_samples: int
    fairness_a: int
    fairness_b: int
    timeout: float  # per phase: how long the jobs of one phase may take to run
    drain_budget: float  # a drain slower than this is cut short and rated on what ran
    workdir: Path
    enqueue_only: bool = False  # measure the enqueue rates only (--enqueue-only)


def _record_path(settings: Settings, peer: Peer, phase: str) -> Path:
    # a new file per phase: the count of its lines is the count of finished jobs
    return settings.workdir / f"{peer.name}-{phase}-{next(_counter)}.rec"


def _workers(
    peer: Peer, settings: Settings, processes: int, record: Path
) -> AbstractContextManager[list[subprocess.Popen[bytes]]]:
    env = {**peer.worker_env(), "PEERBENCH_RECORD": str(record)}
    log = settings.workdir / f"{peer.name}.log"
    return running_workers(peer.worker_commands(processes, settings.concurrency), env, log)


def enqueue_and_process(
    peer: Peer, settings: Settings, processes: int, bulk: bool
) -> tuple[float, float, int]:
    """(enqueue jobs/s, processed jobs/s, jobs rated) for ``settings.jobs`` no-op jobs.

    A peer that cannot drain them within ``drain_budget`` seconds is rated on the jobs it
    finished by then (at least 100): its rate is steady long before, and a fork-per-job
    worker would otherwise hold the whole run up for many minutes.
    """
    peer.reset()
    tags = ["n"] * settings.jobs
    started = time.perf_counter()
    if bulk:
        peer.enqueue_bulk(tags)
    else:
        peer.enqueue_each(tags)
    enqueue_rate = settings.jobs / (time.perf_counter() - started)

    record = _record_path(settings, peer, f"p{processes}")
    with _workers(peer, settings, processes, record) as procs:
        wait_for_records(record, 1, settings.timeout, procs)  # start-up is not rated
        try:
            wait_for_records(record, settings.jobs, settings.drain_budget, procs)
        except TimeoutError:
            if count_records(record) < 100:
                raise
    stamps = [stamp for _, stamp in read_records(record)]
    span = max(stamps) - min(stamps)
    return enqueue_rate, (len(stamps) - 1) / span if span > 0 else float("inf"), len(stamps)


def enqueue_rate(peer: Peer, settings: Settings, *, bulk: bool) -> float:
    """Jobs/s of enqueueing ``settings.jobs`` no-op jobs into an emptied store, no worker."""
    peer.reset()
    tags = ["n"] * settings.jobs
    started = time.perf_counter()
    if bulk:
        peer.enqueue_bulk(tags)
    else:
        peer.enqueue_each(tags)
    return settings.jobs / (time.perf_counter() - started)


def pickup_latency(peer: Peer, settings: Settings) -> list[float]:
    """Milliseconds from the enqueue call to the job's start, one job at a time."""
    peer.reset()
    record = _record_path(settings, peer, "latency")
    waits: list[float] = []
    with _workers(peer, settings, 1, record) as procs:
        # the first job proves the worker is up (start-up can take seconds)
        peer.enqueue_each(["warmup"])
        wait_for_records(record, 1, settings.timeout, procs)
        time.sleep(0.5)
        for i in range(settings.latency_samples):
            sent = time.time()
            peer.enqueue_each([f"L{i}"])
            wait_for_records(record, i + 2, 30.0, procs, poll=0.0005)
            tag, started = read_records(record)[-1]
            assert tag == f"L{i}", f"unexpected job {tag!r}"
            waits.append((started - sent) * 1000)
            time.sleep(0.05)  # let the worker go back to waiting
    return waits


def fairness(peer: Peer, settings: Settings) -> int:
    """Start position of tenant B's last job (A floods first; FIFO gives A + B)."""
    peer.reset()
    peer.enqueue_each(["A"] * settings.fairness_a, tenant="A")
    peer.enqueue_each(["B"] * settings.fairness_b, tenant="B")
    record = _record_path(settings, peer, "fairness")
    total = settings.fairness_a + settings.fairness_b
    with _workers(peer, settings, 1, record) as procs:
        wait_for_records(record, total, settings.timeout, procs)
    tags = [tag for tag, _ in read_records(record)]
    return max(i + 1 for i, tag in enumerate(tags) if tag == "B")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)
