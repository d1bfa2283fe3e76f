"""The store stalls for longer than the lease: SQLite because another process holds the
write lock, Redis and PostgreSQL because the network to them turns into a black hole
(the proxy accepts and holds connections and forwards nothing). The worker cannot
renew, so it must stop its job itself before the lease it was last granted runs out
(``docs/guarantees.md``), instead of working on while the reaper may hand the job to
someone else. When the stall ends, the job runs again and succeeds."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Cluster

LEASE = 1.5

Stall = Callable[[], AbstractContextManager[None]]


@pytest.fixture
def stalling(engine: str, request: pytest.FixtureRequest) -> tuple[Cluster, Stall]:
    """A cluster, and a context manager during which its store does not answer."""
    if engine == "sqlite":
        cluster: Cluster = request.getfixturevalue("cluster")
        db = Path(cluster.url.removeprefix("sqlite:///"))

        @contextlib.contextmanager
        def write_lock() -> Iterator[None]:
            conn = sqlite3.connect(db, timeout=5, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")  # every write of the worker now waits
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()

        return cluster, write_lock
    network = request.getfixturevalue("network")
    return network.cluster, network.proxy.black_hole


@pytest.mark.timeout(90)
def test_a_worker_that_cannot_renew_stops_its_job_before_the_lease_ends(
    stalling: tuple[Cluster, Stall],
) -> None:
    cluster, stall = stalling
    cluster.app.stats()  # creates the schema before the worker does
    worker = cluster.start_worker("-p", "1", "-c", "2", "--lease", str(LEASE))
    cluster.worker_pids(worker, 1)
    # 2.5 s of work: it outlasts the stop (at most 0.9 lease after the first renewal).
    # The next attempt, once the stall is over, takes 0.2 s.
    job_id = cluster.enqueue("chaos.steps", 1, 25, 0.1, 2)
    cluster.wait_for(
        lambda: any(e["ev"] == "renew" and e["id"] == job_id for e in cluster.events()),
        20,
        "the first renewal",
    )
    with stall():
        time.sleep(2 * LEASE)
    cluster.wait_for(
        lambda: cluster.states().get(job_id) == "succeeded", 30, "the job to finish after all"
    )
    events = [e for e in cluster.events() if e["id"] == job_id]
    stops = [e for e in events if e["ev"] in ("stop", "end") and e["attempt"] == 1]
    assert stops and stops[0]["ev"] == "stop", stops
    deadline = lease_known_at(events, stops[0])
    assert stops[0]["t"] <= deadline, f"stopped {stops[0]['t'] - deadline:.2f} s after its lease"
    report = cluster.check()
    assert report.ok, report.details()
    print(f"\nstopped {deadline - stops[0]['t']:.2f} s before the lease ended; {report.summary()}")


def lease_known_at(events: list[dict[str, Any]], stop: dict[str, Any]) -> float:
    """A lower bound of the expiry of the lease that ``stop``'s attempt held when it
    stopped: its claim's expiry, or the send time plus the lease of the last renewal
    whose answer had come back by then (the store applied it before answering, and
    after the worker sent it)."""
    (claim,) = [
        e
        for e in events
        if e["ev"] == "claim" and e["id"] == stop["id"] and e["attempt"] == stop["attempt"]
    ]
    renewals = [
        e["sent"] + e["lease"]
        for e in events
        if e["ev"] == "renew" and e["token"] == claim["token"] and e["acked"] <= stop["t"]
    ]
    return float(max([claim["expires"], *renewals]))
