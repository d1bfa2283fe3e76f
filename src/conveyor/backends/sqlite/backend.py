"""The SQLite backend: one file, many processes on one machine.

Design notes (the why):

* Every write primitive is ONE ``BEGIN IMMEDIATE`` transaction. Taking the write lock up
  front means two processes never both hold a read lock and then deadlock trying to
  upgrade it; ``busy_timeout`` makes the loser wait instead of failing.
* Each instance owns one connection, used only from its own single worker thread
  (``ThreadPoolExecutor(max_workers=1)``), so the event loop never blocks on SQLite and
  the connection is never shared between threads.
* The counters a claim needs (ready jobs per lane, ready/running per tenant, running per
  task) are kept exact by triggers (``schema.sql``) whatever path changes a job's state,
  so a claim reads a few small rows instead of scanning the ready jobs.
* SQLite cannot push a wake-up to other processes, so ``wait_for_work`` polls
  ``PRAGMA data_version``, which changes whenever another connection commits; it costs
  microseconds and touches no table.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib.resources import files
from secrets import token_hex
from typing import TypeVar

from conveyor.backends.base import (
    Backend,
    Capabilities,
    ClaimedJob,
    Clock,
    DepthCount,
    ExternalReply,
    HeartbeatReply,
    Lease,
    NewJob,
    Outcome,
    OutcomeKind,
    QueueStats,
    RateBucket,
    RetryDelay,
    StoreEvent,
    depth_counts,
)
from conveyor.backends.sqlite import _connection, _ops, _sql, _workflow
from conveyor.backends.sqlite._records import claimed_from_row
from conveyor.config import sqlite_path
from conveyor.job import Job, JobState
from conveyor.serialize import dumps

T = TypeVar("T")
Body = Callable[[sqlite3.Connection, float], T]

#: Due jobs promoted by one claim: bounds a claim's latency when a huge batch of
#: scheduled jobs falls due at once (the rest follow in the next claims).
CLAIM_PROMOTE_LIMIT = 1000
#: Finished jobs deleted per purge transaction, so purging a backlog never holds the
#: write lock long enough to stall the workers.
PURGE_CHUNK = 5000
#: ``wait_for_work`` polls fast right after it starts (work tends to come in bursts)
#: and backs off to a still-cheap ceiling while idle.
POLL_MIN = 0.001
POLL_MAX = 0.004
_FINISH_SQL = {
    OutcomeKind.SUCCEEDED: "finish_succeeded",
    OutcomeKind.RETRY: "finish_retry",
    OutcomeKind.DEAD: "finish_dead",
    OutcomeKind.CANCELLED: "finish_cancelled",
    OutcomeKind.RELEASED: "finish_released",
    OutcomeKind.PARKED: "finish_parked",
}
_EXTERNAL_KINDS = (OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.DEAD)


class SQLiteBackend(Backend):
    """Conveyor's embedded store: ``sqlite:///path/to/conveyor.db[?synchronous=full]``."""

    capabilities = Capabilities(
        push_wakeups=False,
        multi_host=False,
        transactional_enqueue=False,
        external_completion=True,
    )

    #: ``StoreBusy``: a write waited longer than busy_timeout for another connection's
    #: write lock (a long manual transaction, a backup): retried, not fatal.
    transient_errors = (ConnectionError, TimeoutError, _connection.StoreBusy)

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        self.path = sqlite_path(url)
        self._options = _connection.url_options(url)
        self._q = _sql.Queries.load()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Both touched only on the connection thread. ``_writes`` counts this instance's
        # own commits that may make work claimable (its own data_version does not see
        # them); ``_seen`` is (data_version, _writes) as of the last look for work.
        self._writes = 0
        self._seen: tuple[int, int] | None = None
        # wait_for_work polls on the connection thread (no event-loop round trip per
        # poll). Any other operation submitted meanwhile must not wait behind it:
        # _pending (operations submitted but not started) tells the poll to step aside,
        # and _wake interrupts its sleep. The lock keeps the count exact even if an
        # instance is ever used from two threads: a drifting count would make every
        # poll step aside at once, turning the wait into a busy loop.
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._wait_generation = 0  # bumped when a wait is cancelled

    # -- plumbing --------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.time()

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("the SQLite backend is not open (call open() first)")
        loop = asyncio.get_running_loop()
        with self._pending_lock:
            self._pending += 1
        self._wake.set()  # a poll in progress gives way to this operation
        return await loop.run_in_executor(self._executor, self._start, fn)

    def _start(self, fn: Callable[[], T]) -> T:
        with self._pending_lock:
            self._pending -= 1
        return fn()

    async def _write(self, body: Body[T], *, wakes: bool = False) -> T:
        """Run ``body(conn, now)`` in one BEGIN IMMEDIATE transaction.

        ``wakes``: the change may make work claimable, so this instance's own
        ``wait_for_work`` should return (other instances see it via data_version).
        """
        return await self._run(lambda: self._transaction("BEGIN IMMEDIATE", body, wakes))

    async def _read(self, body: Body[T]) -> T:
        """Run ``body(conn, now)`` in one read transaction: a consistent snapshot."""
        return await self._run(lambda: self._transaction("BEGIN", body, False))

    def _transaction(self, begin: str, body: Body[T], wakes: bool) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the SQLite backend is closed")
        try:
            conn.execute(begin)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                # Waited busy_timeout for another connection's write lock: nothing was
                # done, so the caller may simply try again (a worker does).
                raise _connection.StoreBusy(
                    f"{self.path}: {exc} (another connection held the write lock for "
                    f"more than busy_timeout={self._options.busy_timeout:g} s)"
                ) from exc
            raise
        # Read the clock only once we hold the lock: BEGIN IMMEDIATE may wait up to
        # busy_timeout for another writer, and a lease granted or renewed with the time
        # from before that wait would already be (partly) over when it is committed.
        now = self._now()
        try:
            result = body(conn, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if wakes:
            self._writes += 1
        return result

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        if self._executor is not None:
            return
        self._pending = 0  # a submission refused by a closed executor never started
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")
        try:
            self._conn = await self._run(lambda: _connection.connect(self.path, self._options))
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._disconnect)
        except RuntimeError:
            # At interpreter exit the executor's thread is already gone (Python stops
            # pool threads before atexit callbacks run): nothing else can be using the
            # connection any more, so close it from here.
            self._disconnect()
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def now(self) -> float:
        return self._now()

    # -- producers -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        return await self._write(lambda conn, now: self._tx_enqueue(conn, now, jobs), wakes=True)

    def _tx_enqueue(
        self, conn: sqlite3.Connection, now: float, jobs: Sequence[NewJob]
    ) -> list[str]:
        if any(job.after or job.unique_for is not None for job in jobs):
            return _workflow.enqueue(conn, now, self._q, jobs, _insert_row)
        rows = [_insert_row(job, now, False) for job in jobs]
        if conn.executemany(self._q.insert_job, rows).rowcount == len(rows):
            return [job.id for job in jobs]
        # Some keys were held by active jobs (maybe by one earlier in this very batch):
        # the unique index refused those rows, so hand back the holders' ids.
        ids = []
        for job in jobs:
            holder = None
            if job.key is not None:
                holder = conn.execute(self._q.active_job_by_key, {"key": job.key}).fetchone()
            ids.append(holder[0] if holder else job.id)
        return ids

    # -- workers ---------------------------------------------------------------------
    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        names = list(queues)
        caps = dict(task_caps or {})
        return await self._write(
            lambda conn, now: self._tx_claim(conn, now, names, limit, worker, lease, caps)
        )

    def _tx_claim(
        self,
        conn: sqlite3.Connection,
        now: float,
        queues: list[str],
        limit: int,
        worker: str,
        lease: float,
        caps: dict[str, int],
    ) -> list[ClaimedJob]:
        q = self._q
        _ops.promote(conn, now, q, CLAIM_PROMOTE_LIMIT)
        # Tasks at their cap, tracked for the whole claim: counts start from the store
        # and grow with every job of the task this claim takes.
        running: dict[str, int] = dict.fromkeys(caps, 0)
        if caps:
            running.update(conn.execute(q.task_running, {"tasks": dumps(list(caps))}))
        capped = sorted(task for task, cap in caps.items() if running[task] >= cap)
        params: dict[str, object] = {
            "capped": dumps(capped),
            "now": now,
            "expires": now + lease,
            "worker": worker,
        }
        claimed: list[ClaimedJob] = []
        for queue in queues:
            params["queue"] = queue
            while len(claimed) < limit:
                token = token_hex(16)
                params["token"] = token
                rows = conn.execute(q.claim_one, params).fetchall()
                if not rows:
                    break  # nothing claimable left in this queue: on to the next one
                job = claimed_from_row(rows[0], token)
                claimed.append(job)
                if job.task in caps:
                    running[job.task] += 1
                    if running[job.task] >= caps[job.task]:
                        capped.append(job.task)
                        params["capped"] = dumps(capped)
        # Still inside the write transaction, so no commit can slip in between what this
        # claim saw and the baseline wait_for_work compares against.
        self._seen = (_data_version(conn), self._writes)
        return claimed

    async def heartbeat(self, leases: Sequence[Lease], *, lease: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply(lost=frozenset(), cancel_requested=frozenset())
        return await self._write(lambda conn, now: self._tx_heartbeat(conn, now, leases, lease))

    def _tx_heartbeat(
        self, conn: sqlite3.Connection, now: float, leases: Sequence[Lease], lease: float
    ) -> HeartbeatReply:
        lost: set[str] = set()
        cancel: set[str] = set()
        for held in leases:
            params = {"id": held.id, "token": held.token, "expires": now + lease}
            rows = conn.execute(self._q.heartbeat, params).fetchall()
            if not rows:
                lost.add(held.id)
            elif rows[0][0]:
                cancel.add(held.id)
        return HeartbeatReply(lost=frozenset(lost), cancel_requested=frozenset(cancel))

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        # Finishing frees task and tenant slots and may requeue: worth a look for work.
        return await self._write(lambda conn, now: self._tx_finish(conn, now, outcomes), wakes=True)

    def _tx_finish(
        self,
        conn: sqlite3.Connection,
        now: float,
        outcomes: Sequence[Outcome],
        external: bool = False,
    ) -> list[bool]:
        applied = []
        for out in outcomes:
            params = {
                "external": external,
                "id": out.id,
                "token": out.lease_token,
                "now": now,
                "result": out.result_json,
                "error": out.error_json,
                "delay": out.retry_delay,
            }
            sql = getattr(self._q, _FINISH_SQL[out.kind])
            applied.append(conn.execute(sql, params).rowcount == 1)
        return applied

    async def complete_external(self, outcome: Outcome) -> ExternalReply:
        if outcome.kind not in _EXTERNAL_KINDS:
            raise ValueError(f"an external completion cannot be {outcome.kind.value!r}")

        def body(conn: sqlite3.Connection, now: float) -> ExternalReply:
            if self._tx_finish(conn, now, [outcome], external=True)[0]:
                return ExternalReply.APPLIED
            return _ops.refusal(conn, now, self._q, outcome.id, outcome.lease_token)

        return await self._write(body, wakes=True)

    async def expire_waiting(self, delay: RetryDelay | None = None) -> list[tuple[str, JobState]]:
        return await self._write(
            lambda conn, now: _ops.expire_waiting(conn, now, self._q, delay), wakes=True
        )

    async def take_rate(self, lease: Lease, buckets: Sequence[RateBucket]) -> float:
        if not buckets:
            return 0.0
        return await self._write(
            lambda conn, now: _workflow.take_rate(conn, now, self._q, lease, buckets)
        )

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        params = {"id": lease.id, "token": lease.token, "fraction": fraction, "message": message}
        return await self._write(
            lambda conn, now: conn.execute(self._q.progress, params).rowcount == 1
        )

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        names: str | None = dumps(list(queues))
        generation = self._wait_generation
        while True:
            try:
                outcome = await self._run(partial(self._poll, deadline, names, generation))
            except asyncio.CancelledError:
                self._wait_generation += 1  # release the connection thread at once
                self._wake.set()
                raise
            if outcome is not None:
                return  # work may have arrived, or the deadline passed
            names = None  # the next due time is already folded into the deadline
            # Another operation was queued behind the poll: it runs now; poll again.

    def _poll(self, deadline: float, queues_json: str | None, generation: int) -> bool | None:
        """Poll on the connection thread until a commit, the deadline, or a job falls due.

        Returns True if something committed, False at the deadline, None when it stepped
        aside for another operation of this instance (or the wait was cancelled).
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("the SQLite backend is closed")
        if self._changed(conn):
            return True
        if queues_json is not None:
            row = conn.execute(self._q.next_due, {"queues": queues_json}).fetchone()
            if row is not None:
                # A scheduled job falls due before the timeout: be back in time for it.
                deadline = min(deadline, time.monotonic() + max(0.0, row[0] - self._now()))
        interval = POLL_MIN
        while (remaining := deadline - time.monotonic()) > 0:
            if self._pending or generation != self._wait_generation:
                return None
            self._wake.wait(min(interval, remaining))
            self._wake.clear()  # a set() we miss here is caught by the check above
            if self._changed(conn):
                return True
            interval = min(interval * 1.5, POLL_MAX)
        return False

    def _changed(self, conn: sqlite3.Connection) -> bool:
        """Did anything that may make work claimable commit since the last look?"""
        current = (_data_version(conn), self._writes)
        changed = self._seen is not None and current != self._seen
        self._seen = current
        return changed

    # -- maintenance -----------------------------------------------------------------
    async def reap(self) -> int:
        return (await self.reap_lost())[0]

    async def reap_lost(self) -> tuple[int, list[str]]:
        return await self._write(lambda conn, now: _ops.reap(conn, now, self._q), wakes=True)

    async def promote(self) -> int:
        return await self._write(
            lambda conn, now: _ops.promote(conn, now, self._q, -1),  # LIMIT -1: all
            wakes=True,
        )

    async def purge(self) -> int:
        # Chunked, one transaction per chunk: deleting a large backlog in one go would
        # hold the write lock long enough to stall every worker. Purging is idempotent,
        # so splitting it loses nothing.
        total = 0
        while True:
            deleted = await self._write(
                lambda conn, now: _ops.purge(conn, now, self._q, PURGE_CHUNK)
            )
            total += deleted
            if deleted < PURGE_CHUNK:
                return total

    async def take_events(self, limit: int) -> list[StoreEvent]:
        return await self._read(lambda conn, now: _ops.take_events(conn, now, self._q, limit))

    async def ack_events(self, refs: Sequence[str]) -> None:
        if refs:
            await self._write(lambda conn, now: _ops.ack_events(conn, now, self._q, refs))

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._write(
            lambda conn, now: _ops.try_lock(conn, now, self._q, name, owner, ttl)
        )

    async def unlock(self, name: str, owner: str) -> None:
        await self._write(lambda conn, now: _ops.unlock(conn, now, self._q, name, owner))

    # -- operators -------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        return await self._read(lambda conn, now: _ops.get(conn, now, self._q, job_id))

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        ids = list(job_ids)
        return await self._read(lambda conn, now: [_ops.get(conn, now, self._q, i) for i in ids])

    async def query(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        params = {
            "state": None if state is None else JobState(state).value,
            "queue": queue,
            "tenant": tenant,
            "task": task,
            "limit": max(0, limit),
        }
        return await self._read(lambda conn, now: _ops.query(conn, now, self._q, params))

    async def cancel(self, job_id: str) -> JobState | None:
        return await self._write(
            lambda conn, now: _ops.cancel(conn, now, self._q, job_id), wakes=True
        )

    async def replay(self, job_id: str) -> bool:
        return await self._write(
            lambda conn, now: _ops.replay(conn, now, self._q, job_id), wakes=True
        )

    async def set_tenant(
        self, queue: str, tenant: str | None, *, weight: float, max_running: int | None
    ) -> None:
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"tenant weight must be a finite number > 0, not {weight!r}")
        if max_running is not None and max_running < 0:
            raise ValueError(f"max_running must be >= 0 or None, not {max_running!r}")
        params = {
            "queue": queue,
            "tenant": tenant or "",
            "weight": float(weight),
            "max_running": max_running,
        }
        statements = (self._q.set_tenant,)
        # A higher weight or cap may make jobs claimable: wake.
        await self._write(
            lambda conn, now: _ops.apply_settings(conn, now, statements, params), wakes=True
        )

    async def set_queue(self, queue: str, *, aging: float | None) -> None:
        if aging is not None and not (math.isfinite(aging) and aging > 0):
            raise ValueError(f"aging must be a number of seconds > 0 or None, not {aging!r}")
        params = {"queue": queue, "aging": aging}
        statements = (self._q.set_queue, self._q.reschedule_aging)
        await self._write(
            lambda conn, now: _ops.apply_settings(conn, now, statements, params), wakes=True
        )

    async def stats(self) -> list[QueueStats]:
        return await self._read(lambda conn, now: _ops.stats(conn, now, self._q))

    # -- records: small JSON documents (API tokens, ...); statements in records.sql ----
    async def put_record(self, kind: str, key: str, value_json: str) -> None:
        def body(conn: sqlite3.Connection, now: float) -> None:
            params = {"kind": kind, "key": key, "value": value_json, "now": now}
            conn.execute(_RECORDS["put_record"], params)

        await self._write(body)

    async def get_record(self, kind: str, key: str) -> str | None:
        def body(conn: sqlite3.Connection, now: float) -> str | None:
            row = conn.execute(_RECORDS["get_record"], {"kind": kind, "key": key}).fetchone()
            return None if row is None else str(row[0])

        return await self._read(body)

    async def list_records(self, kind: str) -> list[tuple[str, str]]:
        def body(conn: sqlite3.Connection, now: float) -> list[tuple[str, str]]:
            rows = conn.execute(_RECORDS["list_records"], {"kind": kind}).fetchall()
            return [(str(k), str(v)) for k, v in rows]

        return await self._read(body)

    async def delete_record(self, kind: str, key: str) -> bool:
        def body(conn: sqlite3.Connection, now: float) -> bool:
            cur = conn.execute(_RECORDS["delete_record"], {"kind": kind, "key": key})
            return cur.rowcount > 0

        return await self._write(body)

    # -- queue depth by priority: one GROUP BY over the waiting states (admin.sql) ------
    async def waiting_counts(self) -> list[DepthCount]:
        q = self._q.waiting_counts
        return depth_counts(await self._read(lambda conn, now: conn.execute(q).fetchall()))


def _insert_row(job: NewJob, now: float, blocked: bool) -> tuple[object, ...]:
    """``insert_job``'s parameters; a job with dependencies starts ``blocked``."""
    due = job.run_at if job.run_at is not None else now + (job.delay or 0.0)
    waiting = due > now
    state = "blocked" if blocked else "scheduled" if waiting else "queued"
    return (
        job.id,
        job.task,
        job.queue,
        job.tenant or "",
        job.priority,
        state,
        job.args_json,
        job.kwargs_json,
        job.max_attempts,
        job.timeout,
        job.result_ttl,
        job.key,
        due if waiting else None,
        now,
        None if waiting or blocked else now,
    )


def _data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits to the file (never for our own)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _record_queries() -> dict[str, str]:
    text = files("conveyor.backends.sqlite").joinpath("records.sql").read_text(encoding="utf-8")
    return _sql.parse_named(text, source="records.sql")


_RECORDS = _record_queries()
