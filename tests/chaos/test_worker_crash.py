"""Workers die by SIGKILL while jobs are in flight; nothing is lost, nothing recorded twice."""

from __future__ import annotations

import random
import time

import pytest

from tests.chaos.conftest import FULL
from tests.chaos.harness import Cluster, deadline


@pytest.mark.timeout(150)
def test_sigkill_with_100_jobs_in_flight_then_a_new_worker_finishes_everything(
    cluster: Cluster,
) -> None:
    ids = cluster.enqueue_many("chaos.work", [[i, 2.0] for i in range(140)])
    worker = cluster.start_worker("-p", "2", "-c", "50", "--lease", "2")
    cluster.worker_pids(worker, 2)

    def in_flight() -> int:
        # Attempts whose body started and had not ended: the jobs a kill interrupts.
        events = cluster.events()
        started = {(e["id"], e["attempt"]) for e in events if e["ev"] == "start"}
        ended = {(e["id"], e["attempt"]) for e in events if e["ev"] == "end"}
        return len(started - ended)

    cluster.wait_for(lambda: in_flight() >= 100, timeout=30, what="100 jobs in flight")
    cluster.kill(worker)
    orphaned = {j.id for j in cluster.store() if j.state == "running"}
    assert len(orphaned) >= 100, len(orphaned)

    started = time.monotonic()
    cluster.drain("-p", "2", "-c", "50", "--lease", "2", timeout=90)
    recovery = time.monotonic() - started

    report = cluster.check()
    assert report.ok, report.details()
    stored = {j.id: j for j in cluster.store()}
    assert {j.state for j in stored.values()} == {"succeeded"}, report.summary()
    assert set(stored) == set(ids)
    for job_id in orphaned:
        job = stored[job_id]
        # The killed attempt counted, and the reaper said why it ended.
        assert job.attempt == 2 and job.error_types == ("WorkerLost",), job
    # Lease 2 s, plus up to 5 s for the dead worker's maintenance lock to lapse.
    assert recovery < 45, recovery
    print(f"\n{report.summary()}; {len(orphaned)} orphans recovered in {recovery:.1f} s")


@pytest.mark.timeout(200)
def test_retries_while_workers_crash_never_exceed_max_attempts_and_lose_nothing(
    cluster: Cluster,
) -> None:
    rng = random.Random(7)
    count = 120 if FULL else 50
    ids = cluster.enqueue_many("chaos.flaky", [[i, 0.3, 0.2] for i in range(count)])
    ids += cluster.enqueue_many("chaos.suicide", [[i, 0.2] for i in range(count // 3)])
    args = ("-p", "1", "-c", "6", "--lease", "1.5", "--grace", "1")
    workers = [cluster.start_worker(*args) for _ in range(2)]
    kills = 0
    with deadline(25 if FULL else 4) as expired:
        while not expired():
            time.sleep(rng.uniform(0.8, 1.8))
            victim = rng.randrange(len(workers))
            cluster.kill(workers[victim])
            kills += 1
            workers[victim] = cluster.start_worker(*args)
    for w in workers:
        cluster.kill(w)
    cluster.drain("-p", "2", "-c", "8", "--lease", "1.5", timeout=90)

    report = cluster.check()
    assert report.ok, report.details()
    stored = {j.id: j for j in cluster.store()}
    assert set(stored) == set(ids)
    for job in stored.values():
        assert job.attempt <= job.max_attempts, job
        assert len(job.error_types) <= job.max_attempts, job
    # Attempt numbers as the workers were given them (a graceful release gives an
    # attempt back, so the number of claims may be higher; numbers never are).
    attempts = [e["attempt"] for e in cluster.events() if e["ev"] == "claim"]
    assert max(attempts) <= 3 and report.max_attempt_seen <= 3
    print(f"\n{report.summary()}; {kills} worker kills")
