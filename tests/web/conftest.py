"""A real uvicorn server on a free loopback port, per test, on a fresh store.

The server runs in a thread of the test process with its own event loop, exactly as
``conveyor serve`` runs it; tests talk to it over HTTP only.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn

from conveyor.app import App
from conveyor.backends import create_backend
from conveyor.web import tokens
from conveyor.web.server import create_app
from conveyor.worker import Worker
from tests.contract.conftest import ENGINES, fresh_store
from tests.web.web_tasks import make_app

ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class Running:
    """A served app: its URL, its store and tokens for an admin and two tenants."""

    base: str
    app: App
    store_url: str
    admin: str
    org7: str
    org8: str
    secret: str = "test-secret"
    _clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.base, headers=headers, timeout=15.0)
        self._clients.append(client)
        return client

    def create_token(self, *, tenant: str | None, admin: bool = False) -> str:
        async def create() -> str:
            backend = create_backend(self.store_url)
            await backend.open()
            try:
                token, _ = await tokens.create_token(backend, tenant=tenant, admin=admin)
                return token
            finally:
                await backend.close()

        return asyncio.run(create())


def _serve(app: App, sock: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    server_app = create_app(app, secret="test-secret", sample_interval=0.2)
    config = uvicorn.Config(server_app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server thread died at start-up"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.02)
    return server, thread


@pytest.fixture
def web_engine() -> str:
    return "sqlite"


def _running(engine: str, tmp_path: Path) -> Iterator[Running]:
    with fresh_store(engine, tmp_path) as url:
        app = make_app(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        running = Running(
            base=f"http://127.0.0.1:{port}", app=app, store_url=url, admin="", org7="", org8=""
        )
        running.admin = running.create_token(tenant=None, admin=True)
        running.org7 = running.create_token(tenant="org-7")
        running.org8 = running.create_token(tenant="org-8")
        server, thread = _serve(app, sock)
        try:
            yield running
        finally:
            for client in running._clients:
                client.close()
            server.should_exit = True
            thread.join(15)
            sock.close()
            app.close()


@pytest.fixture
def served(web_engine: str, tmp_path: Path) -> Iterator[Running]:
    """The app served on SQLite (override ``web_engine`` to change the store)."""
    yield from _running(web_engine, tmp_path)


@pytest.fixture(params=ENGINES)
def served_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """The app served on every engine that ships."""
    yield from _running(str(request.param), tmp_path)


@pytest.fixture
def worker(served: Running) -> Iterator[Worker]:
    """An in-process worker for the served app, running until the test ends."""
    w = Worker(served.app, concurrency=4, poll_interval=0.05, handle_signals=False)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(30)
