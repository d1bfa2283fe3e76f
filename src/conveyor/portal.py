"""A private event loop in a daemon thread: how the sync API runs the async core."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    """Runs coroutines on one background loop and blocks the calling thread for the result.

    The async core is written once; each sync method is a one-line call through here. The
    loop lives in its own thread, so the sync API also works from inside another running
    loop (a notebook, an async task) without nesting loops.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():
            # We were forked (e.g. by a pre-forking web server): the loop's thread did not
            # come along, and the lock may be held by a thread that no longer exists.
            self.__init__()  # type: ignore[misc]
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="conveyor-portal", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    @property
    def running(self) -> bool:
        """True once a call started the loop in this process (and it was not stopped)."""
        return self._loop is not None and self._pid == os.getpid()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._start()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync conveyor call was made from its own portal thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
