"""Fixtures of the fault suite.

Every scenario runs once per engine that ships (``available_engines()``, as in the
contract suite) and gets a private store from ``fresh_store``. ``CONVEYOR_CHAOS_ENGINES``
(comma-separated) narrows the list, e.g. to run only SQLite while a backend is being
written. ``CONVEYOR_CHAOS=full`` (``make chaos``) runs the long forms: more iterations,
a longer soak, a 30 s black hole.

``network`` gives a scenario a private server of its engine (one per engine per
session, started on first use) behind a fault-injecting TCP proxy (``proxy.py``), and a
``Cluster`` whose producers and workers all reach the store through that proxy.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import Cluster
from tests.chaos.proxy import Proxy
from tests.chaos.servers import NETWORK_ENGINES, PrivateServer, private_server
from tests.contract.conftest import ENGINES, fresh_store

_only = [e for e in os.environ.get("CONVEYOR_CHAOS_ENGINES", "").split(",") if e]
CHAOS_ENGINES = [e for e in ENGINES if not _only or e in _only]
FULL = os.environ.get("CONVEYOR_CHAOS", "") == "full"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(params=CHAOS_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(engine: str, tmp_path: Path) -> Iterator[str]:
    with fresh_store(engine, tmp_path) as url:
        yield url


@pytest.fixture
def cluster(engine: str, store_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, store_url, engine)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture(scope="session")
def private_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], PrivateServer]]:
    """``private_servers(engine)``: this session's private server of ``engine``."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, PrivateServer] = {}

        def get(engine: str) -> PrivateServer:
            if engine not in servers:
                directory = tmp_path_factory.mktemp(f"{engine}-server")
                servers[engine] = stack.enter_context(private_server(engine, directory))
            return servers[engine]

        yield get


@dataclass
class Network:
    """A scenario's store on a private server, reached only through ``proxy``."""

    server: PrivateServer
    proxy: Proxy
    cluster: Cluster


@pytest.fixture
def network(
    engine: str, tmp_path: Path, private_servers: Callable[[str], PrivateServer]
) -> Iterator[Network]:
    if engine not in NETWORK_ENGINES:
        pytest.skip(f"{engine} has no network between workers and the store")
    server = private_servers(engine)
    proxy = Proxy(server.port).start()
    # A fresh store (key prefix or schema) per scenario on the shared private server.
    url = server.store_url(f"chaos_{secrets.token_hex(4)}", proxy.url(server.base_url))
    cluster = Cluster(tmp_path, url, engine)
    try:
        yield Network(server, proxy, cluster)
    finally:
        proxy.heal()  # a scenario that failed mid-partition must not hang its cleanup
        cluster.cleanup()
        proxy.stop()
    assert not proxy.errors, proxy.errors
