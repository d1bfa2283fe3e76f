"""The backend protocol: a small set of atomic storage primitives.

Everything above this line (serialization, retry decisions, the worker) lives in the
core and is written once; a backend only stores plain rows and performs each primitive
as ONE atomic operation (one SQL transaction, one Lua script). Times are seconds since
the epoch as floats and always come from the store's clock (``now()``), never from the
caller, so that leases and due times agree across machines.

Conventions every backend honours (the conformance suite in ``tests/contract`` checks):

* The default tenant is ``None`` at this interface; a backend may store it as ``""``.
* Ready jobs of a queue are ordered by: priority (0 first, strict) -> the tenant with
  the smallest virtual time among tenants with a ready job at that priority -> FIFO
  (job id, a UUIDv7, is creation order). Claiming a job advances its tenant's virtual
  time by ``1 / weight``. A tenant that had no ready job in the queue and gets one
  starts at ``max(its virtual time, the queue's virtual clock)``; the queue's virtual
  clock is the virtual time of the last tenant claimed from, so idleness banks no credit.
* Caps skip candidates: a task at its ``concurrency`` (running jobs of the task across
  the store) and a tenant at its ``max_running`` (running jobs of the tenant in the queue).
* ``claim`` increments ``attempt`` and issues a fresh random ``lease_token``. Every later
  write about a running job (heartbeat, progress, finish) names that token and is
  rejected (returns False / reports the job lost) when the token no longer matches.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from conveyor.job import Job, JobState

Clock = Callable[[], float]
#: ``(task name, attempt) -> seconds`` before the next attempt of a job whose waiting
#: deadline passed: the core's retry policy, since the store does not know tasks.
RetryDelay = Callable[[str, int], float]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do, declared instead of silently skipped."""

    #: ``wait_for_work`` is woken by a push from the store (LISTEN/NOTIFY, blocking pop)
    #: rather than by polling.
    push_wakeups: bool = False
    #: Works across machines (False for SQLite: one machine, many processes).
    multi_host: bool = False
    #: ``enqueue`` can join a caller's own database transaction.
    transactional_enqueue: bool = False
    #: ``OutcomeKind.PARKED``, ``complete_external`` and ``expire_waiting`` (jobs
    #: completed by an outside service, ``conveyor.Await``).
    external_completion: bool = False
    #: ``enqueue_blocking`` stores jobs from the calling thread, without an event loop:
    #: the sync API then skips its hop through the background loop.
    blocking_enqueue: bool = False


# Not frozen, unlike the records: one is built per enqueued job, and a frozen
# dataclass's __init__ (object.__setattr__ per field) cost a sixth of the client time of
# a large enqueue_many. Nothing changes one after it is built.
@dataclass(slots=True)
class NewJob:
    """A job to insert. Arguments are already validated and JSON-encoded by the core."""

    id: str
    task: str
    queue: str
    tenant: str | None
    priority: int
    args_json: str
    kwargs_json: str
    max_attempts: int
    #: Seconds from the store's now before the job is due; 0 or None means ready now.
    delay: float | None = None
    #: Absolute due time (epoch seconds). When set, wins over ``delay``.
    run_at: float | None = None
    timeout: float | None = None
    #: Seconds a succeeded or cancelled job is kept before it is purged; None keeps it.
    result_ttl: float | None = None
    #: Dedup key: while a job with this key is active (scheduled, queued, running,
    #: retrying, blocked), enqueueing another returns the active job's id instead.
    key: str | None = None
    #: Seconds (from the store's now) the ``key`` stays reserved after this job was
    #: enqueued, whatever state the job is in; None reserves it only while active.
    unique_for: float | None = None
    #: Ids of jobs that must finish first: the job is ``blocked`` until all of them
    #: succeeded (then ``queued``, or ``scheduled`` if its own due time is still ahead).
    #: Each must exist (in the store, or earlier in the same ``enqueue`` call).
    after: tuple[str, ...] = ()
    #: ``"success"``: a dependency ending ``dead``/``cancelled`` cancels this job (with a
    #: ``DependencyFailed`` error naming it); ``"always"``: it runs anyway.
    after_policy: str = "success"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job handed to a worker by ``claim``, under lease ``lease_token``."""

    id: str
    task: str
    queue: str
    tenant: str | None
    priority: int
    args_json: str
    kwargs_json: str
    attempt: int
    max_attempts: int
    timeout: float | None
    lease_token: str
    lease_expires_at: float
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    token: str


@dataclass(frozen=True, slots=True)
class RateBucket:
    """A rate limit's shared state in the store: at most ``limit`` starts per ``period``
    seconds (bursts of up to ``limit``), for every job that names ``name``."""

    name: str
    limit: int
    period: float


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"  # -> succeeded, result stored, expires after result_ttl
    # -> retrying until now + retry_delay (queued at once if delay <= 0); a job with no
    # attempts left goes dead instead, so the store itself keeps attempt <= max_attempts.
    RETRY = "retry"
    DEAD = "dead"  # -> dead (the dead-letter queue)
    CANCELLED = "cancelled"  # -> cancelled (the worker honoured a cancel request)
    RELEASED = "released"  # -> queued, attempt given back (graceful shutdown)
    # -> waiting until now + retry_delay (the deadline); the lease token becomes the
    # completion token (cancelled instead if a cancel was requested meanwhile).
    PARKED = "parked"


class ExternalReply(StrEnum):
    """What ``complete_external`` did."""

    APPLIED = "applied"
    #: No such job, or the token is not its completion token (one answer for both, so
    #: a caller without the token learns nothing about the job).
    UNKNOWN = "unknown"
    #: The token matches but the deadline has passed (the job times out, or did).
    LATE = "late"
    #: The token matches but the job is no longer waiting (completed, cancelled).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended. Applied only if ``lease_token`` still holds the job.

    For ``complete_external`` the ``lease_token`` is the completion token and ``kind``
    is SUCCEEDED, RETRY or DEAD; ``retry_delay`` of PARKED is the deadline in seconds.
    """

    id: str
    lease_token: str
    kind: OutcomeKind
    result_json: str | None = None
    #: One error record, JSON-encoded (see ``JobError.to_json``), appended to the history.
    error_json: str | None = None
    retry_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    #: Leases that no longer hold (expired and reaped, job cancelled outright, replayed).
    lost: frozenset[str]
    #: Jobs whose lease was renewed but which someone asked to cancel.
    cancel_requested: frozenset[str]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one (queue, tenant) pair."""

    queue: str
    tenant: str | None
    scheduled: int
    queued: int
    running: int
    retrying: int
    dead: int
    succeeded: int
    cancelled: int
    #: Seconds the oldest ready job has waited since it became ready; None if none ready.
    oldest_wait: float | None
    weight: float = 1.0
    max_running: int | None = None
    blocked: int = 0
    waiting: int = 0


#: The per-state counts of ``QueueStats``, in lifecycle order (for tables and metrics).
STATS_STATES: tuple[str, ...] = (
    "blocked",
    "scheduled",
    "queued",
    "running",
    "waiting",
    "retrying",
    "dead",
    "succeeded",
    "cancelled",
)

#: The states of jobs that wait to run (not running, not finished), counted by
#: ``Backend.waiting_counts`` per priority.
WAITING_STATES: tuple[str, ...] = ("blocked", "scheduled", "queued", "waiting", "retrying")


#: Outbox entries older than this are dropped by ``purge`` even if never announced (no
#: worker ran maintenance for that long): an announcement a week late helps no one, and
#: the outbox must not grow without bound.
OUTBOX_RETENTION = 7 * 86400.0
#: The one event the store itself records today (see ``Backend.take_events``).
JOB_CANCELLED = "job.cancelled"


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """An announcement the store owes: ``name`` happened to job ``job_id``.

    ``ref`` is the entry's opaque position in the outbox, handed back to
    ``ack_events`` once the event was announced."""

    ref: str
    name: str
    job_id: str


@dataclass(frozen=True, slots=True)
class DepthCount:
    """How many jobs of one (queue, tenant, priority) are in one waiting state.

    ``priority`` is the job's current level: a queued job that aging lifted counts at
    the level it is claimed at now."""

    queue: str
    tenant: str | None
    priority: int
    state: str
    count: int


class Backend(abc.ABC):
    """One store. Instances are bound to the event loop that opened them."""

    capabilities: Capabilities = Capabilities()
    #: Errors that mean "the store is briefly unreachable or busy": the worker logs them,
    #: backs off and tries again instead of stopping.
    transient_errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    #: The default of ``Worker(prefetch=)``, in jobs per slot of its concurrency. An
    #: engine whose claim costs much per call and little per job (a transaction and a
    #: commit on PostgreSQL) raises it, so that each call of a worker on a deep queue of
    #: short jobs carries more of them.
    prefetch_per_slot: int = 1

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        #: Test hook: replaces the store's clock (e.g. a fake clock that never sleeps).
        self.clock = clock

    # -- lifecycle ---------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema; returns the versions applied (``conveyor migrate``).

        Idempotent and safe from many processes at once. Engines whose ``open()`` sets
        up everything keep this default.
        """
        await self.open()
        return []

    @abc.abstractmethod
    async def now(self) -> float:
        """The store's clock (or the injected test clock)."""

    # -- producers ---------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        """Insert jobs atomically; returns their ids in order.

        A job whose ``key`` matches an active job is not inserted; the active job's id is
        returned in its place.
        """

    def enqueue_in_transaction(self, connection: Any, jobs: Sequence[NewJob]) -> list[str]:
        """Like ``enqueue``, on the caller's own open (sync) connection and transaction.

        The jobs exist if and only if the caller's transaction commits. Needs no
        ``open()``. Only engines with ``capabilities.transactional_enqueue``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no transactional enqueue")

    async def enqueue_in_transaction_async(
        self, connection: Any, jobs: Sequence[NewJob]
    ) -> list[str]:
        """``enqueue_in_transaction`` on the caller's async connection."""
        raise NotImplementedError(f"{type(self).__name__} has no transactional enqueue")

    def enqueue_blocking(self, jobs: Sequence[NewJob]) -> list[str]:
        """``enqueue`` for sync callers, run in the calling thread; safe from many threads.

        Connects on first use (with the same server checks as ``open()``), independently
        of ``open()``. Only engines with ``capabilities.blocking_enqueue``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no blocking enqueue")

    def close_blocking(self) -> None:  # noqa: B027 (optional: most engines open nothing)
        """Close what ``enqueue_blocking`` opened (idempotent)."""

    # -- workers -----------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        task_caps: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        """Promote due jobs, then claim up to ``limit`` ready jobs.

        Queues are served in the order given: the first queue is drained of claimable
        jobs before the second is looked at. ``task_caps`` maps task name to its
        ``concurrency`` (running jobs of that task in the whole store).
        """

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
        """``finish(outcomes)``, then ``claim(...)``: the worker's steady state.

        An engine may do both in one atomic operation and one round trip; the outcomes
        are applied first either way, so the slots and caps they free count for the claim.
        """
        applied = await self.finish(outcomes) if outcomes else []
        claimed = await self.claim(queues, limit, worker=worker, lease=lease, task_caps=task_caps)
        return applied, claimed

    @abc.abstractmethod
    async def heartbeat(self, leases: Sequence[Lease], *, lease: float) -> HeartbeatReply:
        """Extend each held lease to now + ``lease``."""

    @abc.abstractmethod
    async def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one transaction; False where the lease no longer held."""

    @abc.abstractmethod
    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        """Record progress of a running job; False if the lease no longer holds."""

    async def take_rate(self, lease: Lease, buckets: Sequence[RateBucket]) -> float:
        """Take one start from every bucket for the running job ``lease``, atomically.

        Returns 0.0: the job may run now. Otherwise the store has already reserved the
        job's slot in every bucket (the slots of later callers come after it) and moved
        the job back to ``scheduled`` until that slot, attempt given back (``cancelled``
        instead if a cancel was requested, recorded in the outbox: see ``take_events``);
        the caller drops the attempt. When the job
        is claimed again, its reservations are used and it runs. Returns the seconds
        until the slot. A lease that no longer holds returns 0.0 and changes nothing
        (the worker's outcome will be rejected as usual).

        Rate state follows the generic cell rate algorithm: per bucket one
        "theoretical arrival time"; a start costs ``period / limit`` seconds of it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no rate limits")

    @abc.abstractmethod
    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job may have become ready in ``queues``, or after ``timeout``.

        Spurious returns are allowed; the worker simply claims and finds nothing.
        """

    # -- maintenance (run by one elected worker) ---------------------------------------
    @abc.abstractmethod
    async def reap(self) -> int:
        """Expired leases: back to ``queued``, or ``dead`` when out of attempts, or
        ``cancelled`` (recorded in the outbox) when a cancel was requested.

        Records the error ``WorkerLost: worker lost (lease expired)`` for the attempt.
        Returns how many jobs were reaped.
        """

    async def complete_external(self, outcome: Outcome) -> ExternalReply:
        """Finish a ``waiting`` job from outside, fenced by its completion token.

        Applied only while the job is waiting with that token and its deadline has not
        passed (a RETRY follows the same rules as ``finish``). Dependents are settled as
        on any finish. Only engines with ``capabilities.external_completion``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no external completion")

    async def expire_waiting(self, delay: RetryDelay | None = None) -> list[tuple[str, JobState]]:
        """Waiting jobs past their deadline time out with the error ``ExternalTimeout``:
        ``retrying`` until now + ``delay(task, attempt)`` while attempts are left
        (``queued`` at once when that is 0 or ``delay`` is None), else ``dead``.

        Atomic per job and fenced: a job completed meanwhile is left alone.

        Returns ``(job id, new state)`` of each (the caller announces ``job.timeout``).
        """
        return []

    async def reap_lost(self) -> tuple[int, list[str]]:
        """``reap``, also returning the ids of the jobs it sent to ``dead`` (the worker
        announces ``job.dead`` for them). Engines that cannot tell return no ids. The
        jobs it cancels (a cancel was pending) are recorded in the outbox instead."""
        return await self.reap(), []

    # -- the outbox: events the store produced itself -----------------------------------
    # The store cancels jobs no worker holds: a dependent whose dependency failed (the
    # cascade, which is how a failed batch's merge job ends) and ``cancel`` of a job that
    # is not running. No worker reports an outcome for those, so the same atomic
    # operation appends ``("job.cancelled", id)`` to an outbox that the maintenance loop
    # drains. So does a running job cancelled with no worker outcome behind it: the
    # reaper's (``reap``: its worker is lost) and a rate-limit deferral's (``take_rate``:
    # the attempt was given back). A running job cancelled by its worker's outcome (its
    # own CANCELLED, or a retry, release or park the store turned into cancelled) is
    # never recorded: its worker announces it, so nothing is said twice.
    @abc.abstractmethod
    async def take_events(self, limit: int) -> list[StoreEvent]:
        """Up to ``limit`` of the oldest outbox entries, oldest first, left in place.

        Delivery is at-least-once: the caller announces them, then ``ack_events``; a
        caller that dies in between leaves them for the next one. One caller at a time
        (the maintenance lock holder) is expected; two would announce the same entries.
        """

    @abc.abstractmethod
    async def ack_events(self, refs: Sequence[str]) -> None:
        """Delete the outbox entries ``refs`` (from ``take_events``); unknown refs are
        ignored."""

    @abc.abstractmethod
    async def promote(self) -> int:
        """Due ``scheduled``/``retrying`` jobs -> ``queued``; apply queue priority aging."""

    @abc.abstractmethod
    async def purge(self) -> int:
        """Delete finished jobs whose ``expires_at`` has passed, and outbox entries
        older than ``OUTBOX_RETENTION``."""

    @abc.abstractmethod
    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lock for ``ttl`` seconds; False if another owner holds it."""

    @abc.abstractmethod
    async def unlock(self, name: str, owner: str) -> None: ...

    # -- operators ---------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """``get`` for each id, in order (engines may do it in one round trip)."""
        return [await self.get(job_id) for job_id in job_ids]

    @abc.abstractmethod
    async def query(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs matching every given filter, newest first."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobState | None:
        """Cancel a job; returns its state afterwards (None if there is no such job).

        Waiting jobs become ``cancelled`` at once (recorded in the outbox, see
        ``take_events``, as are the dependents this cancels); a running job gets a cancel request,
        stays ``running`` and is cancelled by its worker at the next check. A job that
        already finished is left alone and its final state returned.
        """

    @abc.abstractmethod
    async def replay(self, job_id: str) -> bool:
        """``dead`` or ``cancelled`` -> ``queued`` with a fresh attempt budget.

        False if there is no such job or it is in another state. Error history is kept.
        """

    @abc.abstractmethod
    async def set_tenant(
        self, queue: str, tenant: str | None, *, weight: float, max_running: int | None
    ) -> None: ...

    @abc.abstractmethod
    async def set_queue(self, queue: str, *, aging: float | None) -> None:
        """Per-queue settings. ``aging``: a ready job moves up one priority level for
        every ``aging`` seconds it waits (None turns aging off)."""

    @abc.abstractmethod
    async def stats(self) -> list[QueueStats]: ...

    # -- records: small JSON documents kept in the store (API tokens, later webhooks) --
    # Not jobs: a plain key -> JSON table, so that every server process on every machine
    # sees the same tokens. ``kind`` names the collection ("token"); ``key`` is unique
    # within it. Each primitive is one atomic operation.
    @abc.abstractmethod
    async def put_record(self, kind: str, key: str, value_json: str) -> None:
        """Insert or replace the record ``(kind, key)``."""

    @abc.abstractmethod
    async def get_record(self, kind: str, key: str) -> str | None:
        """The record's JSON, or None if there is none."""

    @abc.abstractmethod
    async def list_records(self, kind: str) -> list[tuple[str, str]]:
        """Every ``(key, value_json)`` of ``kind``, ordered by key."""

    @abc.abstractmethod
    async def delete_record(self, kind: str, key: str) -> bool:
        """Delete the record; False if there was none."""

    # -- queue depth by priority (``/metrics``) ------------------------------------------
    @abc.abstractmethod
    async def waiting_counts(self) -> list[DepthCount]:
        """Jobs in each of ``WAITING_STATES`` per (queue, tenant, priority, state), only
        non-zero counts, sorted by (queue, tenant or '', priority, state). Finished jobs
        are never read: the cost follows the backlog of waiting jobs, not the history."""


def job_error_json(attempt: int, type_: str, message: str, at: float, tb: str | None = None) -> str:
    """Helper for backends that record errors themselves (the reaper)."""
    from conveyor.serialize import dumps

    return dumps({"attempt": attempt, "type": type_, "message": message, "traceback": tb, "at": at})


#: Error type recorded on a waiting job whose deadline passed.
EXTERNAL_TIMEOUT = "ExternalTimeout"
EXTERNAL_TIMEOUT_MESSAGE = "no external completion before the deadline"
#: Error type recorded by ``fail_external`` unless the caller names one.
EXTERNAL_FAILURE = "ExternalFailure"


def external_refusal(
    state: str, deadline: float | None, last_error_type: str | None, now: float
) -> ExternalReply:
    """Why ``complete_external`` with the right token did not apply (one rule for every
    engine): still waiting past its deadline, or expired by it -> LATE; else CLOSED."""
    if state == JobState.WAITING:
        late = deadline is not None and deadline <= now
        return ExternalReply.LATE if late else ExternalReply.CLOSED
    return ExternalReply.LATE if last_error_type == EXTERNAL_TIMEOUT else ExternalReply.CLOSED


#: Error type recorded on a job cancelled because a dependency ended dead or cancelled.
DEPENDENCY_FAILED = "DependencyFailed"
AFTER_POLICIES = ("success", "always")


def dependency_failed_message(dep_id: str, dep_task: str, dep_state: str) -> str:
    """The error message of a dependent cancelled by a failed dependency (one wording on
    every engine; the SQL and Lua versions build the same text)."""
    return f"dependency {dep_id} ({dep_task}) ended {dep_state}"


class DependencyNotFound(ValueError):
    """``after=`` named a job that does not exist: dependencies must exist first."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"after=: no job with id {job_id!r} (a dependency must exist before the job "
            "that waits for it)"
        )


def decode_tenant(value: Any) -> str | None:
    return value if value else None


def depth_counts(rows: Iterable[Sequence[Any]]) -> list[DepthCount]:
    """``(queue, tenant, priority, state, count)`` rows (tenant '' = default) as the
    sorted, non-zero ``DepthCount`` list ``waiting_counts`` returns."""
    found = [
        DepthCount(str(q), decode_tenant(t), int(p), str(s), int(n))
        for q, t, p, s, n in rows
        if int(n) > 0
    ]
    found.sort(key=lambda d: (d.queue, d.tenant or "", d.priority, d.state))
    return found
