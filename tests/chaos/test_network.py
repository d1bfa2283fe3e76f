"""A bad network between Conveyor and its store (Redis, PostgreSQL): added latency,
dropped connections, a black hole longer than the lease.

Producers and workers reach a private server only through the fault-injecting proxy
(``proxy.py``, fixture ``network``); the workload runs while the fault is on, then the
store is drained and the history checker judges the run: nothing lost, nothing
recorded twice, nothing unexpected, no overlapping leases, attempts within
``max_attempts``. An enqueue that raised (its connection was dropped under it) was not
acknowledged: its job may exist or not, and the check allows either. SQLite has no
network: these scenarios skip it (its stall is the write lock, ``test_store_stall``).

The black hole lasts two leases (3 s) in the short form and 30 s under
``CONVEYOR_CHAOS=full`` (``make chaos``).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import FULL, Network
from tests.chaos.harness import Cluster
from tests.chaos.history import Report
from tests.chaos.proxy import Proxy
from tests.chaos.servers import NETWORK_ENGINES, PrivateServer, Producer
from tests.chaos.test_store_stall import lease_known_at

LEASE = 2.0
WORKER_ARGS = ("-p", "1", "-c", "8", "--lease", str(LEASE), "--grace", "1")
#: The black-hole scenario's lease: shorter, so that the short form stays short.
BH_LEASE = 1.5
BLACK_HOLE = 30.0 if FULL else 2 * BH_LEASE
#: The store's clock against this machine's (loopback servers): scheduling noise only.
TOLERANCE = 0.25


def _idle(cluster: Cluster) -> bool:
    with contextlib.suppress(Exception):  # a connection may still be coming back
        stats = cluster.app.stats()
        return not any(s.scheduled or s.queued or s.running or s.retrying for s in stats)
    return False


def _judge(cluster: Cluster, producer: Producer, workers: list[subprocess.Popen[bytes]]) -> Report:
    cluster.wait_for(lambda: _idle(cluster), 90, "every job to end")
    assert all(w.poll() is None for w in workers), cluster.worker_logs()
    report = cluster.check()
    # Stored but never acknowledged is allowed only for an enqueue that raised.
    assert not producer.explain_unexpected(report.unexpected), report.details()
    report.unexpected = []
    assert report.ok, report.details()
    return report


@pytest.mark.timeout(120)
def test_added_latency_slows_jobs_down_but_they_all_complete(network: Network) -> None:
    cluster = network.cluster
    cluster.app.stats()  # create the schema before the workers race to
    # Each way, on every chunk: 0.2 s more per round trip, 30 % of a heartbeat interval.
    network.proxy.latency = 0.1
    workers = [cluster.start_worker(*WORKER_ARGS) for _ in range(2)]
    producer = Producer(cluster, "chaos.work", 0.3, interval=0.02)
    producer.start()
    try:
        time.sleep(20 if FULL else 2)
    finally:
        producer.finish()
    report = _judge(cluster, producer, workers)
    assert not producer.failed  # latency alone never fails a call
    assert report.final_states == {"succeeded": report.acknowledged} and report.acknowledged > 4
    print(f"\n{cluster.engine} +{network.proxy.latency} s each way: {report.summary()}")


@pytest.mark.timeout(150)
def test_dropped_connections_workers_reconnect_and_carry_on(network: Network) -> None:
    cluster = network.cluster
    cluster.app.stats()
    workers = [cluster.start_worker(*WORKER_ARGS) for _ in range(2)]
    for w in workers:
        cluster.worker_pids(w, 1)
    producer = Producer(cluster, "chaos.work", 0.5)
    producer.start()
    drops: list[tuple[float, int]] = []
    try:
        for _ in range(10 if FULL else 3):
            time.sleep(1.0)
            drops.append((time.time(), network.proxy.drop()))
        time.sleep(1.5)  # keeps working after the last drop
    finally:
        producer.finish()
    report = _judge(cluster, producer, workers)
    assert all(count > 0 for _, count in drops), drops  # each drop cut live connections
    last_drop = drops[-1][0]
    after = [e for e in cluster.events() if e["t"] > last_drop]
    assert any(e["ev"] == "claim" for e in after), "no claim after the last drop"
    assert any(e["ev"] == "finish" and e["accepted"] for e in after), "no outcome after it"
    print(
        f"\n{cluster.engine}: {sum(n for _, n in drops)} connections reset in {len(drops)} "
        f"drops; {report.summary()}; {len(producer.failed)} enqueue(s) refused"
    )


@pytest.mark.timeout(BLACK_HOLE + 150)
def test_a_black_hole_longer_than_the_lease(network: Network) -> None:
    """Every job running when the network goes silent is stopped by its worker before
    its lease ends (its outcome dropped, never sent); once the network is back, the
    reaper hands them out again and everything completes, each recorded once."""
    cluster = network.cluster
    cluster.app.stats()
    args = ("-p", "1", "-c", "4", "--lease", str(BH_LEASE), "--grace", "1")
    workers = [cluster.start_worker(*args) for _ in range(2)]
    # 3 s each for the attempt the black hole stops, 0.3 s for the next one.
    long_jobs = cluster.enqueue_many("chaos.steps", [[i, 30, 0.1, 3] for i in range(8)])

    def renewed() -> bool:
        events = cluster.events()
        return {e["id"] for e in events if e["ev"] == "renew"} >= set(long_jobs)

    cluster.wait_for(renewed, 30, "every long job to run and renew its lease")
    producer = Producer(cluster, "chaos.work", 0.2, interval=0.1)  # on through the hole
    producer.start()
    try:
        time.sleep(0.5)
        silent_from = time.time()
        with network.proxy.black_hole():
            time.sleep(BLACK_HOLE)
        time.sleep(1.0)
    finally:
        producer.finish()
    report = _judge(cluster, producer, workers)

    running = _assert_stopped_in_time(cluster.events(), silent_from, set(long_jobs))
    stored = {j.id: j for j in cluster.store()}
    assert all(stored[i].state == "succeeded" for i in long_jobs), report.summary()
    print(
        f"\n{cluster.engine}: {BLACK_HOLE:.0f} s black hole, {len(running)} jobs stopped in "
        f"time; {report.summary()}; proxy {network.proxy.stats}"
    )


@pytest.mark.timeout(150)
def test_connections_that_go_silent_for_good_are_given_up(
    engine: str, tmp_path: Path, private_servers: Callable[[str], PrivateServer]
) -> None:
    """The workers' connections go silent for good, with no reset ever coming (a
    middlebox forgot them; ``proxy.forget()``), while new connections work. A worker
    gives up on a call unanswered after a lease (5 s at least), on a new connection:
    its jobs are stopped before their leases end, then reaped and run again. (Before
    that bound, the worker hung on such a connection until TCP gave up, or forever.)"""
    if engine not in NETWORK_ENGINES:
        pytest.skip(f"{engine} has no network between workers and the store")
    server = private_servers(engine)
    proxy = Proxy(server.port).start()
    name = f"chaos_{secrets.token_hex(4)}"
    # The test's own reads go straight to the server; only the workers use the proxy.
    cluster = Cluster(tmp_path, server.store_url(name), engine)
    cluster.env["CONVEYOR_URL"] = server.store_url(name, proxy.url(server.base_url))
    try:
        cluster.app.stats()
        worker = cluster.start_worker("-p", "1", "-c", "4", "--lease", str(BH_LEASE))
        # 3 s each for the attempt whose connections go silent, 0.2 s for the next one.
        ids = cluster.enqueue_many("chaos.steps", [[i, 30, 0.1, 2] for i in range(4)])
        cluster.wait_for(
            lambda: {e["id"] for e in cluster.events() if e["ev"] == "renew"} >= set(ids),
            30,
            "every job to run and renew its lease",
        )
        silent_from = time.time()
        assert proxy.forget() > 0
        cluster.wait_for(
            lambda: all(s == "succeeded" for s in cluster.states().values()),
            60,
            "every job to succeed on new connections",
        )
        assert worker.poll() is None, cluster.worker_logs()
        running = _assert_stopped_in_time(cluster.events(), silent_from, set(ids))
        report = cluster.check()
        assert report.ok, report.details()
        assert "got no answer" in cluster.worker_logs()
        print(f"\n{engine}: {len(running)} jobs stopped in time; {report.summary()}")
    finally:
        cluster.cleanup()
        proxy.stop()


def _assert_stopped_in_time(
    events: list[dict[str, Any]], silent_from: float, ids: set[str]
) -> list[dict[str, Any]]:
    """Every attempt of ``ids`` running when the network went silent was stopped by its
    worker before its lease ended, sent no outcome, and the job's next lease began only
    after it had ended. Returns those attempts' claims."""
    running = _running_at(events, silent_from, ids)
    assert running, "no long job was running when the network went silent"
    for claim in running:
        ends = [
            e
            for e in events
            if e["ev"] in ("stop", "end", "fail")
            and e["id"] == claim["id"]
            and e["attempt"] == claim["attempt"]
        ]
        assert ends and ends[0]["ev"] == "stop", (claim, ends)
        deadline = lease_known_at(events, ends[0])
        assert ends[0]["t"] <= deadline, (
            f"{claim['id']} stopped {ends[0]['t'] - deadline:.2f} s late"
        )
        # The stopped attempt's outcome is dropped, not sent...
        assert not [e for e in events if e["ev"] == "finish" and e["token"] == claim["token"]]
        # ...so its lease ends by expiry: the next attempt's lease starts after it (the
        # checker cannot tell a dropped outcome from an unrecorded one; this can).
        held = max(
            [claim["expires"]]
            + [
                e["sent"] + e["lease"]
                for e in events
                if e.get("token") == claim["token"] and e["ev"] == "renew"
            ]
        )
        (following,) = [
            e
            for e in events
            if e["ev"] == "claim"
            and e["id"] == claim["id"]
            and e["attempt"] == claim["attempt"] + 1
        ]
        assert following["expires"] - following["lease"] + TOLERANCE >= held, (claim, following)
    return running


def _running_at(events: list[dict[str, Any]], at: float, ids: set[str]) -> list[dict[str, Any]]:
    """Claims of ``ids`` whose body had started and not ended at ``at``."""
    ended = {
        (e["id"], e["attempt"])
        for e in events
        if e["ev"] in ("stop", "end", "fail") and e["t"] < at
    }
    started = {(e["id"], e["attempt"]) for e in events if e["ev"] == "start" and e["t"] < at}
    return [
        e
        for e in events
        if e["ev"] == "claim" and e["id"] in ids and (e["id"], e["attempt"]) in started - ended
    ]
