"""Wait for a single enqueue's reply by polling the socket for a moment before sleeping.

A thread that sleeps in ``recv()`` until its reply arrives pays for going idle and for
being woken again. On the 2-core virtual machines of ``docs/benchmarks.md`` that costs
about 40 µs per round trip: a bare ``PING`` over loopback took 62 µs with a blocking
``recv()`` and 21 µs when the client polled the socket instead, and a single
``App.enqueue`` went from about 8,300 to 12,000 calls per second.

So a single-job enqueue polls its connection (``poll()`` with no timeout, which also
lets other threads take the GIL) for up to ``budget`` seconds, then sleeps in the usual
blocking read. The poll is only worth its CPU when the reply usually comes within the
budget, so it adapts: a moving average of recent replies' waits above the budget (a
server across a network, a loaded one) turns polling off until replies come quickly
again. Only one thread of an app polls at a time (others sleep as before), and a
one-CPU machine never polls: the server it waits for may need that CPU.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any

#: Default seconds a single enqueue polls for its reply (``?spin_us=`` in the URL).
DEFAULT_BUDGET = 200e-6

#: Weight of the newest wait in the moving average (1/8: about the last 8 calls).
_ALPHA = 0.125


class ReplySpin:
    """Decides whether, and how long, a call polls for its reply before sleeping."""

    def __init__(self, budget: float) -> None:
        cpus = os.cpu_count() or 1
        self.budget = budget if cpus > 1 else 0.0
        #: Moving average of the waits of single-job calls, in seconds.
        self.average = 0.0
        self._polling = threading.Lock()  # one polling thread at a time

    def wait(self, sock: Any) -> None:
        """Poll ``sock`` (a request just sent on it) until it is readable or the budget
        is spent; the caller then reads the reply as usual."""
        if self.budget <= 0 or self.average > self.budget or sock is None:
            return
        if not self._polling.acquire(blocking=False):
            return
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            end = time.perf_counter() + self.budget
            while not poller.poll(0) and time.perf_counter() < end:
                pass
        finally:
            self._polling.release()

    def record(self, seconds: float) -> None:
        """The wait of a single-job call, from its send to its reply."""
        self.average += (seconds - self.average) * _ALPHA
