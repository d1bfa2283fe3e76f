"""Redis Cluster (``?cluster=1``): a store lives in one slot, on the node that owns it;
scripts, ``TIME``, wake-ups and the safety checks go to the right nodes; workers drain
jobs; several stores spread over the nodes. (The contract suite also runs on this
cluster: ``tests/contract`` engine ``redis-cluster``.)"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from redis.asyncio.cluster import RedisCluster

import conveyor
import redis
from conveyor import JobState
from conveyor.backends import create_backend
from conveyor.backends.base import NewJob
from conveyor.backends.redis import RedisBackend, UnsafeServerError, _safety
from conveyor.backends.redis._client import make_client
from conveyor.backends.redis._url import Keys, RedisOptions
from conveyor.job import new_job_id
from tests.redis.cluster import (
    PrivateCluster,
    cluster_node_port,
    cluster_session,
    require_cluster_tools,
)

T = TypeVar("T")


@pytest.fixture(scope="session")  # shared with tests/contract's redis-cluster engine
def cluster() -> Iterator[PrivateCluster]:
    with cluster_session() as started:
        yield started


def node_clients(cluster: PrivateCluster) -> dict[int, redis.Redis]:
    return {n.port: redis.Redis(port=n.port, decode_responses=True) for n in cluster.nodes}


def owner_port(cluster: PrivateCluster, prefix: str, *, via: int | None = None) -> int:
    """The port of the node that owns the slot of ``prefix``'s store (asking ``via``)."""
    admin = redis.RedisCluster(host="127.0.0.1", port=via or cluster.nodes[0].port)
    try:
        return int(admin.get_node_from_key(Keys(prefix).route).port)
    finally:
        admin.close()


def prefixes_on_distinct_nodes(cluster: PrivateCluster, n: int) -> list[str]:
    seen: dict[int, str] = {}
    for i in itertools.count():
        prefix = f"spread-{new_job_id()[-8:]}-{i}"
        seen.setdefault(owner_port(cluster, prefix), prefix)
        if len(seen) == n:
            return list(seen.values())
    raise AssertionError("unreachable")


def job(queue: str = "default", **options: object) -> NewJob:
    return NewJob(
        id=new_job_id(),
        task="t",
        queue=queue,
        tenant=None,
        priority=5,
        args_json="[]",
        kwargs_json="{}",
        max_attempts=3,
        **options,  # type: ignore[arg-type]
    )


def test_cluster_urls() -> None:
    options = RedisOptions.parse("redis://a:7000?cluster=1&node=b:7001&node=[::1]:7002&prefix=x")
    assert (options.cluster, options.prefix) == (True, "x")
    assert options.nodes == (("b", 7001), ("::1", 7002))
    assert options.where == "the cluster at a:7000"
    client = make_client(options)
    assert isinstance(client, RedisCluster)
    assert {(n.host, n.port) for n in client.startup_nodes} == {
        ("a", 7000),
        ("b", 7001),
        ("::1", 7002),
    }
    assert not RedisOptions.parse("redis://a/0?cluster=0").cluster
    for bad, message in [
        ("redis://a:7000/3?cluster=1", "only has database 0"),
        ("redis://a:7000/0?node=b:1", "needs cluster=1"),
        ("redis://a:7000/0?cluster=1&node=b", "write node=host:port"),
        ("redis://a:7000/0?cluster=maybe", "cluster=1 or cluster=0"),
        ("redis://a:7000/0?cluster=1&read_from_replicas=0", "every command goes to the primary"),
        ("redis://a:7000/0?cluster=1&load_balancing_strategy=1", "replicas may not have"),
    ]:
        with pytest.raises(ValueError, match=message):
            RedisOptions.parse(bad)


async def test_a_store_lives_on_the_node_that_owns_its_slot(cluster: PrivateCluster) -> None:
    url = cluster.store_url()
    prefix = RedisOptions.parse(url).prefix
    backend = create_backend(url)
    await backend.open()
    try:
        assert isinstance(backend, RedisBackend)
        assert isinstance(backend._client, RedisCluster)
        await backend.set_tenant("q1", "t1", weight=2.0, max_running=3)
        await backend.enqueue([job("q1", key="k1"), job("q2", delay=60.0), job("q3")])
        claimed = await backend.claim(["q1", "q3"], 5, worker="w", lease=30.0)
        assert len(claimed) == 2
        assert await backend.try_lock("reaper", "me", 30.0)
    finally:
        await backend.close()
    owner = owner_port(cluster, prefix)
    for port, client in node_clients(cluster).items():
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        client.close()
        if port == owner:
            assert len(keys) > 10, keys  # jobs, lanes, indexes, the lock...
        else:
            assert keys == []


def test_stores_spread_over_the_nodes_and_workers_drain_them(cluster: PrivateCluster) -> None:
    prefixes = prefixes_on_distinct_nodes(cluster, len(cluster.nodes))
    assert len({owner_port(cluster, p) for p in prefixes}) == len(cluster.nodes)
    apps = [conveyor.App(f"{cluster.url}&prefix={p}") for p in prefixes]
    try:
        handles = []
        for n, app in enumerate(apps):

            @app.task(name="square")
            def square(x: int) -> int:
                return x * x

            @app.task(name="capped", concurrency=1)
            def capped(x: int) -> int:
                return -x

            handles.append(
                [square.enqueue(i + 100 * n) for i in range(40)]
                + [capped.enqueue(i) for i in range(5)]
            )
        workers = [conveyor.Worker(app, concurrency=4, handle_signals=False) for app in apps]
        threads = [threading.Thread(target=w.run, kwargs={"burst": True}) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
        for n, app_handles in enumerate(handles):
            squares = [(i + 100 * n) ** 2 for i in range(40)]
            assert [h.wait(timeout=10) for h in app_handles] == [*squares, 0, -1, -2, -3, -4]
        for app in apps:
            assert {j.state for j in app.jobs(limit=1000)} == {JobState.SUCCEEDED}
    finally:
        for app in apps:
            app.close()


def _command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_scripts_and_time_run_on_the_owner(cluster: PrivateCluster) -> None:
    url = cluster.store_url()
    owner = owner_port(cluster, RedisOptions.parse(url).prefix)
    clients = node_clients(cluster)
    backend = create_backend(url)
    await backend.open()
    try:
        await backend.enqueue([job()])
        before = {port: _command_calls(c, "time") for port, c in clients.items()}
        await backend.now()
        after = {port: _command_calls(c, "time") for port, c in clients.items()}
        assert {p: after[p] - before[p] for p in clients} == {p: int(p == owner) for p in clients}
        # The owner forgets every script (a restart, SCRIPT FLUSH): loaded again on NOSCRIPT.
        clients[owner].script_flush()
        await backend.enqueue([job()])
        assert len(await backend.claim(["default"], 5, worker="w", lease=30.0)) == 2
    finally:
        await backend.close()
        for c in clients.values():
            c.close()


async def test_wake_ups_are_pushed_on_a_cluster(cluster: PrivateCluster) -> None:
    url = cluster.store_url()
    keys = Keys(RedisOptions.parse(url).prefix)
    owner = redis.Redis(port=owner_port(cluster, RedisOptions.parse(url).prefix))
    waiter, producer = create_backend(url), create_backend(url)
    await waiter.open()
    await producer.open()
    try:
        assert await waiter.claim(["default"], 5, worker="w", lease=30.0) == []
        # The listener subscribed on the node that owns the store.
        assert owner.pubsub_numsub(keys.wake("default")) == [(keys.wake("default").encode(), 1)]
        for _ in range(3):
            waiting = asyncio.create_task(waiter.wait_for_work(["default"], 60.0))
            await asyncio.sleep(0.01)
            await producer.enqueue([job()])
            await asyncio.wait_for(waiting, 10.0)  # far sooner than the 60 s poll
            assert len(await waiter.claim(["default"], 5, worker="w", lease=30.0)) == 1
    finally:
        owner.close()
        await waiter.close()
        await producer.close()


async def test_every_node_is_checked_for_eviction(
    cluster: PrivateCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_safety, "_warned", set())  # warnings are once per node and process
    url = cluster.store_url()
    # A node that does NOT own the store: a failover or resharding could move it there.
    other = next(
        n.port
        for n in cluster.nodes
        if n.port != owner_port(cluster, RedisOptions.parse(url).prefix)
    )
    admin = redis.Redis(port=other)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(UnsafeServerError, match=f"node 127.0.0.1:{other} .*allkeys-lru"):
            await create_backend(url).open()
        allowed = create_backend(url + "&allow_eviction=1")
        with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
            await allowed.open()
        await allowed.close()
        assert f"127.0.0.1:{other}" in caplog.text
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_a_worker_survives_dropped_cluster_connections(cluster: PrivateCluster) -> None:
    app = conveyor.App(cluster.store_url())

    @app.task(name="noop")
    def noop(n: int) -> int:
        return n

    worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    clients = node_clients(cluster)
    try:
        assert noop.enqueue(1).wait(timeout=20) == 1
        # Cut every client connection on every node, the idle worker's pub/sub one too.
        for client in clients.values():
            for kind in ("pubsub", "normal"):
                client.client_kill_filter(_type=kind, skipme=True)
        later = []
        for i in range(10):
            for _ in range(100):  # the app's own connection may meet the cut first
                try:
                    later.append(noop.enqueue(i))
                    break
                except redis.exceptions.ConnectionError:
                    threading.Event().wait(0.05)
        assert [h.wait(timeout=20) for h in later] == list(range(10))
        assert thread.is_alive()
    finally:
        for client in clients.values():
            client.close()
        worker.stop()
        thread.join(20)
        app.close()
    assert not thread.is_alive()


async def test_another_node_is_tried_when_the_first_is_down(cluster: PrivateCluster) -> None:
    dead = cluster_node_port()  # nothing listens there
    live = cluster.nodes[1].port
    url = f"redis://127.0.0.1:{dead}/0?cluster=1&node=127.0.0.1:{live}&prefix=t-{new_job_id()}"
    backend = create_backend(url)
    await backend.open()
    try:
        assert await backend.enqueue([j := job()]) == [j.id]
    finally:
        await backend.close()


def _retrying(fn: Callable[[], T], seconds: float = 30.0) -> T:
    """The test's own calls meet the failover too: retry them, bounded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.RedisClusterException,
        ):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_worker_carries_on_after_a_failover(tmp_path: Path) -> None:
    require_cluster_tools()
    cluster = PrivateCluster(tmp_path, node_timeout_ms=500)
    try:
        cluster.start()
        prefix = next(
            p
            for p in (f"failover-{i}" for i in itertools.count())
            if owner_port(cluster, p) == cluster.nodes[0].port
        )
        replica = cluster.add_replica(cluster.nodes[0])
        app = conveyor.App(f"{cluster.url}&node=127.0.0.1:{replica.port}&prefix={prefix}")

        @app.task(name="noop")
        def noop(n: int) -> int:
            return n

        worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            before = [noop.enqueue(i) for i in range(10)]
            assert [h.wait(timeout=20) for h in before] == list(range(10))
            waiting = noop.options(delay=1.0).enqueue(99)
            # Replication is asynchronous: make sure the replica has that job. (WAIT counts
            # this connection's writes, which the replica gets in order after the job.)
            primary = redis.Redis(port=cluster.nodes[0].port)
            primary.set(f"{{{prefix}}}:synced", 1)
            assert primary.wait(1, 10_000) == 1
            primary.close()
            cluster.nodes[0].kill()  # the store's primary: its replica takes over
            after = _retrying(lambda: [noop.enqueue(i) for i in range(10)])
            assert _retrying(lambda: [h.wait(timeout=30) for h in after]) == list(range(10))
            assert _retrying(lambda: waiting.wait(timeout=30)) == 99
            assert owner_port(cluster, prefix, via=replica.port) == replica.port
            assert thread.is_alive()
        finally:
            worker.stop()
            thread.join(20)
            app.close()
        assert not thread.is_alive()
    finally:
        cluster.stop()


def test_a_worker_survives_a_restart_of_the_whole_cluster(tmp_path: Path) -> None:
    require_cluster_tools()
    cluster = PrivateCluster(tmp_path, durable=True)
    try:
        cluster.start()
        app = conveyor.App(cluster.store_url())

        @app.task(name="noop")
        def noop(n: int) -> int:
            return n

        worker = conveyor.Worker(app, concurrency=4, handle_signals=False)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            before = [noop.enqueue(i) for i in range(10)]
            assert [h.wait(timeout=20) for h in before] == list(range(10))
            waiting = noop.options(delay=1.0).enqueue(99)
            cluster.restart(down_for=1.0)  # every node down at once, back with its AOF
            after = _retrying(lambda: [noop.enqueue(i) for i in range(10)])
            assert _retrying(lambda: [h.wait(timeout=30) for h in after]) == list(range(10))
            assert _retrying(lambda: waiting.wait(timeout=30)) == 99
            assert thread.is_alive()
        finally:
            worker.stop()
            thread.join(20)
            app.close()
        assert not thread.is_alive()
    finally:
        cluster.stop()
