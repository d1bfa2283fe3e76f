"""The Redis backend: the fastest engine, for many machines.

Design notes (the why):

* Every primitive is ONE Lua script (``*.lua`` next to this file, sharing ``_lib.lua``),
  so each is atomic on the server and costs one round trip: a claim of ``limit`` jobs,
  a finish of a whole batch of outcomes, an enqueue of 10,000 jobs.
* Ready jobs are kept in small sorted sets per (priority, tenant, task) lane, with a
  sorted set of tenants per priority scored by virtual time; a claim reads the heads
  of a few sets, so its cost does not grow with the backlog or the number of tenants.
* Times come from Redis ``TIME`` inside the scripts (or from the injected test clock,
  passed as an argument), never from the worker's own clock.
* Wake-ups are pushed: scripts ``PUBLISH`` to a per-queue channel that a listener task
  of each waiting instance subscribes to (see ``_wakeup.py``).
* Commands are not retried by the client after a connection error: a script may have
  run before the connection dropped, and running a claim twice would strand jobs until
  their lease ends. The worker treats connection errors as transient and tries again;
  ``enqueue`` is idempotent per job id, so a caller may simply retry it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any

import redis.exceptions as rexc

from conveyor.backends.base import (
    OUTBOX_RETENTION,
    WAITING_STATES,
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
)
from conveyor.backends.redis import _blocking
from conveyor.backends.redis._blocking import BlockingEnqueuer
from conveyor.backends.redis._client import make_client, store_time
from conveyor.backends.redis._records import (
    STATES,
    claimed_from_reply,
    job_from_hash,
    pairs,
    stats_from_reply,
)
from conveyor.backends.redis._safety import check_server
from conveyor.backends.redis._scripts import FunctionScript, Scripts, function_missing
from conveyor.backends.redis._url import Keys, RedisOptions
from conveyor.backends.redis._wakeup import WakeListener
from conveyor.errors import InvalidTransition
from conveyor.job import Job, JobState

log = logging.getLogger("conveyor.redis")

#: Due jobs promoted by one claim: bounds a claim's latency when a huge batch of
#: scheduled jobs falls due at once (the rest follow in the next claims).
CLAIM_PROMOTE_LIMIT = 1000
#: Finished jobs deleted per purge script call, so purging never blocks Redis long.
PURGE_CHUNK = 2000
#: Jobs one query script reads at most per (queue, state); a larger ``limit`` is served
#: in pages (a script holds the whole server while it runs).
QUERY_PAGE = 1000


#: Compact JSON for script arguments (one encoder: ``json.dumps(..., ensure_ascii=False)``
#: builds a new one per call, which costs more than encoding a single job).
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _num(value: float | None) -> str:
    # repr() is the shortest string that reads back as the same double in Lua too.
    return "" if value is None else repr(float(value))


_EXTERNAL_KINDS = (OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.DEAD)
#: Ids read per depth.lua call for the non-queued waiting states: bounds how long one
#: call holds the server. Counts of a backlog that moves between pages are approximate.
_DEPTH_PAGE = 2000


def _enqueue_error(exc: rexc.ResponseError) -> Exception:
    """enqueue.lua's refusal of a job whose dependency does not exist, as the core's
    error; any other error reply unchanged."""
    missing = str(exc).partition("DependencyNotFound ")[2]
    return DependencyNotFound(missing.strip()) if missing else exc


def _outcomes_json(outcomes: Sequence[Outcome]) -> str:
    """finish.lua's outcomes argument: one JSON list of 6 fields per outcome."""
    return json.dumps(
        [
            (
                out.id,
                out.lease_token,
                out.kind.value,
                out.result_json if out.result_json is not None else "",
                out.error_json or "",
                _num(out.retry_delay) if out.retry_delay else "0.0",
            )
            for out in outcomes
        ],
        ensure_ascii=False,
    )


def _pack_command(parts: Sequence[str | int]) -> bytes:
    """One command in the Redis protocol (RESP), for ``RedisBackend._hot_call``."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _shape(job: NewJob) -> tuple[Any, ...]:
    """What the jobs of one run (enqueue.lua's group) share: all but id and arguments."""
    return (
        job.task,
        job.queue,
        job.tenant,
        job.priority,
        job.max_attempts,
        job.timeout,
        job.result_ttl,
        job.key,
        job.delay,
        job.run_at,
        job.after,
        job.after_policy,
        job.unique_for,
    )


def _stored_ids(jobs: Sequence[NewJob], replaced: list[str]) -> list[str]:
    """The id each job is stored under: its own, except where enqueue.lua's reply
    (position, holder id, ...) names the job already holding its dedup key."""
    ids = [job.id for job in jobs]
    for i in range(0, len(replaced), 2):
        ids[int(replaced[i]) - 1] = replaced[i + 1]
    return ids


class RedisBackend(Backend):
    """``redis://host:port/db[?prefix=conveyor&allow_eviction=0]``, also ``rediss://``;
    ``redis://host:port?cluster=1`` for a Redis Cluster (see ``_url.py``)."""

    capabilities = Capabilities(
        push_wakeups=True,
        multi_host=True,
        transactional_enqueue=False,
        external_completion=True,
        blocking_enqueue=True,
    )
    transient_errors: tuple[type[BaseException], ...] = (
        rexc.ConnectionError,  # includes BusyLoadingError (a restarted server loading)
        rexc.TimeoutError,
        rexc.ReadOnlyError,  # a replica promoted or demoted under us
        rexc.TryAgainError,
        # Redis Cluster: a failover in progress (ClusterDownError, MasterDownError), or
        # the client cannot learn the slot map ("Redis Cluster cannot be connected" when
        # every node is down, SlotNotCoveredError): all pass once the cluster is back.
        rexc.ClusterDownError,
        rexc.RedisClusterException,
        ConnectionError,
        TimeoutError,
    )

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        super().__init__(url, clock=clock)
        self.options = RedisOptions.parse(url)
        self.keys = Keys(self.options.prefix)
        self._client: Any = None
        self._scripts: Scripts | None = None
        self._wake: WakeListener | None = None
        #: monotonic time when the earliest waiting job of the last claimed queues falls due.
        self._due_at: float | None = None
        self._blocking = BlockingEnqueuer(self.options)
        #: enqueue.lua's queue list for a call to one queue, by queue name.
        self._queue_json: dict[str, str] = {}
        #: The JSON of a run's shared fields, by (run fields, queue index).
        self._group_heads: dict[tuple[Any, int], str] = {}
        #: The same for a call of one job: its arguments but id, args and kwargs.
        self._single_heads: dict[tuple[Any, ...], list[str]] = {}
        #: The claim path's own connection (see ``_hot_call``); taken from the pool on
        #: first use, closed with the client.
        self._hot: Any = None
        self._hot_busy = False
        if self.options.cluster:
            # The sync fast path speaks to one server; a cluster's sync enqueue goes
            # through the async cluster client (the portal) instead.
            self.capabilities = dataclasses.replace(self.capabilities, blocking_enqueue=False)

    # -- plumbing --------------------------------------------------------------------
    def _now_arg(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    @property
    def _s(self) -> Scripts:
        if self._scripts is None:
            raise RuntimeError("the Redis backend is not open (call open() first)")
        return self._scripts

    async def _queue_prefixes(self) -> dict[str, str]:
        """Every queue the store has seen: name -> key prefix."""
        return dict(await self._client.hgetall(self.keys.queue_prefixes))

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        if self._client is not None:
            return
        client = make_client(self.options)
        try:
            await check_server(
                client, self.options.where, allow_eviction=self.options.allow_eviction
            )
            scripts = await Scripts.load(client, cluster=self.options.cluster)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._scripts = scripts
        self._wake = WakeListener(client)

    async def close(self) -> None:
        self._hot = None  # the client's pool disconnects it below
        client, self._client = self._client, None
        if client is None:
            return
        if self._wake is not None:
            await self._wake.close()
            self._wake = None
        self._scripts = None
        await client.aclose()

    async def now(self) -> float:
        if self.clock is not None:
            return float(self.clock())
        seconds, micros = await store_time(self._client, self.keys.route)
        return float(seconds) + float(micros) / 1e6

    # -- producers -------------------------------------------------------------------
    def _enqueue_args(self, jobs: Sequence[NewJob]) -> list[str]:
        """enqueue.lua's arguments: the jobs as runs of consecutive jobs that differ only
        in id and arguments (one run for a whole ``enqueue_many`` of one task), so that
        neither side encodes or decodes the shared fields once per job."""
        if len(jobs) == 1:
            # One job (a single enqueue): its fields as plain arguments. Decoding two
            # JSON arguments cost Redis 8,500 instructions more than these take.
            job = jobs[0]
            one = _shape(job)
            fixed = self._single_heads.get(one)
            if fixed is None:
                if len(self._single_heads) >= 1000:  # bounded: dedup keys, due times
                    self._single_heads.clear()
                fixed = [self.keys.store, job.queue, self.keys.queue(job.queue)]
                fixed += self._group_fields(one)
                self._single_heads[one] = fixed
            return [self._now_arg(), *fixed, job.id, job.args_json, job.kwargs_json]
        queues: dict[str, int] = {}
        parts: list[str] = []
        shape: tuple[Any, ...] | None = None
        head = ""
        flat: list[str] = []
        for job in jobs:
            this = _shape(job)
            if this != shape:
                if flat:
                    parts.append(f"{head}{_json(flat)}]")
                shape = this
                qi = queues.get(job.queue)
                if qi is None:
                    qi = queues[job.queue] = len(queues) + 1
                head = self._group_head(this, qi)
                flat = []
            flat += (job.id, job.args_json, job.kwargs_json)
        parts.append(f"{head}{_json(flat)}]")
        # One JSON argument instead of several per job: packing 130,000 arguments costs
        # redis-py more than the whole script costs Redis.
        if len(queues) == 1:  # the common case: the queue's JSON is kept per queue
            (name,) = queues
            queues_json = self._queue_json.get(name)
            if queues_json is None:
                if len(self._queue_json) >= 1000:  # bounded: producers of many queues
                    self._queue_json.clear()
                queues_json = self._queue_json[name] = _json([(name, self.keys.queue(name))])
        else:
            queues_json = _json([(name, self.keys.queue(name)) for name in queues])
        groups_json = parts[0] if len(parts) == 1 else ",".join(parts)
        return [self._now_arg(), self.keys.store, queues_json, f"[{groups_json}]"]

    def _group_head(self, shape: tuple[Any, ...], qi: int) -> str:
        """The JSON of a run's shared fields, up to its job list: the same for every
        call of a task without options, so it is encoded once and kept (a bounded
        cache) rather than once per call."""
        cached = self._group_heads.get((shape, qi))
        if cached is not None:
            return cached
        task, *rest = self._group_fields(shape)
        head = _json([task, qi, *rest])[:-1] + ","  # the open group, its job list to follow
        if len(self._group_heads) >= 1000:  # bounded: dedup keys and due times vary
            self._group_heads.clear()
        self._group_heads[(shape, qi)] = head
        return head

    @staticmethod
    def _group_fields(shape: tuple[Any, ...]) -> list[str]:
        """A run's shared fields as enqueue.lua reads them (without the queue)."""
        task, _, tenant, priority, max_attempts, timeout, result_ttl = shape[:7]
        key, delay, run_at, after, after_policy, unique_for = shape[7:]
        return [
            task,
            tenant or "",
            str(priority),
            str(max_attempts),
            _num(timeout),
            _num(result_ttl),
            key or "",
            _num(delay) if delay else "",
            _num(run_at),
            _json(list(after)) if after else "",
            after_policy,
            _num(unique_for),
        ]

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        args = self._enqueue_args(jobs)
        try:
            try:
                replaced = await self._enqueue_call(args)
            except (TimeoutError, rexc.ConnectionError, rexc.TimeoutError) as exc:
                # No answer, or a broken connection: the script may or may not have run.
                # Once more (the connection was dropped): enqueue is idempotent per job id.
                log.warning("enqueue got no answer (%r): trying once more", exc)
                replaced = await self._enqueue_call(args)
        except rexc.ResponseError as exc:
            raise _enqueue_error(exc) from None
        if self._wake is not None:
            self._wake.flag.set()  # our own listener may not be subscribed to these queues
        return _stored_ids(jobs, replaced)

    async def _enqueue_call(self, args: list[Any]) -> list[str]:
        """enqueue.lua, given up on after ``CALL_TIMEOUT`` seconds (the URL's
        ``socket_timeout`` if it has one): a connection gone silent without a reset would
        otherwise hold the caller until TCP gives up, for hours. The timeout cancels the
        call, and redis-py drops a connection cancelled mid-call."""
        async with asyncio.timeout(self.options.socket_timeout or _blocking.CALL_TIMEOUT):
            replaced: list[str] = await self._s.enqueue(keys=[self.keys.route], args=args)
            return replaced

    def enqueue_blocking(self, jobs: Sequence[NewJob]) -> list[str]:
        if not jobs:
            return []
        try:
            replaced = self._blocking.run(
                [self.keys.route], self._enqueue_args(jobs), single=len(jobs) == 1
            )
        except rexc.ResponseError as exc:
            raise _enqueue_error(exc) from None
        return _stored_ids(jobs, replaced)

    def close_blocking(self) -> None:
        self._blocking.close()

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
        claim_args = await self._claim_args(queues, limit, worker, lease, task_caps)
        reply = await self._hot_call(self._s.claim, [self._now_arg(), self.keys.store, *claim_args])
        return self._claimed(reply)

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
        if not outcomes:
            return [], await self._claim(queues, limit, worker, lease, task_caps)
        if any(o.kind is OutcomeKind.PARKED for o in outcomes):
            # Parks go through park.lua (rare): finish, then claim, in two calls.
            applied = await self.finish(outcomes)
            return applied, await self._claim(queues, limit, worker, lease, task_caps)
        claim_args = await self._claim_args(queues, limit, worker, lease, task_caps)
        args = [self._now_arg(), self.keys.store, _outcomes_json(outcomes), *claim_args]
        applied, reply = await self._hot_call(self._s.finish_claim, args)
        return [bool(x) for x in applied], self._claimed(reply)

    async def _claim_args(
        self,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None,
    ) -> list[Any]:
        assert self._wake is not None
        await self._wake.ensure(self.keys.wake(q) for q in queues)
        self._wake.flag.clear()  # wakes from now on are news to the next wait
        return [
            token_hex(12),
            worker,
            _num(lease),
            json.dumps(dict(task_caps or {})),
            CLAIM_PROMOTE_LIMIT,
            max(0, limit),
            *(self.keys.queue(q) for q in queues),
        ]

    async def _hot_call(self, script: Any, args: list[Any]) -> Any:
        """Run ``script`` (claim, finish_claim) on a connection kept for the purpose.

        A worker makes one of these calls per refill of its slots, and redis-py's
        general command path (argument encoding with type checks, the pool's lock and
        bookkeeping, retry and observability layers) cost about as much Python as the
        jobs of a refill themselves. The command is packed here and sent on the kept
        connection; errors and cancellation behave as on any redis-py connection (it is
        dropped, and connects again on next use; no command is retried). Cluster
        clients, a script or function the server lost (after a restart), and calls that
        overlap take the general path."""
        if self.options.cluster or self._hot_busy:
            return await script(keys=[self.keys.route], args=args)
        self._hot_busy = True
        try:
            if self._hot is None:
                self._hot = await self._client.connection_pool.get_connection()
            conn = self._hot
            head = (
                ["FCALL", script.function]
                if isinstance(script, FunctionScript)
                else ["EVALSHA", script.sha]
            )
            await conn.send_packed_command(_pack_command([*head, 1, self.keys.route, *args]))
            return await conn.read_response()
        except rexc.NoScriptError:
            pass  # loaded again below
        except rexc.ResponseError as exc:
            if not function_missing(exc):
                raise
        finally:
            self._hot_busy = False
        return await script(keys=[self.keys.route], args=args)

    def _claimed(self, reply: list[Any]) -> list[ClaimedJob]:
        self._note_due(reply[0], reply[1])
        return claimed_from_reply(reply)

    def _note_due(self, store_now: str, next_due: str) -> None:
        self._due_at = (
            None if not next_due else time.monotonic() + float(next_due) - float(store_now)
        )

    async def heartbeat(self, leases: Sequence[Lease], *, lease: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply(lost=frozenset(), cancel_requested=frozenset())
        args: list[Any] = [self._now_arg(), self.keys.store, _num(lease)]
        for held in leases:
            args += (held.id, held.token)
        reply: list[str] = await self._s.heartbeat(keys=[self.keys.route], args=args)
        split = reply.index("|")
        return HeartbeatReply(
            lost=frozenset(reply[:split]), cancel_requested=frozenset(reply[split + 1 :])
        )

    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        if any(o.kind is OutcomeKind.PARKED for o in outcomes):
            return await self._finish_with_parks(outcomes)
        args = [self._now_arg(), self.keys.store, _outcomes_json(outcomes)]
        reply: list[int] = await self._s.finish(keys=[self.keys.route], args=args)
        return [bool(x) for x in reply]

    async def _finish_with_parks(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Parks (rare) go through park.lua; the rest through finish.lua."""
        others = [o for o in outcomes if o.kind is not OutcomeKind.PARKED]
        done = iter(await self.finish(others))
        applied = []
        for out in outcomes:
            if out.kind is not OutcomeKind.PARKED:
                applied.append(next(done))
                continue
            args = [
                self._now_arg(),
                self.keys.store,
                out.id,
                out.lease_token,
                _num(out.retry_delay),
            ]
            applied.append(bool(await self._s.park(keys=[self.keys.route], args=args)))
        return applied

    async def complete_external(self, outcome: Outcome) -> ExternalReply:
        if outcome.kind not in _EXTERNAL_KINDS:
            raise ValueError(f"an external completion cannot be {outcome.kind.value!r}")
        args = [
            self._now_arg(),
            self.keys.store,
            outcome.id,
            outcome.lease_token,
            outcome.kind.value,
            outcome.result_json if outcome.result_json is not None else "",
            outcome.error_json or "",
            _num(outcome.retry_delay or 0.0),
        ]
        reply = await self._s.complete(keys=[self.keys.route], args=args)
        return ExternalReply(reply[0])

    async def expire_waiting(self, delay: RetryDelay | None = None) -> list[tuple[str, JobState]]:
        prefixes = await self._queue_prefixes()
        if not prefixes:
            return []
        # Two scripts: list the overdue jobs, compute their delays here, then expire
        # them fenced by state, deadline and attempt (a completion in between wins).
        now = self._now_arg()
        args = [now, self.keys.store, "list", *prefixes.values()]
        listed = await self._s.expire(keys=[self.keys.route], args=args)
        if not listed:
            return []
        args = [now, self.keys.store, "expire"]
        for i in range(0, len(listed), 4):
            qp, job_id, task, attempt = (str(v) for v in listed[i : i + 4])
            wait = delay(task, int(attempt)) if delay is not None else 0.0
            args += [qp, job_id, attempt, _num(wait)]
        flat = await self._s.expire(keys=[self.keys.route], args=args)
        return [(str(flat[i]), JobState(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def take_rate(self, lease: Lease, buckets: Sequence[RateBucket]) -> float:
        if not buckets:
            return 0.0
        args: list[str] = [self._now_arg(), self.keys.store, lease.id, lease.token]
        for b in buckets:
            args += [b.name, str(b.limit), _num(b.period)]
        reply = await self._s.rate(keys=[self.keys.route], args=args)
        return float(reply)

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        args = [
            self.keys.store,
            lease.id,
            lease.token,
            _num(fraction),
            message or "",
            0 if message is None else 1,
        ]
        return bool(await self._s.progress(keys=[self.keys.route], args=args))

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        wake = self._wake
        assert wake is not None
        names = list(queues)
        if await wake.ensure(self.keys.wake(q) for q in names):
            # Newly subscribed: wakes published before now were missed; look ourselves.
            store_now, ready, next_due = await self._s.probe(
                keys=[self.keys.route],
                args=[self._now_arg(), *(self.keys.queue(q) for q in names)],
            )
            if int(ready) > 0:
                return
            self._note_due(store_now, next_due)
        if self._due_at is not None:
            # A scheduled job falls due before the timeout: be back in time for it.
            deadline = min(deadline, self._due_at)
        remaining = deadline - time.monotonic()
        if not wake.flag.is_set() and remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    await wake.flag.wait()
            except TimeoutError:
                return
        wake.flag.clear()

    # -- maintenance -----------------------------------------------------------------
    async def _per_queue(self, script: Any, *extra: Any) -> int:
        prefixes = await self._queue_prefixes()
        if not prefixes:
            return 0
        args = [self._now_arg(), self.keys.store, *extra, *prefixes.values()]
        return int(await script(keys=[self.keys.route], args=args))

    async def reap(self) -> int:
        return (await self.reap_lost())[0]

    async def reap_lost(self) -> tuple[int, list[str]]:
        prefixes = await self._queue_prefixes()
        if not prefixes:
            return 0, []
        args = [self._now_arg(), self.keys.store, *prefixes.values()]
        reply = await self._s.reap(keys=[self.keys.route], args=args)
        return int(reply[0]), [str(i) for i in reply[1:]]

    async def promote(self) -> int:
        return await self._per_queue(self._s.promote)

    async def purge(self) -> int:
        total = 0
        while True:
            deleted = await self._per_queue(self._s.purge, PURGE_CHUNK)
            total += deleted
            if deleted < PURGE_CHUNK:
                break
        # Outbox entries nobody drained within the retention: stream ids are the
        # server's milliseconds, so the cut-off is read from the same clock.
        seconds, _ = await store_time(self._client, self.keys.route)
        cutoff = int((seconds - OUTBOX_RETENTION) * 1000)
        # Exact (not ``~``): an approximate trim only drops whole stream nodes (about 100
        # entries), so a small stale outbox would never shrink. Purge runs once a minute.
        await self._client.xtrim(self.keys.outbox, minid=f"{max(cutoff, 0)}-0", approximate=False)
        return total

    async def take_events(self, limit: int) -> list[StoreEvent]:
        if limit <= 0:
            return []
        entries = await self._client.xrange(self.keys.outbox, count=limit)
        return [
            StoreEvent(ref=str(ref), name=str(fields["e"]), job_id=str(fields["id"]))
            for ref, fields in entries
        ]

    async def ack_events(self, refs: Sequence[str]) -> None:
        if refs:
            await self._client.xdel(self.keys.outbox, *refs)

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        args = [self._now_arg(), owner, _num(ttl)]
        return bool(await self._s.try_lock(keys=[self.keys.lock(name)], args=args))

    async def unlock(self, name: str, owner: str) -> None:
        await self._s.unlock(keys=[self.keys.lock(name)], args=[owner])

    # -- operators -------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        fields = await self._client.hgetall(self.keys.job(job_id))
        return job_from_hash(fields) if fields else None

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        if not job_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            replies = await pipe.execute()
        return [job_from_hash(fields) if fields else None for fields in replies]

    async def query(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        limit = max(0, limit)
        if limit == 0:
            return []
        if queue is not None:
            prefixes = [self.keys.queue(queue)]
        else:
            prefixes = list((await self._queue_prefixes()).values())
        if not prefixes:
            return []
        states = STATES if state is None else (JobState(state).value,)
        args: list[Any] = [
            self.keys.store,
            min(limit, QUERY_PAGE),
            0 if tenant is None else 1,
            tenant or "",
            0 if task is None else 1,
            task or "",
            len(states),
            *states,
            *prefixes,
        ]
        # In pages of at most QUERY_PAGE jobs per (queue, state), newest first: a script
        # holds the whole server while it runs, so a caller asking for a million jobs
        # must not make it one script. Each call returns the newest page of every
        # (queue, state) below the last id taken, so the newest page of their union is
        # exact; the rest is read again by the next call.
        found: list[Job] = []
        before = ""
        while len(found) < limit:
            rows = await self._s.query(keys=[self.keys.route], args=[*args, before])
            jobs = sorted((job_from_hash(pairs(row)) for row in rows), key=_job_id, reverse=True)
            found += jobs[: min(QUERY_PAGE, limit - len(found))]
            if len(jobs) < QUERY_PAGE:
                break  # every (queue, state) below `before` fitted in this page
            before = found[-1].id
        return found

    async def cancel(self, job_id: str) -> JobState | None:
        args = [self._now_arg(), self.keys.store, job_id]
        state = await self._s.cancel(keys=[self.keys.route], args=args)
        return None if state is None else JobState(state)

    async def replay(self, job_id: str) -> bool:
        args = [self._now_arg(), self.keys.store, job_id]
        reply = await self._s.replay(keys=[self.keys.route], args=args)
        if isinstance(reply, list):
            holder, key = reply
            raise InvalidTransition(
                f"cannot replay job {job_id}: its dedup key {key!r} is held by active job "
                f"{holder}; wait for that job to finish or cancel it first"
            )
        return bool(reply)

    async def set_tenant(
        self, queue: str, tenant: str | None, *, weight: float, max_running: int | None
    ) -> None:
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"tenant weight must be a finite number > 0, not {weight!r}")
        if max_running is not None and max_running < 0:
            raise ValueError(f"max_running must be >= 0 or None, not {max_running!r}")
        args = [
            self.keys.store,
            queue,
            self.keys.queue(queue),
            tenant or "",
            _num(weight),
            "" if max_running is None else int(max_running),
        ]
        await self._s.set_tenant(keys=[self.keys.route], args=args)

    async def set_queue(self, queue: str, *, aging: float | None) -> None:
        if aging is not None and not (math.isfinite(aging) and aging > 0):
            raise ValueError(f"aging must be a number of seconds > 0 or None, not {aging!r}")
        args = [self.keys.store, queue, self.keys.queue(queue), _num(aging)]
        await self._s.set_queue(keys=[self.keys.route], args=args)

    async def stats(self) -> list[QueueStats]:
        prefixes = await self._queue_prefixes()
        args: list[Any] = [self._now_arg(), self.keys.store]
        for name, prefix in prefixes.items():
            args += (name, prefix)
        return stats_from_reply(await self._s.stats(keys=[self.keys.route], args=args))

    # -- records: small JSON documents (API tokens, ...) --------------------------------
    # One hash per kind under the store's hash tag; each primitive is one command, so
    # atomic without a script.
    def _records_key(self, kind: str) -> str:
        return f"{self.keys.store}rec:{len(kind)}:{kind}"

    async def put_record(self, kind: str, key: str, value_json: str) -> None:
        await self._client.hset(self._records_key(kind), key, value_json)

    async def get_record(self, kind: str, key: str) -> str | None:
        value = await self._client.hget(self._records_key(kind), key)
        return None if value is None else _text(value)

    async def list_records(self, kind: str) -> list[tuple[str, str]]:
        found = await self._client.hgetall(self._records_key(kind))
        return sorted((_text(k), _text(v)) for k, v in found.items())

    async def delete_record(self, kind: str, key: str) -> bool:
        return bool(await self._client.hdel(self._records_key(kind), key))

    # -- queue depth by priority (depth.lua) ----------------------------------------------
    async def waiting_counts(self) -> list[DepthCount]:
        rows: list[tuple[str, str, int, str, int]] = []
        for name, prefix in (await self._queue_prefixes()).items():
            for state in WAITING_STATES:
                offset = 0
                while True:  # one page per call; 'queued' answers in one call
                    args: list[str | int] = [self.keys.store, prefix, state, offset, _DEPTH_PAGE]
                    reply = await self._s.depth(keys=[self.keys.route], args=args)
                    for i in range(1, len(reply), 3):
                        rows.append((name, reply[i], int(reply[i + 1]), state, int(reply[i + 2])))
                    if int(reply[0]) < _DEPTH_PAGE:
                        break
                    offset += _DEPTH_PAGE
        # Pages of one state can split a (tenant, priority): sum them.
        totals: dict[tuple[str, str, int, str], int] = {}
        for queue, tenant, prio, state, n in rows:
            key = (queue, tenant, prio, state)
            totals[key] = totals.get(key, 0) + n
        return depth_counts((*key, n) for key, n in totals.items())


def _job_id(job: Job) -> str:
    return job.id


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
