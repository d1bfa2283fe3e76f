"""Delayed jobs whose delay outlasts the lease, with workers restarting during the wait.

A delayed job waits in ``scheduled`` with no lease, so neither a kill -9 nor a graceful
restart of the workers during the wait may run it early, burn an attempt, or run it
twice: each runs exactly once, at or after its due time.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from tests.chaos.harness import Cluster

LEASE = 1.0
COUNT = 30


@pytest.mark.timeout(90)
def test_delayed_jobs_run_exactly_once_never_early_across_worker_restarts(
    cluster: Cluster,
) -> None:
    rng = random.Random(3)
    args = ("-p", "1", "-c", "4", "--lease", str(LEASE), "--grace", "2")
    worker = cluster.start_worker(*args)
    cluster.worker_pids(worker, 1)
    due: dict[str, float] = {}
    for i in range(COUNT):
        delay = rng.uniform(2.5, 4.5)  # > 2 leases
        before = time.time()  # the delay counts from no earlier than this
        job_id = cluster.enqueue("chaos.work", i, delay=delay)
        due[job_id] = before + delay
    # Restart during the wait: kill -9, then a graceful restart, before anything is due.
    time.sleep(0.8)
    cluster.kill(worker)
    worker = cluster.start_worker(*args)
    cluster.worker_pids(worker, 1)
    time.sleep(0.6)
    assert cluster.stop_gracefully(worker) == 0
    # On a loaded machine the restarts may outlast the shortest delay: a start is only
    # wrong if it came before its job was due (compared to the due time, not the clock).
    early = [e for e in cluster.events() if e["ev"] in ("claim", "start") and e["t"] < due[e["id"]]]
    assert not early, f"ran early: {early}"
    worker = cluster.start_worker(*args)

    cluster.wait_for(
        lambda: set(cluster.states().values()) == {"succeeded"}, 30, "every delayed job to run"
    )
    events = cluster.events()
    starts = Counter(e["id"] for e in events if e["ev"] == "start")
    assert starts == Counter(dict.fromkeys(due, 1)), starts  # exactly once each
    for e in events:
        if e["ev"] in ("claim", "start"):
            assert e["t"] >= due[e["id"]], f"job {e['id']} ran {due[e['id']] - e['t']:.3f} s early"
    lateness = [e["t"] - due[e["id"]] for e in events if e["ev"] == "start"]
    report = cluster.check()
    assert report.ok, report.details()
    assert {j.attempt for j in cluster.store()} == {1}  # no attempt burned while waiting
    print(f"\n{report.summary()}; latest start {max(lateness):.2f} s after due")
