"""The PostgreSQL backend: durable, multi-machine (``postgresql://...?schema=name``).

Design notes (the why):

* Every primitive is ONE transaction, and nearly every one is ONE statement sent on an
  autocommit connection (claim, heartbeat, finish, enqueue without keys, reap, ...), so
  a primitive costs one round trip; multi-statement primitives (dedup enqueue, cancel,
  replay, migrations) use an explicit transaction.
* The claim is a PL/pgSQL function (``conveyor_claim`` in the schema): it takes
  transaction-level advisory locks (the claim's queues, then its capped tasks, each in
  name order, so claimers never deadlock) and then picks jobs one by one with the exact
  priority -> tenant virtual time -> FIFO order and the caps, all inside the database.
  Claimers of different queues run in parallel; claimers of one queue take turns, which
  is what makes fairness and caps exact with many workers.
* Active jobs are counted from small partial indexes (running jobs for caps, every
  active state for stats), so enqueue and claim touch only their own job rows. Finished
  jobs, which may number millions, are counted in ``job_totals`` by the statements that
  finish, reap, cancel, replay and purge them, each writer on its own shard row, so
  ``stats()`` stays cheap however many finished jobs are kept.
* Wake-ups use LISTEN/NOTIFY on channel ``conveyor_<schema>`` (payload: queue name). An
  insert trigger notifies, so an enqueue inside a caller's transaction wakes workers iff
  it commits. Finish, reap, promote, replay and settings notify explicitly.
* Times come from the database (``now()``) unless a test clock is injected; then every
  statement gets the time as its ``now`` parameter instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib.resources import files
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from conveyor.backends.base import (
    OUTBOX_RETENTION,
    Backend,
    Capabilities,
    ClaimedJob,
    Clock,
    DependencyNotFound,
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
    external_refusal,
)
from conveyor.backends.postgres import _sql, _url
from conveyor.backends.postgres._listen import Listener, Mark, Snapshot
from conveyor.backends.postgres._migrate import migrate_on
from conveyor.backends.sqlite._records import build_stats, job_from_row
from conveyor.errors import InvalidTransition
from conveyor.job import Job, JobState

Conn = psycopg.AsyncConnection[Any]

POOL_MIN = 1
POOL_MAX = 4
#: Seconds a primitive waits for a pooled connection before failing (transiently).
POOL_TIMEOUT = 10.0
#: Finished jobs deleted per purge transaction: short transactions, small WAL bursts.
PURGE_CHUNK = 5000
#: Poll interval ceiling while the LISTEN connection is down (jittered below it).
POLL_FALLBACK = 0.25
_WAITING = frozenset(
    {JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING, JobState.BLOCKED, JobState.WAITING}
)
_EXTERNAL_KINDS = (OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.DEAD)
_REPLAYABLE = frozenset({JobState.DEAD, JobState.CANCELLED})


class PostgresBackend(Backend):
    """Conveyor on PostgreSQL >= 13 (psycopg 3, async, pooled)."""

    capabilities = Capabilities(
        push_wakeups=True,
        multi_host=True,
        transactional_enqueue=True,
        external_completion=True,
    )
    #: A cycle (finish_and_claim) costs the server mostly per call (a transaction, the
    #: claim's locks and fairness bookkeeping, a commit), little per job: with no-op
    #: jobs, batches of about 80 instead of 10 cut its CPU per job by about 2.5x and the
    #: worker's by about 2x (docs/postgres.md, "Performance"). The worker buffers that
    #: many only for jobs that take well under a millisecond (``_PREFETCH_MAX_WAIT``).
    prefetch_per_slot = 16
    transient_errors = (
        psycopg.OperationalError,  # includes PoolTimeout, deadlocks, admin shutdown
        psycopg.InterfaceError,
        ConnectionError,
        TimeoutError,
    )

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        parsed = _url.parse(url)
        self.schema = parsed.schema
        self.channel = parsed.channel
        self._conninfo = parsed.conninfo
        self._options = f"{parsed.options} -c search_path={self.schema}".strip()
        self._q = _sql.Queries.load(self.schema)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: Listener | None = None
        self._listener_lock = asyncio.Lock()
        self._mark: Mark | None = None  # where the last claim started (see _listen.py)
        self._checks: set[asyncio.Task[None]] = set()
        #: Tasks with a concurrency cap, as the last claim passed them: a finish of one
        #: of these frees a slot that a waiting worker may be blocked on, so it notifies.
        self._capped_tasks: list[str] = []

    # -- plumbing --------------------------------------------------------------------
    def _now(self) -> float | None:
        """The ``now`` parameter: the test clock's time, or None for the database's."""
        return self.clock() if self.clock is not None else None

    def _connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "options": self._options}

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the PostgreSQL backend is not open (call open() first)")
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            async with pool.connection() as conn:
                if task is not None and task.cancelling() > cancels:
                    # psycopg_pool waits for a free connection with asyncio.wait_for,
                    # which on Python < 3.12 drops a cancellation that arrives just as
                    # a connection is handed over; a worker's side loop would then
                    # never stop. Honour the cancellation here instead.
                    raise asyncio.CancelledError
                yield conn
        except psycopg.OperationalError:
            # The server may have restarted: have the pool drop every broken idle
            # connection now rather than handing each one out to fail once.
            check = asyncio.create_task(pool.check())
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)
            raise

    async def _rows(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _rowcount(self, query: str, params: Mapping[str, Any]) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            kwargs=self._connect_kwargs(),
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT,
            open=False,
            name=f"conveyor-{self.schema}",
        )
        await pool.open(wait=True, timeout=POOL_TIMEOUT)
        try:
            async with pool.connection() as conn:
                await migrate_on(conn, self.schema)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _listening(self) -> Listener | None:
        """The LISTEN connection, started by the first claim (or wait for work), before
        that claim takes its mark, so no wake-up after it is missed. A backend that
        never claims (a producer's) never listens: otherwise the NOTIFY of each of its
        own enqueues came back to it, a wake-up per job for nothing (measured: about 40 %
        of the CPU of a single async enqueue, see docs/postgres.md, "Performance")."""
        if self._listener is None and self._pool is not None:
            async with self._listener_lock:
                pool = self._pool
                if self._listener is None and pool is not None:
                    listener = Listener(self._conninfo, self.channel)
                    await listener.start()
                    if self._pool is not pool:  # closed meanwhile
                        await listener.stop()
                        return None
                    self._listener = listener
        return self._listener

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if listener is not None:
            await listener.stop()
        for check in list(self._checks):
            check.cancel()
        if pool is not None:
            await pool.close()

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied.

        Idempotent and safe to run from many processes at once (``open()`` runs it too).
        """
        if self._pool is not None:
            async with self._conn() as conn:
                return await migrate_on(conn, self.schema)
        conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs())
        async with conn:
            return await migrate_on(conn, self.schema)

    async def now(self) -> float:
        if self.clock is not None:
            return self.clock()
        rows = await self._rows(self._q.clock, {"now": None})
        return float(rows[0][0])

    # -- producers -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        async with self._conn() as conn:
            if any(job.after or job.unique_for is not None for job in jobs):
                async with conn.transaction():
                    return await self._enqueue_workflow(conn, jobs)
            if any(job.key is not None for job in jobs):
                # The holder lookup must see the same store as the insert did.
                async with conn.transaction():
                    return await self._enqueue_on(conn, jobs)
            return await self._enqueue_on(conn, jobs)

    async def _enqueue_workflow(self, conn: Conn, jobs: Sequence[NewJob]) -> list[str]:
        """Enqueue with dedup windows and dependencies, in the caller's transaction.

        Windows are reserved first (a job whose key is reserved by another job is not
        inserted), then the jobs are inserted as usual, then ``conveyor_link`` records
        their dependencies, blocking them or settling them at once.
        """
        now = self._now()
        windowed: dict[str, str] = {}  # job id -> the job holding its key's window
        for job in jobs:
            if job.key is not None and job.unique_for is not None:
                params = {"key": job.key, "id": job.id, "ttl": job.unique_for, "now": now}
                cur = await conn.execute(self._q.reserve_key, params)
                row = await cur.fetchone()
                assert row is not None
                windowed[job.id] = row[0]
        fresh = [j for j in jobs if windowed.get(j.id, j.id) == j.id]
        ids = dict(zip((j.id for j in fresh), await self._enqueue_on(conn, fresh), strict=True))
        for job in fresh:
            if job.id in windowed and ids[job.id] != job.id:
                await conn.execute(self._q.unreserve_key, {"key": job.key, "id": job.id})
        linked = [j for j in fresh if j.after and ids[j.id] == j.id]
        if linked:
            params = {
                "ids": [j.id for j in linked],
                "deps": [json.dumps(list(j.after)) for j in linked],
                "policies": [j.after_policy for j in linked],
                "now": now,
            }
            cur = await conn.execute(self._q.link, params)
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                raise DependencyNotFound(row[0])
        return [windowed[j.id] if windowed.get(j.id, j.id) != j.id else ids[j.id] for j in jobs]

    async def _enqueue_on(self, conn: Conn, jobs: Sequence[NewJob]) -> list[str]:
        """Insert ``jobs`` on ``conn``, inside whatever transaction it has open.

        Used by ``enqueue`` on a pooled connection and by transactional enqueue on a
        caller's own connection: every statement names the schema, and the insert
        trigger's NOTIFY is delivered only if the caller's transaction commits. A tuple
        row factory is set explicitly, since a caller's connection may use another.
        """
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(self._q.insert_jobs, self._insert_params(jobs))
        inserted = {row[0] for row in await cur.fetchall()}
        holders: dict[str, str] = {}
        if len(inserted) < len(jobs):
            await cur.execute(self._q.active_jobs_by_key, {"keys": _refused_keys(jobs, inserted)})
            holders = dict(await cur.fetchall())
        return _resolve_ids(jobs, inserted, holders)

    def enqueue_in_transaction(self, connection: Any, jobs: Sequence[NewJob]) -> list[str]:
        _no_workflow_in_transaction(jobs)
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(
                "connection= takes a psycopg (3) Connection here; "
                f"got {type(connection).__name__} (use the *_async method for AsyncConnection)"
            )
        cur = connection.cursor(row_factory=tuple_row)
        cur.execute(self._q.insert_jobs, self._insert_params(jobs))
        inserted = {row[0] for row in cur.fetchall()}
        holders: dict[str, str] = {}
        if len(inserted) < len(jobs):
            cur.execute(self._q.active_jobs_by_key, {"keys": _refused_keys(jobs, inserted)})
            holders = dict(cur.fetchall())
        return _resolve_ids(jobs, inserted, holders)

    async def enqueue_in_transaction_async(
        self, connection: Any, jobs: Sequence[NewJob]
    ) -> list[str]:
        _no_workflow_in_transaction(jobs)
        if not isinstance(connection, psycopg.AsyncConnection):
            raise TypeError(
                "connection= takes a psycopg (3) AsyncConnection here; "
                f"got {type(connection).__name__}"
            )
        return await self._enqueue_on(connection, jobs)

    def _insert_params(self, jobs: Sequence[NewJob]) -> dict[str, Any]:
        return {
            "now": self._now(),
            "ids": [j.id for j in jobs],
            "tasks": [j.task for j in jobs],
            "queues": [j.queue for j in jobs],
            "tenants": [j.tenant or "" for j in jobs],
            "priorities": [j.priority for j in jobs],
            "args": [j.args_json for j in jobs],
            "kwargs": [j.kwargs_json for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "timeouts": [j.timeout for j in jobs],
            "result_ttls": [j.result_ttl for j in jobs],
            "keys": [j.key for j in jobs],
            "run_ats": [j.run_at for j in jobs],
            "delays": [j.delay for j in jobs],
        }

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
        return await self._claim(queues, limit, worker, lease, task_caps)

    async def _claim(
        self,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None,
    ) -> list[ClaimedJob]:
        await self._listening()
        mark, params = self._claim_params(queues, limit, worker, lease, task_caps)
        if limit <= 0 or not queues:
            return []
        rows = await self._rows(self._q.claim, params)
        if mark is not None and rows:
            mark.snapshot = Snapshot.parse(rows[0][0])
        return _claimed(rows, 1)

    def _claim_params(
        self,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None,
    ) -> tuple[Mark | None, dict[str, Any]]:
        """The claim's parameters, shared by ``claim`` and ``finish_and_claim``; marks
        where this claim started for ``wait_for_work`` (see _listen.py), even for a
        claim that asks for nothing."""
        mark = self._listener.mark() if self._listener is not None else None
        self._mark = mark
        caps = dict(task_caps or {})
        self._capped_tasks = sorted(caps)
        return mark, {
            "queues": _text_array(tuple(queues)),
            "limit": limit,
            "cap_tasks": _text_array(tuple(caps)),
            "cap_limits": _int_array(tuple(caps.values())),
            "worker": worker,
            "lease": lease,
            "now": self._now(),
        }

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None = None,
    ) -> tuple[list[bool], list[ClaimedJob]]:
        """One statement (``conveyor_finish_claim``), one transaction, one commit."""
        if (
            not outcomes
            or limit <= 0
            or not queues
            or any(o.kind is OutcomeKind.PARKED for o in outcomes)
        ):
            # Outcomes first, then the claim, as the protocol says. (The inner methods,
            # not the public ones: callers that wrap those see one call either way.)
            applied = await self._finish(outcomes) if outcomes else []
            return applied, await self._claim(queues, limit, worker, lease, task_caps)
        await self._listening()
        mark, params = self._claim_params(queues, limit, worker, lease, task_caps)
        # After _claim_params: the finish's wake-up test uses this claim's capped tasks.
        rows = await self._rows(self._q.finish_claim, {**self._finish_params(outcomes), **params})
        applied_ids, applied_tokens, snapshot, own_xid = rows[0][:4]
        if mark is not None:
            mark.snapshot = Snapshot.parse(snapshot, own_xid)
        held = set(zip(applied_ids, applied_tokens, strict=True))
        return [(o.id, o.lease_token) in held for o in outcomes], _claimed(rows, 4)

    async def heartbeat(self, leases: Sequence[Lease], *, lease: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply(lost=frozenset(), cancel_requested=frozenset())
        params = {
            "now": self._now(),
            "lease": lease,
            "ids": [held.id for held in leases],
            "tokens": [held.token for held in leases],
        }
        rows = await self._rows(self._q.heartbeat, params)
        held = {job_id for job_id, _ in rows}
        return HeartbeatReply(
            lost=frozenset(h.id for h in leases if h.id not in held),
            cancel_requested=frozenset(job_id for job_id, cancel in rows if cancel),
        )

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        return await self._finish(outcomes)

    async def _finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        if any(o.kind is OutcomeKind.PARKED for o in outcomes):
            return await self._finish_with_parks(outcomes)
        rows = await self._rows(self._q.finish, self._finish_params(outcomes))
        applied = {(job_id, token) for job_id, token in rows}
        return [(o.id, o.lease_token) in applied for o in outcomes]

    def _finish_params(self, outcomes: Sequence[Outcome]) -> dict[str, Any]:
        # One JSON document (json.dumps is C) instead of six lists: psycopg adapts each
        # list element by element in Python, which cost several times more per cycle.
        document = [
            {
                "id": o.id,
                "token": o.lease_token,
                "kind": o.kind.value,
                "result": o.result_json,
                "error": o.error_json,
                "delay": _json_float(o.retry_delay),
            }
            for o in outcomes
        ]
        return {
            "now": self._now(),
            "chan": self.channel,
            "outcomes": json.dumps(document),
            "capped_tasks": _text_array(tuple(self._capped_tasks)),
        }

    async def _finish_with_parks(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Parks (rare) go through their own statement; the rest through ``finish``."""
        others = [o for o in outcomes if o.kind is not OutcomeKind.PARKED]
        done = iter(await self._finish(others))
        applied = []
        for out in outcomes:
            if out.kind is not OutcomeKind.PARKED:
                applied.append(next(done))
                continue
            params = {
                "now": self._now(),
                "id": out.id,
                "token": out.lease_token,
                "delay": float(out.retry_delay),
            }
            async with self._conn() as conn, conn.transaction():
                cur = await conn.execute(self._q.park, params)
                row = await cur.fetchone()
                if row is not None:
                    await conn.execute(self._q.notify, {"chan": self.channel, "queue": row[0]})
            applied.append(row is not None)
        return applied

    async def complete_external(self, outcome: Outcome) -> ExternalReply:
        if outcome.kind not in _EXTERNAL_KINDS:
            raise ValueError(f"an external completion cannot be {outcome.kind.value!r}")
        params = {
            "now": self._now(),
            "id": outcome.id,
            "token": outcome.lease_token,
            "kind": outcome.kind.value,
            "result": outcome.result_json,
            "error": outcome.error_json,
            "delay": float(outcome.retry_delay),
        }
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q.wait_status, {"id": outcome.id})
            status = await cur.fetchone()
            if status is None or status[1] != outcome.lease_token:
                return ExternalReply.UNKNOWN
            cur = await conn.execute(self._q.complete_external, params)
            row = await cur.fetchone()
            if row is not None:
                if row[0] == JobState.QUEUED:
                    await conn.execute(self._q.notify, {"chan": self.channel, "queue": row[1]})
                return ExternalReply.APPLIED
            cur = await conn.execute(self._q.clock, {"now": self._now()})
            now_row = await cur.fetchone()
        assert now_row is not None
        return external_refusal(status[0], status[2], status[3], float(now_row[0]))

    async def expire_waiting(self, delay: RetryDelay | None = None) -> list[tuple[str, JobState]]:
        now = self._now()
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q.overdue_waits, {"now": now})
            overdue = await cur.fetchall()
            if not overdue:
                return []
            ids = [str(job_id) for job_id, _, _ in overdue]
            # Rows stay locked until commit, so each delay applies to the attempt it was
            # computed for.
            delays = [
                delay(str(task), int(attempt)) if delay is not None else 0.0
                for _, task, attempt in overdue
            ]
            params = {"now": now, "ids": ids, "delays": delays}
            cur = await conn.execute(self._q.expire_waiting, params)
            rows = await cur.fetchall()
            for queue in sorted({q for _, state, q in rows if state == JobState.QUEUED}):
                await conn.execute(self._q.notify, {"chan": self.channel, "queue": queue})
        return [(str(job_id), JobState(state)) for job_id, state, _ in rows]

    async def take_rate(self, lease: Lease, buckets: Sequence[RateBucket]) -> float:
        if not buckets:
            return 0.0
        params = {
            "id": lease.id,
            "token": lease.token,
            "names": [b.name for b in buckets],
            "limits": [b.limit for b in buckets],
            "periods": [float(b.period) for b in buckets],
            "now": self._now(),
        }
        rows = await self._rows(self._q.take_rate, params)
        return float(rows[0][0])

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        params = {"id": lease.id, "token": lease.token, "fraction": fraction, "message": message}
        return await self._rowcount(self._q.progress, params) == 1

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        listener = await self._listening()
        if listener is None or not listener.is_up():
            await self._poll_sleep(timeout)
            return
        mark = self._mark if self._mark is not None else listener.mark()
        if listener.changed_since(mark, queues):
            return
        rows = await self._rows(self._q.next_due, {"now": self._now(), "queues": list(queues)})
        if rows and rows[0][0] is not None:
            # A scheduled job falls due before the timeout: be back in time for it.
            deadline = min(deadline, loop.time() + max(0.0, float(rows[0][0])))
        while not listener.changed_since(mark, queues):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not listener.is_up():  # lost meanwhile: poll instead
                await self._poll_sleep(remaining)
                return
            event = listener.event
            # asyncio.timeout, not wait_for: on Python < 3.12 wait_for can swallow a
            # cancellation that coincides with the event firing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    @staticmethod
    async def _poll_sleep(timeout: float) -> None:
        """Fallback while LISTEN is down: a short jittered sleep, so that workers that
        lost their wake-ups do not all query the database in lockstep."""
        await asyncio.sleep(max(0.0, min(timeout, POLL_FALLBACK)) * random.uniform(0.5, 1.0))

    # -- maintenance -----------------------------------------------------------------
    async def reap(self) -> int:
        return (await self.reap_lost())[0]

    async def reap_lost(self) -> tuple[int, list[str]]:
        rows = await self._rows(self._q.reap, {"now": self._now(), "chan": self.channel})
        return int(rows[0][0]), [str(i) for i in rows[0][2]]

    async def promote(self) -> int:
        rows = await self._rows(self._q.promote, {"now": self._now(), "chan": self.channel})
        return int(rows[0][0])

    async def purge(self) -> int:
        # Chunked, one short transaction per chunk: deleting a large backlog in one go
        # would hold many row locks and write one huge WAL burst. Purging is idempotent.
        total = 0
        while True:
            rows = await self._rows(
                self._q.purge_expired, {"now": self._now(), "limit": PURGE_CHUNK}
            )
            deleted = int(rows[0][0])
            total += deleted
            if deleted < PURGE_CHUNK:
                break
        await self._rowcount(self._q.prune_tenants, {})
        await self._rowcount(self._q.fold_totals, {})
        await self._rowcount(self._q.prune_totals, {})
        await self._rowcount(self._q.purge_key_windows, {"now": self._now()})
        await self._rowcount(
            _OUTBOX["purge_outbox"], {"now": self._now(), "retention": OUTBOX_RETENTION}
        )
        return total

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        params = {"now": self._now(), "name": name, "owner": owner, "ttl": ttl}
        return bool(await self._rows(self._q.try_lock, params))

    async def unlock(self, name: str, owner: str) -> None:
        await self._rowcount(self._q.unlock, {"name": name, "owner": owner})

    # -- operators -------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        rows = await self._rows(self._q.get_job, {"id": job_id})
        return job_from_row(rows[0]) if rows else None

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        if not job_ids:
            return []
        rows = await self._rows(self._q.get_jobs, {"ids": list(job_ids)})
        found = {job.id: job for job in map(job_from_row, rows)}
        return [found.get(job_id) for job_id in job_ids]

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
        query = self._q.query_jobs if state is None else self._q.query_jobs_in_state
        return [job_from_row(row) for row in await self._rows(query, params)]

    async def cancel(self, job_id: str) -> JobState | None:
        params = {"id": job_id, "now": self._now()}
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q.lock_job, params)
            row = await cur.fetchone()
            if row is None:
                return None
            state = JobState(row[0])
            if state in _WAITING:
                await conn.execute(self._q.cancel_waiting, params)
                return JobState.CANCELLED
            if state is JobState.RUNNING:
                await conn.execute(self._q.request_cancel, params)
            return state

    async def replay(self, job_id: str) -> bool:
        params = {"id": job_id, "now": self._now(), "chan": self.channel}
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q.lock_job, params)
            row = await cur.fetchone()
            if row is None or JobState(row[0]) not in _REPLAYABLE:
                return False
            _, key, queue = row
            if key is not None:
                cur = await conn.execute(self._q.other_active_with_key, {"key": key, "id": job_id})
                other = await cur.fetchone()
                if other is not None:
                    raise _key_taken(job_id, key, other[0])
            try:
                async with conn.transaction():  # a savepoint: the key may be taken meanwhile
                    await conn.execute(self._q.replay, params)
            except psycopg.errors.UniqueViolation as exc:
                raise _key_taken(job_id, key, "another job") from exc
            await conn.execute(self._q.notify, {"chan": self.channel, "queue": queue})
            return True

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
            "chan": self.channel,
        }
        async with self._conn() as conn, conn.transaction():
            await conn.execute(self._q.set_tenant, params)
            await conn.execute(self._q.notify, params)  # a higher cap may free jobs

    async def set_queue(self, queue: str, *, aging: float | None) -> None:
        if aging is not None and not (math.isfinite(aging) and aging > 0):
            raise ValueError(f"aging must be a number of seconds > 0 or None, not {aging!r}")
        params = {"queue": queue, "aging": aging, "chan": self.channel}
        async with self._conn() as conn, conn.transaction():
            await conn.execute(self._q.set_queue, params)
            await conn.execute(self._q.reschedule_aging, params)
            await conn.execute(self._q.notify, params)

    async def stats(self) -> list[QueueStats]:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(self._q.clock, {"now": self._now()})
            now_row = await cur.fetchone()
            assert now_row is not None
            cur = await conn.execute(self._q.job_counts)
            counts = _pivot_counts(await cur.fetchall())
            cur = await conn.execute(self._q.tenant_settings)
            settings = await cur.fetchall()
        return build_stats(counts, settings, float(now_row[0]))

    # -- the outbox: events the store produced itself; statements in outbox.sql ---------
    async def take_events(self, limit: int) -> list[StoreEvent]:
        rows = await self._rows(_OUTBOX["take_events"], {"limit": max(0, limit)})
        return [StoreEvent(ref=str(seq), name=name, job_id=job_id) for seq, name, job_id in rows]

    async def ack_events(self, refs: Sequence[str]) -> None:
        seqs = [int(ref) for ref in refs if ref.isdigit()]
        if seqs:
            await self._rowcount(_OUTBOX["ack_events"], {"seqs": seqs})

    # -- records: small JSON documents (API tokens, ...); statements in records.sql ----
    async def put_record(self, kind: str, key: str, value_json: str) -> None:
        params = {"kind": kind, "key": key, "value": value_json, "now": self._now()}
        await self._rowcount(_RECORDS["put_record"], params)

    async def get_record(self, kind: str, key: str) -> str | None:
        rows = await self._rows(_RECORDS["get_record"], {"kind": kind, "key": key})
        return str(rows[0][0]) if rows else None

    async def list_records(self, kind: str) -> list[tuple[str, str]]:
        rows = await self._rows(_RECORDS["list_records"], {"kind": kind})
        return [(str(k), str(v)) for k, v in rows]

    async def delete_record(self, kind: str, key: str) -> bool:
        return await self._rowcount(_RECORDS["delete_record"], {"kind": kind, "key": key}) > 0

    # -- queue depth by priority: partial-index counts (queries.sql waiting_counts) -----
    async def waiting_counts(self) -> list[DepthCount]:
        return depth_counts(await self._rows(self._q.waiting_counts, {}))


#: The columns of a ``build_stats`` counts row, after (queue, tenant).
_COUNT_COLUMNS = ("scheduled", "queued", "running", "retrying", "dead", "succeeded", "cancelled")
_OLDEST = len(_COUNT_COLUMNS)  # then the oldest ready_at, the blocked and waiting counts


def _pivot_counts(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``job_counts`` rows (queue, tenant, state, count, oldest ready_at) as the
    one-row-per-(queue, tenant) tuples ``build_stats`` reads."""
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for queue, tenant, state, count, oldest in rows:
        pair = by_pair.setdefault((queue, tenant), [0] * len(_COUNT_COLUMNS) + [None, 0, 0])
        if state == "blocked":
            pair[_OLDEST + 1] = int(count)
        elif state == "waiting":
            pair[_OLDEST + 2] = int(count)
        else:
            pair[_COUNT_COLUMNS.index(state)] = int(count)
        if oldest is not None:
            pair[_OLDEST] = oldest
    return [(queue, tenant, *values) for (queue, tenant), values in by_pair.items()]


@functools.lru_cache(maxsize=64)
def _text_array(values: tuple[str, ...]) -> str:
    """``values`` as a PostgreSQL array literal (sent as text, cast to ``text[]``).

    A worker sends the same queues and caps every cycle: the literal is made once,
    where psycopg would adapt a list element by element on every call."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


@functools.lru_cache(maxsize=64)
def _int_array(values: tuple[int, ...]) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def _json_float(value: float) -> float | str:
    """A float for JSON; infinities and NaN (not JSON) as the strings float8 reads."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _claimed(rows: Sequence[tuple[Any, ...]], start: int) -> list[ClaimedJob]:
    """The jobs of claim result rows whose job columns begin at column ``start`` (a
    row of NULLs there stands for no job)."""
    return [
        ClaimedJob(
            id=r[start],
            task=r[start + 1],
            queue=r[start + 2],
            tenant=r[start + 3] or None,
            priority=r[start + 4],
            args_json=r[start + 5],
            kwargs_json=r[start + 6],
            attempt=r[start + 7],
            max_attempts=r[start + 8],
            timeout=r[start + 9],
            lease_token=r[start + 10],
            lease_expires_at=r[start + 11],
            enqueued_at=r[start + 12],
        )
        for r in rows
        if r[start] is not None
    ]


def _no_workflow_in_transaction(jobs: Sequence[NewJob]) -> None:
    if any(job.after or job.unique_for is not None for job in jobs):
        raise ValueError(
            "after= and unique_for= cannot be combined with connection= (transactional "
            "enqueue); enqueue such jobs after your transaction commits"
        )


def _refused_keys(jobs: Sequence[NewJob], inserted: set[str]) -> list[str]:
    """Keys whose rows the unique index refused (held by an active job, maybe one
    earlier in this very batch)."""
    return sorted({j.key for j in jobs if j.id not in inserted and j.key is not None})


def _resolve_ids(
    jobs: Sequence[NewJob], inserted: set[str], holders: Mapping[str, str]
) -> list[str]:
    """Each job's own id, or the id of the active job holding its key."""
    return [j.id if j.id in inserted or j.key is None else holders.get(j.key, j.id) for j in jobs]


def _key_taken(job_id: str, key: str, holder: str) -> InvalidTransition:
    return InvalidTransition(
        f"cannot replay job {job_id}: its dedup key {key!r} is held by active job "
        f"{holder}; wait for that job to finish or cancel it first"
    )


_RECORDS = _sql.parse_named(
    files("conveyor.backends.postgres").joinpath("records.sql").read_text(encoding="utf-8")
)
_OUTBOX = _sql.parse_named(
    files("conveyor.backends.postgres").joinpath("outbox.sql").read_text(encoding="utf-8")
)
