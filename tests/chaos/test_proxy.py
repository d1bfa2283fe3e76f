"""The fault-injecting proxy itself, against a loopback echo server: each fault does what
the network scenarios rely on it to do. Bounds are one-sided (at least the latency,
at most a generous time), so a loaded machine cannot make them flaky."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import Proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    proxy = Proxy(server.server_address[1]).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()
    assert not proxy.errors, proxy.errors


def _connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def _echo(conn: socket.socket, payload: bytes = b"ping") -> bytes:
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways_and_adds_latency_per_direction(proxy: Proxy) -> None:
    with _connect(proxy) as conn:
        assert _echo(conn) == b"ping"
        proxy.latency = 0.1
        started = time.monotonic()
        assert _echo(conn, b"x" * 200_000) == b"x" * 200_000
        assert time.monotonic() - started >= 0.2  # there and back
        proxy.latency = 0.0


def test_drop_resets_open_connections_and_new_ones_work(proxy: Proxy) -> None:
    with _connect(proxy) as conn:
        assert _echo(conn) == b"ping"
        assert proxy.drop() == 1
        with pytest.raises(OSError):  # ECONNRESET (or EPIPE), never a silent hang
            for _ in range(100):
                conn.sendall(b"more")
                if not conn.recv(64):
                    raise ConnectionResetError("closed")
                time.sleep(0.01)
    with _connect(proxy) as conn:
        assert _echo(conn) == b"ping"


def test_a_black_hole_holds_old_and_new_connections_then_delivers(proxy: Proxy) -> None:
    with _connect(proxy) as old:
        assert _echo(old) == b"ping"
        proxy.start_black_hole()
        try:
            new = _connect(proxy)  # accepted...
            old.sendall(b"held")
            new.sendall(b"also held")
            for conn in (old, new):
                conn.settimeout(0.5)
                with pytest.raises(TimeoutError):  # ...but nothing comes back
                    conn.recv(64)
                conn.settimeout(10)
        finally:
            proxy.heal()
        with new:
            assert _recv_exactly(old, 4) == b"held"
            assert _recv_exactly(new, 9) == b"also held"


def test_a_black_hole_healed_with_reset_resets_what_it_held(proxy: Proxy) -> None:
    with _connect(proxy) as conn:
        with proxy.black_hole(reset=True):
            conn.sendall(b"lost")
        conn.settimeout(10)
        with pytest.raises(ConnectionResetError):
            conn.recv(64)
    with _connect(proxy) as conn:
        assert _echo(conn) == b"ping"


def test_forgotten_connections_stay_silent_and_new_ones_work(proxy: Proxy) -> None:
    with _connect(proxy) as old:
        assert _echo(old) == b"ping"
        assert proxy.forget() == 1
        old.sendall(b"into the void")
        old.settimeout(0.5)
        with pytest.raises(TimeoutError):
            old.recv(64)
        with _connect(proxy) as new:
            assert _echo(new) == b"ping"


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    got = b""
    with contextlib.suppress(TimeoutError):
        while len(got) < size and (chunk := conn.recv(size - len(got))):
            got += chunk
    return got
