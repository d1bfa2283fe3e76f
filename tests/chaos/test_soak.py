"""Soak: a bounded randomized run that enqueues all along while workers are killed
(SIGKILL), restarted gracefully (SIGTERM), frozen (SIGSTOP/SIGCONT), and, once, all
taken down together (the SQLite form of "restart the store": no process has the file
open, then everything comes back). Then it drains and the checker judges the history.

Length: ``CONVEYOR_SOAK_SECONDS`` if set, else 300 s under ``CONVEYOR_CHAOS=full``
(``make chaos``), else 10 s. ``CONVEYOR_SOAK_SEED`` replays a run. The report is printed
and kept under ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.chaos.conftest import FULL
from tests.chaos.harness import ROOT, Cluster, children, deadline
from tests.chaos.history import write_report

SECONDS = float(os.environ.get("CONVEYOR_SOAK_SECONDS", 300 if FULL else 10))
SEED = int(os.environ.get("CONVEYOR_SOAK_SEED", time.time_ns() % 1_000_000))
WORKERS = 3
WORKER_ARGS = ("-p", "1", "-c", "8", "--lease", "1.5", "--grace", "1")


class Producer(threading.Thread):
    """Enqueues small batches all along, as an application would, until stopped."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.cluster, self.rng = cluster, rng
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.count = 0

    def run(self) -> None:
        rng = self.rng
        try:
            while not self.stop.wait(rng.uniform(0.05, 0.2)):
                kind = rng.random()
                if kind < 0.6:
                    calls = [
                        [self.count + i, rng.uniform(0, 0.3)] for i in range(rng.randint(1, 8))
                    ]
                    self.count += len(self.cluster.enqueue_many("chaos.work", calls))
                elif kind < 0.85:
                    self.cluster.enqueue("chaos.flaky", self.count, 0.3, rng.uniform(0, 0.2))
                    self.count += 1
                else:
                    self.cluster.enqueue("chaos.work", self.count, 0.0, delay=rng.uniform(0.5, 3))
                    self.count += 1
        except BaseException as exc:  # the test reports it; a producer must not die quietly
            self.errors.append(exc)


@pytest.mark.timeout(SECONDS + 180)
def test_soak(cluster: Cluster) -> None:
    rng = random.Random(SEED)
    actions: Counter[str] = Counter()
    workers = [cluster.start_worker(*WORKER_ARGS) for _ in range(WORKERS)]
    producer = Producer(cluster, random.Random(SEED + 1))
    producer.start()
    store_restart_at = SECONDS * rng.uniform(0.3, 0.7)
    started = time.monotonic()
    try:
        with deadline(SECONDS) as expired:
            while not expired():
                time.sleep(rng.uniform(0.5, 2.0))
                i = rng.randrange(WORKERS)
                action = rng.choice(("kill", "kill", "term", "stop"))
                if not actions["store-restart"] and time.monotonic() - started > store_restart_at:
                    action = "store-restart"
                actions[action] += 1
                if action == "kill":
                    cluster.kill(workers[i])
                    workers[i] = cluster.start_worker(*WORKER_ARGS)
                elif action == "term":
                    workers[i].send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        workers[i].wait(timeout=5)
                    if workers[i].poll() is None:
                        cluster.kill(workers[i])
                    workers[i] = cluster.start_worker(*WORKER_ARGS)
                elif action == "stop":
                    _freeze(cluster, workers[i], rng.uniform(0.5, 3.0))
                else:
                    for w in workers:
                        cluster.kill(w)
                    time.sleep(1.0)
                    workers = [cluster.start_worker(*WORKER_ARGS) for _ in range(WORKERS)]
    finally:
        producer.stop.set()
        producer.join(timeout=30)
    assert not producer.errors, producer.errors

    # Drain with healthy workers: wait until every job is final (delayed ones included).
    for w in workers:
        cluster.kill(w)
    drain_started = time.monotonic()
    cluster.start_worker("-p", "2", "-c", "16", "--lease", "1.5")
    cluster.wait_for(
        lambda: (
            not any(s.scheduled or s.queued or s.running or s.retrying for s in cluster.app.stats())
        ),
        timeout=90,
        what="the store to drain",
    )
    drain = time.monotonic() - drain_started
    report = cluster.check()
    path = write_report(
        report,
        ROOT / "artifacts",
        f"soak-{cluster.engine}",
        {
            "engine": cluster.engine,
            "seconds": SECONDS,
            "seed": SEED,
            "actions": dict(actions),
            "enqueued": producer.count,
            "drain_seconds": round(drain, 1),
        },
    )
    print(
        f"\nsoak {cluster.engine} {SECONDS:.0f} s seed={SEED} actions={dict(actions)} "
        f"drain={drain:.1f} s\n{report.details()}\nreport kept in {path}"
    )
    assert report.ok, f"seed {SEED}: {report.details()}"
    assert report.acknowledged == producer.count > 0


def _freeze(cluster: Cluster, supervisor: subprocess.Popen[bytes], seconds: float) -> None:
    """SIGSTOP a worker process for ``seconds`` (often past its lease), then SIGCONT."""
    pids = children(supervisor.pid)
    cluster.worker_pids_seen.update(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
