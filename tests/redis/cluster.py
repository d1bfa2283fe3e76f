"""A private Redis Cluster for tests: three masters, no replicas, on free loopback ports.

Starting one costs about a second, so a test session shares one cluster between every
test that asks for it (``cluster_session``: the first user starts it, the last one to
finish stops it). Stores on it are isolated by key prefix like on the shared server.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis.conftest import PrivateRedis

MASTERS = 3
#: Each node also listens on its port + 10000 (the cluster bus).
BUS_OFFSET = 10000


def cluster_node_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port + BUS_OFFSET > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + BUS_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class PrivateCluster:
    def __init__(
        self, directory: Path, *, node_timeout_ms: int = 2000, durable: bool = False
    ) -> None:
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.durable = durable
        self.nodes: list[PrivateRedis] = []
        self.replicas: list[PrivateRedis] = []

    @property
    def url(self) -> str:
        """A cluster URL naming every node (any one of them is enough to connect)."""
        first, *rest = self.nodes
        more = "".join(f"&node=127.0.0.1:{n.port}" for n in rest)
        return f"redis://127.0.0.1:{first.port}/0?cluster=1{more}"

    def store_url(self) -> str:
        """A fresh store (its own prefix) on the cluster."""
        return f"{self.url}&prefix=t-{uuid.uuid4().hex}"

    def _start_node(self, name: str) -> PrivateRedis:
        directory = self.directory / name
        directory.mkdir()
        node = PrivateRedis(
            directory,
            [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--appendonly", "yes" if self.durable else "no",
                "--appendfsync", "always",
                # A new replica syncs at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay", "0",
            ],
        )  # fmt: skip
        node.port = cluster_node_port()
        node.start()
        return node

    def start(self) -> None:
        for i in range(MASTERS):
            self.nodes.append(self._start_node(f"node{i}"))
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self._wait_until_ok()

    def add_replica(self, master: PrivateRedis) -> PrivateRedis:
        """A replica of ``master``, in sync, known to every node."""
        replica = self._start_node(f"replica{len(self.replicas)}")
        self.replicas.append(replica)
        master_id = self._cli(master, "cluster", "myid").strip()
        subprocess.run(
            [
                "redis-cli", "--cluster", "add-node",
                f"127.0.0.1:{replica.port}", f"127.0.0.1:{master.port}",
                "--cluster-slave", "--cluster-master-id", master_id,
            ],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "master_link_status:up" not in self._cli(replica, "info", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never synced with its master")
            time.sleep(0.05)
        self._wait_until_ok()
        return replica

    def restart(self, down_for: float = 0.0) -> None:
        """Kill every node (SIGKILL) and start them again on the same ports and files."""
        everyone = [*self.nodes, *self.replicas]
        for node in everyone:
            node.kill()
        time.sleep(down_for)
        for node in everyone:
            node.start()
        self._wait_until_ok()

    def _wait_until_ok(self) -> None:
        """Every node agrees the cluster is up and knows every node (gossip is async)."""
        everyone = [*self.nodes, *self.replicas]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [self._info(n) for n in everyone]
            if all(i.get("cluster_state") == "ok" for i in infos) and all(
                i.get("cluster_known_nodes") == str(len(everyone)) for i in infos
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("private Redis Cluster did not reach cluster_state:ok")

    @staticmethod
    def _cli(node: PrivateRedis, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(node.port), *args],
            capture_output=True, text=True, timeout=5,
        ).stdout  # fmt: skip

    @classmethod
    def _info(cls, node: PrivateRedis) -> dict[str, str]:
        out = cls._cli(node, "cluster", "info")
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def stop(self) -> None:
        for node in [*self.nodes, *self.replicas]:
            node.kill()


_shared: PrivateCluster | None = None
_users = 0


def require_cluster_tools() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("!!! SKIPPED: no redis-server/redis-cli executables to start a cluster !!!")


@contextlib.contextmanager
def cluster_session() -> Iterator[PrivateCluster]:
    """The session's shared cluster: started by its first user, stopped by its last."""
    global _shared, _users
    require_cluster_tools()
    for attempt in (1, 2):  # once more if another process took a port we picked
        if _shared is not None:
            break
        cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="conveyor-cluster-")))
        try:
            cluster.start()
            _shared = cluster
        except Exception:
            if attempt == 2:
                raise
        finally:
            if _shared is not cluster:
                cluster.stop()
                shutil.rmtree(cluster.directory, ignore_errors=True)
    assert _shared is not None
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            _shared.stop()
            shutil.rmtree(_shared.directory, ignore_errors=True)
            _shared = None
