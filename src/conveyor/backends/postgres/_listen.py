"""The LISTEN side of wake-ups: one dedicated connection per backend instance.

Each notification's payload is ``"<queue> <xid>"``: the queue that may have work and the
id of the transaction that committed it. A claim records the snapshot its statement
started from (``Mark``); ``wait_for_work`` then returns as soon as a notification for one
of its queues arrives from a transaction that snapshot did NOT show committed. So a
notification that arrives between an empty claim and the wait is never lost, and one
for work the claim already saw does not cause a spurious wake-up.

When the connection drops, the listener reconnects with backoff; notifications may have
been missed meanwhile, so a reconnect counts as a change for every queue (``epoch``),
and while it is down waiters fall back to a jittered poll (``healthy`` is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

log = logging.getLogger("conveyor.backends.postgres")

RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
#: Notifications remembered for waiters; a waiter whose mark is older than the oldest
#: one kept simply returns (a spurious wake-up is allowed, a lost one is not).
HISTORY = 4096


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``pg_snapshot`` (``xmin:xmax:xip,...``): which transactions it saw committed."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]
    #: The claim's own transaction, when it also wrote (a finish claimed after in the
    #: same transaction): what it notified, the claim saw.
    own: int | None = None

    @classmethod
    def parse(cls, text: str, own: str | None = None) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        in_progress = frozenset(int(x) for x in xip.split(",") if x)
        return cls(int(xmin), int(xmax), in_progress, int(own) if own else None)

    def saw_commit_of(self, xid: int) -> bool:
        return (
            xid < self.xmin or (xid < self.xmax and xid not in self.in_progress) or xid == self.own
        )


@dataclass(slots=True)
class Mark:
    """Where a claim started: the listener's position and (once known) its snapshot."""

    epoch: int
    seq: int
    snapshot: Snapshot | None = None


class Listener:
    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._seq = 0
        self._history: deque[tuple[int, str, int | None]] = deque(maxlen=HISTORY)
        self._epoch = 0
        self.healthy = False
        self.event = asyncio.Event()  # replaced (after being set) on every change
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[object] | None = None

    async def start(self) -> None:
        """Connect and LISTEN; if that fails, keep trying in the background."""
        with contextlib.suppress(psycopg.OperationalError, OSError):
            await self._connect()
        self._task = asyncio.create_task(self._run(), name=f"conveyor-listen-{self._channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._disconnect()

    def is_up(self) -> bool:
        return self.healthy

    def mark(self) -> Mark:
        return Mark(self._epoch, self._seq)

    def changed_since(self, mark: Mark, queues: Iterable[str]) -> bool:
        if mark.epoch != self._epoch:
            return True
        if self._seq == mark.seq:
            return False
        if not self._history or self._history[0][0] > mark.seq + 1:
            return True  # forgotten notifications: assume one was for us
        wanted = set(queues)
        for seq, queue, xid in reversed(self._history):
            if seq <= mark.seq:
                break
            if queue not in wanted:
                continue
            if xid is None or mark.snapshot is None or not mark.snapshot.saw_commit_of(xid):
                return True
        return False

    def _signal(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()

    def _record(self, payload: str) -> None:
        queue, _, xid_text = payload.rpartition(" ")
        xid: int | None = int(xid_text) if xid_text.isdigit() else None
        if not queue:  # a payload without a transaction id
            queue, xid = payload, None
        self._seq += 1
        self._history.append((self._seq, queue, xid))
        self._signal()

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.healthy = True

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.healthy = False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                    # Whatever was notified while we were away is lost: count it all.
                    self._epoch += 1
                    self._signal()
                    delay = RECONNECT_MIN
                assert self._conn is not None
                async for note in self._conn.notifies():
                    self._record(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost or refused: retry with backoff
                if self.healthy:
                    log.warning("LISTEN connection lost (%s); polling until it is back", exc)
                await self._disconnect()
                self._signal()  # waiters switch to polling now
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RECONNECT_MAX)
