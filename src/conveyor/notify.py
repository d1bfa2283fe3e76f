"""Notifications: in-process listeners (``app.on``) and signed webhooks.

Workers emit an event once the store has accepted how an attempt ended:
``job.succeeded``, ``job.retrying``, ``job.dead`` and ``job.cancelled``; also
``batch.finished`` when the job was a batch's merge job (its ``job_id`` is the batch's
id), and ``job.timeout`` when a waiting job's deadline passed (``conveyor.Await``).
The worker running maintenance also announces what it changed itself: ``job.timeout``
and ``job.dead`` for jobs the reaper or the deadline expiry sent to dead; and what the
store changed on its own, from the store's outbox (``Backend.take_events``):
``job.cancelled`` for a job cancelled while no worker held it (``cancel`` of a job that
was not running, a dependent cancelled because its dependency failed), plus
``batch.finished`` when that job is a batch's merge job (the batch failed: ``error`` is
the merge job's ``DependencyFailed`` with ``failures``, the batch's failed jobs), and
``job.cancelled`` for a running job the reaper cancelled (its worker was lost while a
cancel was pending). Any other running job's cancellation is announced by its worker,
never from the outbox: its own ``CANCELLED`` outcome, and also a retry, release or park
that the store turned into ``cancelled`` because the cancel request came after the worker's
last heartbeat (the worker reads the job back to tell). In the worker process,
listeners registered with ``@app.on("job.succeeded")`` are called with an ``Event``.
Webhooks (records of kind ``webhook``, registered through the HTTP API) that match the
event's name, tenant and queue each get a delivery *job* of the built-in task
``conveyor.webhook``: delivery is durable, retried with backoff by the workers, and its
attempts and errors are the delivery log (``GET /webhooks/{id}/deliveries``).

Each delivery is an HTTP POST of the event as JSON, signed with the webhook's secret:
``X-Conveyor-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` and
``X-Conveyor-Timestamp: <unix seconds>``; ``verify()`` shows a receiver's check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import inspect
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from conveyor.backends.base import Backend, ClaimedJob, Outcome, OutcomeKind
from conveyor.job import Job, JobState
from conveyor.retry import Backoff, Fail
from conveyor.serialize import loads
from conveyor.task import EnqueueOptions, Signature
from conveyor.workflow import MARKER, is_marker

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.notify")

EVENTS = (
    "job.succeeded",
    "job.retrying",
    "job.dead",
    "job.cancelled",
    "job.timeout",
    "batch.finished",
)
BATCH_FINISHED = "batch.finished"
KIND = "webhook"
DELIVER_TASK = "conveyor.webhook"
#: Seconds a worker trusts its copy of the webhook list before reading it again.
WEBHOOKS_TTL = 5.0
DELIVERY_TIMEOUT = 10.0
SIGNATURE_TOLERANCE = 300
_FINAL_KINDS = (OutcomeKind.SUCCEEDED, OutcomeKind.DEAD, OutcomeKind.CANCELLED)
#: Outcomes the store turns into ``cancelled`` when a cancel was requested while the
#: attempt ran; the worker reads such jobs back after ``finish`` to tell (worker/loop.py
#: ``Worker._cancelled_by_store``) and announces ``job.cancelled`` for them instead.
MAY_BE_CANCELLED = frozenset({OutcomeKind.RETRY, OutcomeKind.RELEASED, OutcomeKind.PARKED})
_EVENT_OF = {
    OutcomeKind.SUCCEEDED: "job.succeeded",
    OutcomeKind.RETRY: "job.retrying",
    OutcomeKind.DEAD: "job.dead",
    OutcomeKind.CANCELLED: "job.cancelled",
}

Listener = Callable[["Event"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    job_id: str
    task: str
    queue: str
    tenant: str | None
    attempt: int
    at: float
    result: Any = None
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "tenant": self.tenant,
            "attempt": self.attempt,
            "at": self.at,
            "result": self.result,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    events: tuple[str, ...]
    #: Only this tenant's events; None (admins only) for every tenant's.
    tenant: str | None
    #: Only this queue's events; None for every queue.
    queue: str | None
    secret: str
    created_at: float = field(default=0.0)

    def matches(self, event: Event) -> bool:
        return (
            event.name in self.events
            and (self.tenant is None or self.tenant == event.tenant)
            and (self.queue is None or self.queue == event.queue)
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "events": list(self.events),
                "tenant": self.tenant,
                "queue": self.queue,
                "secret": self.secret,
                "created_at": self.created_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, webhook_id: str, text: str) -> Webhook:
        data = json.loads(text)
        return cls(
            id=webhook_id,
            url=str(data["url"]),
            events=tuple(data.get("events") or ()),
            tenant=data.get("tenant") or None,
            queue=data.get("queue") or None,
            secret=str(data["secret"]),
            created_at=float(data.get("created_at") or 0.0),
        )


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature over the raw body, and a recent timestamp."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False  # an old delivery replayed by someone who recorded it
    return hmac.compare_digest(sign(secret, ts, body), signature)


class Notifier:
    """One per app: its listeners, and the worker's cached copy of the webhooks."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.listeners: dict[str, list[Listener]] = {}
        self._webhooks: list[Webhook] = []
        self._fetched_at: float | None = None

    def on(self, event: str) -> Callable[[Listener], Listener]:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")

        def register(listener: Listener) -> Listener:
            self.listeners.setdefault(event, []).append(listener)
            return listener

        return register

    def wants(self, job: ClaimedJob, outcome: Outcome) -> bool:
        """Cheap test in the worker: may this outcome need announcing?"""
        if job.task == DELIVER_TASK:  # deliveries announce nothing
            return False
        name = _EVENT_OF.get(outcome.kind)
        if name is not None and self._wants(job, outcome, name):
            return True
        if outcome.kind in MAY_BE_CANCELLED:  # the store may turn it into cancelled
            cancelled = dataclasses.replace(outcome, kind=OutcomeKind.CANCELLED)
            return self._wants(job, cancelled, "job.cancelled")
        return False

    def _wants(self, job: ClaimedJob, outcome: Outcome, name: str) -> bool:
        if self._stale() or self._webhooks or self.listeners.get(name):
            return True
        return bool(self.listeners.get(BATCH_FINISHED)) and _batch_end(job, outcome)

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > WEBHOOKS_TTL

    async def emit(self, backend: Backend, finished: list[tuple[ClaimedJob, Outcome]]) -> None:
        """Announce accepted outcomes; never raises (a notification is not the job).

        Listeners are called in order; the webhook deliveries of the whole batch are
        enqueued in one write, on the worker's own connection.
        """
        events = []
        for job, outcome in finished:
            event = _event(job, outcome)
            if event is not None:
                events.append(event)
                if _batch_end(job, outcome):
                    events.append(_replace_name(event, BATCH_FINISHED))
        await self.publish(backend, events)

    async def publish(self, backend: Backend, events: list[Event]) -> None:
        """Call the listeners of each event and queue its webhook deliveries; never
        raises."""
        for event in events:
            for listener in self.listeners.get(event.name, []):
                try:
                    maybe = listener(event)
                    if inspect.isawaitable(maybe):
                        await maybe
                except Exception:
                    log.exception("listener %r for %s failed", listener, event.name)
        if not events:
            return
        try:
            await self._deliver(backend, events)
        except Exception:
            log.exception("could not queue webhook deliveries for %d event(s)", len(events))

    async def _deliver(self, backend: Backend, events: list[Event]) -> None:
        if self._stale():
            records = await backend.list_records(KIND)
            self._webhooks = [Webhook.from_json(k, v) for k, v in records]
            self._fetched_at = time.monotonic()
        deliveries = [
            self.app._new_job(
                Signature(
                    DELIVER_TASK,
                    (hook.id, event.to_json()),
                    {},
                    EnqueueOptions(tenant=event.tenant, queue=event.queue),
                )
            )
            for event in events
            for hook in self._webhooks
            if hook.matches(event)
        ]
        if deliveries:  # in each event job's own queue and tenant
            await backend.enqueue(deliveries)


def _new_event(
    name: str, job: ClaimedJob | Job, result: Any, error: dict[str, Any] | None
) -> Event | None:
    if job.task == DELIVER_TASK:  # deliveries announce nothing
        return None
    return Event(
        name=name,
        job_id=job.id,
        task=job.task,
        queue=job.queue,
        tenant=job.tenant,
        attempt=job.attempt,
        at=time.time(),
        result=result,
        error=error,
    )


def _event(job: ClaimedJob, outcome: Outcome) -> Event | None:
    """The event of an outcome a worker sent (and the store accepted)."""
    name = _EVENT_OF.get(outcome.kind)
    if name is None:
        return None
    error = loads(outcome.error_json) if outcome.error_json else None
    result = loads(outcome.result_json) if outcome.result_json else None
    return _new_event(name, job, result, error if isinstance(error, dict) else None)


#: How a batch's merge job's arguments start (``workflow.results_marker`` for many
#: results): checked on the raw JSON, so other jobs cost no decoding.
_MERGE_PREFIX = '[{"' + MARKER + '":"results"'


def _batch_end(job: ClaimedJob, outcome: Outcome) -> bool:
    """Did a batch's merge job reach a final state with this outcome?"""
    if outcome.kind not in _FINAL_KINDS or not job.args_json.startswith(_MERGE_PREFIX):
        return False
    try:
        marker = loads(job.args_json)[0]
    except (ValueError, IndexError, TypeError):
        return False
    return _merges_batch(marker)


def _merges_batch(marker: Any) -> TypeGuard[dict[str, Any]]:
    """Is ``marker`` (a job's first argument) the results marker of a batch's merge?"""
    return isinstance(marker, dict) and is_marker(marker) and not marker.get("single", True)


def _replace_name(event: Event, name: str) -> Event:
    return dataclasses.replace(event, name=name)


def job_event(name: str, job: Job, error: dict[str, Any] | None = None) -> Event | None:
    """An event about a job read from the store (expired or reaped by the maintenance
    loop, completed from outside)."""
    last = job.errors[-1].to_json() if error is None and job.errors else error
    return _new_event(name, job, job.result, last)


def batch_chunks(job: Job) -> list[str] | None:
    """The ids of the batch whose merge job ``job`` is (read from the store), else None."""
    marker = job.args[0] if job.args else None
    if not _merges_batch(marker):
        return None
    return [str(i) for i in marker.get("of") or ()]


def batch_cancelled_event(merge: Job, chunks: Sequence[Job | None]) -> Event | None:
    """``batch.finished`` for a batch whose merge job the store cancelled (a job of the
    batch ended dead or cancelled, or someone cancelled the batch before it ran).

    ``job_id`` is the batch's id; ``error`` is the merge job's last error (a
    ``DependencyFailed`` naming the job that failed first) plus ``failures``: every job
    of the batch that had failed by then, as ``{"job", "state", "type", "message"}``.
    """
    failures = [
        {
            "job": chunk.id,
            "state": chunk.state.value,
            "type": chunk.error.type if chunk.error else None,
            "message": chunk.error.message if chunk.error else None,
        }
        for chunk in chunks
        if chunk is not None and chunk.state in (JobState.DEAD, JobState.CANCELLED)
    ]
    error: dict[str, Any] = (
        merge.errors[-1].to_json()
        if merge.errors
        else {"type": "Cancelled", "message": f"batch {merge.id} cancelled"}
    )
    error["failures"] = failures
    return job_event(BATCH_FINISHED, merge, error)


def install(app: App) -> Notifier:
    """Give ``app`` its notifier and the built-in delivery task."""
    notifier = Notifier(app)

    @app.task(name=DELIVER_TASK, max_attempts=10, backoff=Backoff(base=0.5, cap=600.0))
    async def deliver(webhook_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """POST one event to one webhook; an error or a non-2xx answer retries."""
        backend = await app.backend()
        text = await backend.get_record(KIND, webhook_id)
        if text is None:
            raise Fail(f"webhook {webhook_id} was deleted")
        hook = Webhook.from_json(webhook_id, text)
        from conveyor.context import current_job

        body = json.dumps(event, separators=(",", ":")).encode()
        status = await asyncio.to_thread(_post, hook, body, current_job().id, event["event"])
        return {"status": status, "url": hook.url}

    del deliver
    return notifier


def _post(hook: Webhook, body: bytes, delivery_id: str, event_name: str) -> int:
    from conveyor import __version__

    if not hook.url.startswith(("http://", "https://")):
        raise Fail(f"webhook URL {hook.url!r} is not http(s)")
    timestamp = int(time.time())
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"conveyor/{__version__}",
            "X-Conveyor-Event": event_name,
            "X-Conveyor-Delivery": delivery_id,
            "X-Conveyor-Timestamp": str(timestamp),
            "X-Conveyor-Signature": sign(hook.secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 410:  # the receiver says: gone for good
            raise Fail(f"{hook.url} answered 410 Gone") from None
        raise RuntimeError(f"{hook.url} answered {exc.code} {exc.reason}") from None
