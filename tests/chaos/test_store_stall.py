"""The store stalls (SQLite: another process holds the write lock) for longer than the
lease. The worker cannot renew, so it must stop its job itself before the lease it was
last granted runs out (``docs/guarantees.md``), instead of working on while the reaper
may hand the job to someone else."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.chaos.harness import Cluster

LEASE = 1.5


@pytest.mark.timeout(90)
def test_a_worker_that_cannot_renew_stops_its_job_before_the_lease_ends(
    cluster: Cluster,
) -> None:
    if cluster.engine != "sqlite":
        pytest.skip("the stall is SQLite's write lock; other engines: the TCP proxy (not done)")
    worker = cluster.start_worker("-p", "1", "-c", "2", "--lease", str(LEASE))
    cluster.worker_pids(worker, 1)
    job_id = cluster.enqueue("chaos.steps", 1, 40)  # 4 s of work
    cluster.wait_for(
        lambda: any(e["ev"] == "renew" and e["id"] == job_id for e in cluster.events()),
        20,
        "the first renewal",
    )
    db = Path(cluster.url.removeprefix("sqlite:///"))
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")  # every write of the worker now waits
        stalled_at = time.time()
        time.sleep(3 * LEASE)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    cluster.wait_for(
        lambda: cluster.states().get(job_id) == "succeeded", 30, "the job to finish after all"
    )
    events = [e for e in cluster.events() if e["id"] == job_id]
    granted = max(
        [e["expires"] for e in events if e["ev"] == "claim" and e["attempt"] == 1]
        + [e["acked"] + e["lease"] for e in events if e["ev"] == "renew" and e["sent"] < stalled_at]
    )
    stops = [e for e in events if e["ev"] in ("stop", "end") and e["attempt"] == 1]
    assert stops and stops[0]["ev"] == "stop", stops
    assert stops[0]["t"] <= granted, f"stopped {stops[0]['t'] - granted:.2f} s after its lease"
    report = cluster.check()
    assert report.ok, report.details()
    print(f"\nstopped {granted - stops[0]['t']:.2f} s before the lease ended; {report.summary()}")
