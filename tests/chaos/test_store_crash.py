"""kill -9 of the store's server under load, then a restart (Redis, PostgreSQL).

A private server on a free loopback port: ``redis-server --appendonly yes --appendfsync
always`` (every write on disk before the reply) or a private PostgreSQL cluster. Workers
run and a producer enqueues all along while the server is killed with SIGKILL and started
again from its files. Nothing acknowledged may be lost, nothing recorded twice, and no
two leases on one job may overlap. An enqueue that raised was not acknowledged: such a
job may or may not exist (the caller cannot know), so the check allows it either way.
SQLite has no server: ``test_soak`` takes every process down at once instead.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.chaos.conftest import CHAOS_ENGINES, FULL
from tests.chaos.harness import Cluster
from tests.chaos.servers import NETWORK_ENGINES, PrivateServer, Producer, private_server

SERVER_ENGINES = [e for e in CHAOS_ENGINES if e in NETWORK_ENGINES]
WORKER_ARGS = ("-p", "1", "-c", "8", "--lease", "2", "--grace", "1")
#: Every write on disk before the reply: a kill -9 then loses nothing acknowledged.
DURABLE_REDIS = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.mark.parametrize("engine", SERVER_ENGINES)
@pytest.mark.timeout(180)
def test_kill9_of_the_store_server_under_load_loses_nothing(engine: str, tmp_path: Path) -> None:
    with private_server(engine, tmp_path, DURABLE_REDIS) as server:
        cluster = Cluster(tmp_path, server.store_url("chaos"), engine)
        try:
            _scenario(cluster, server)
        finally:
            cluster.cleanup()


def _scenario(cluster: Cluster, server: PrivateServer) -> None:
    cluster.app.stats()  # create the schema before the workers race to
    workers = [cluster.start_worker(*WORKER_ARGS) for _ in range(2)]
    producer = Producer(cluster, "chaos.work", 0.8)  # ~16 in flight at a kill
    producer.start()
    try:
        for _ in range(2 if FULL else 1):
            time.sleep(2.5)
            server.kill()
            time.sleep(2.5)  # longer than the lease: the workers cannot renew
            server.start()
        time.sleep(2.5)
    finally:
        producer.finish()
    assert all(w.poll() is None for w in workers), cluster.worker_logs()

    def drained() -> bool:
        with contextlib.suppress(Exception):  # connections may still be coming back
            stats = cluster.app.stats()
            return not any(s.scheduled or s.queued or s.running or s.retrying for s in stats)
        return False

    cluster.wait_for(drained, 90, "the store to drain after the restart")
    report = cluster.check()
    # Stored but never acknowledged is allowed only for an enqueue that raised.
    assert not producer.explain_unexpected(report.unexpected), report.details()
    report.unexpected = []
    assert report.ok, report.details()
    assert report.acknowledged > 20  # a loaded machine enqueues slowly: a sanity bound
    print(
        f"\n{cluster.engine}: {report.summary()}; {len(producer.failed)} enqueue(s) refused "
        "while the server was down"
    )
