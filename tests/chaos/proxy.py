"""A TCP proxy on loopback that misbehaves on demand, between Conveyor and its store.

``Proxy(upstream_port).start()`` listens on a free loopback port and forwards every
connection to ``127.0.0.1:upstream_port``. While it runs, from any thread:

* ``proxy.latency = 0.05`` delays every chunk by 50 ms in each direction (order kept);
* ``proxy.drop()`` resets every open connection (RST, as a crashed middlebox or a
  restarted load balancer does) and goes on accepting new ones;
* ``with proxy.black_hole(): ...`` (or ``start_black_hole()`` / ``heal()``) accepts and
  holds connections but forwards nothing, in either direction, until it ends: a network
  partition. Bytes sent meanwhile wait in the proxy; when the partition heals they are
  delivered (TCP retransmits through a short partition), and connections accepted
  during it are connected upstream. ``heal(reset=True)`` resets every connection
  instead, as when the partition outlasted TCP's patience.
* ``proxy.forget()`` silences the connections open now for good: nothing more is
  forwarded on them, either way, and they are never closed (a middlebox that lost
  their state), while new connections work. Only a client-side timeout gets a client
  out of such a connection.

It runs its own asyncio loop in a daemon thread, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
_CHUNK = 65536
#: SO_LINGER on, zero seconds: close() sends RST and drops unsent data.
_RESET = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class _Link:
    """One client connection and, once connected, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    forgotten: bool = False

    def reset(self) -> None:
        """Both connections, abruptly: the peers see ECONNRESET."""
        self._end(abort=True)

    def close(self) -> None:
        """Both connections, in order (one peer hung up): the other peer sees EOF."""
        self._end(abort=False)

    def _end(self, *, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if abort:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class Proxy:
    """See the module's docstring. ``stats`` counts what it did, for reports."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        #: Seconds added to every chunk, each direction. Read per chunk: change it any time.
        self.latency = 0.0
        self.stats = {"accepted": 0, "reset": 0, "held": 0}
        #: Errors of the proxy's own tasks (there should be none).
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._open: asyncio.Event | None = None  # clear while black-holed

    # -- control (any thread) ------------------------------------------------------------
    def start(self) -> Proxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10) or not self.port:
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already gone
            self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def url(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's."""
        host, port = self.upstream
        target = f"{host}:{port}"
        assert target in url, (target, url)
        return url.replace(target, f"127.0.0.1:{self.port}", 1)

    def drop(self) -> int:
        """Reset every connection now; returns how many there were."""
        return self._call(self._drop())

    def forget(self) -> int:
        """Silence every open connection for good; returns how many there were."""
        return self._call(self._forget())

    def start_black_hole(self) -> None:
        self._call(self._set_open(False))

    def heal(self, *, reset: bool = False) -> None:
        if reset:
            self.drop()
        self._call(self._set_open(True))

    @contextlib.contextmanager
    def black_hole(self, *, reset: bool = False) -> Iterator[None]:
        self.start_black_hole()
        try:
            yield
        finally:
            self.heal(reset=reset)

    @property
    def connections(self) -> int:
        return len(self._links)

    # -- the loop ------------------------------------------------------------------------
    def _call(self, coro: Awaitable[T]) -> T:
        assert self._loop is not None, "the proxy is not running"
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(timeout=10)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_error)
        self._loop = loop
        self._open = asyncio.Event()
        self._open.set()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
        finally:
            ready.set()
            loop.close()

    def _on_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """Keep what went wrong, without formatting a traceback: on Python 3.11 that
        parses source lines with ``ast`` (for the carets), which is not thread-safe and
        breaks pytest's assertion rewriting in the main thread."""
        self.errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop()
        # Let every connection's tasks finish before the loop stops under them.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)

    async def _drop(self) -> int:
        links = list(self._links)
        for link in links:
            link.reset()
        self.stats["reset"] += len(links)
        self._links.clear()
        return len(links)

    async def _forget(self) -> int:
        for link in self._links:
            link.forgotten = True
        return len(self._links)

    async def _set_open(self, value: bool) -> None:
        assert self._open is not None
        if value:
            self._open.set()
        else:
            self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        self._links.add(link)
        me = asyncio.current_task()
        assert me is not None
        link.tasks.add(me)
        self.stats["accepted"] += 1
        try:
            assert self._open is not None
            if not self._open.is_set():
                self.stats["held"] += 1
                await self._open.wait()  # accepted, and held until the partition heals
            if link.forgotten:
                await asyncio.Event().wait()  # until reset or shut down
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            link.upstream = up_writer
            if link.closed:  # dropped while connecting
                up_writer.transport.abort()
                return
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            link.tasks.update(pumps)
            await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.reset()
            self._links.discard(link)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy one direction. Chunks go through a queue so that each waits out its own
        latency without holding up the reading of the next one."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, dst, link))
        link.tasks.add(sender)
        try:
            while True:
                data = await src.read(_CHUNK)
                await queue.put((time.monotonic() + self.latency, data))
                if not data:
                    break
            await sender  # everything before the EOF is delivered first
            link.close()  # one peer hung up: so does the proxy, to the other
        except (OSError, asyncio.IncompleteReadError):
            link.reset()  # one side broke: so does the other
        finally:
            sender.cancel()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        assert self._open is not None
        while True:
            due, data = await queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._open.wait()  # a black hole forwards nothing, in either direction
            if link.forgotten:
                await asyncio.Event().wait()  # until reset or shut down
            if not data:
                return
            dst.write(data)
            await dst.drain()
