"""Notifications: in-process listeners (``app.on``) and signed webhooks.

Workers emit an event once the store has accepted how an attempt ended:
``job.succeeded``, ``job.retrying``, ``job.dead`` and ``job.cancelled``. In the worker
process, listeners registered with ``@app.on("job.succeeded")`` are called with an
``Event``. Webhooks (records of kind ``webhook``, registered through the HTTP API) that
match the event's name, tenant and queue each get a delivery *job* of the built-in task
``conveyor.webhook``: delivery is durable, retried with backoff by the workers, and its
attempts and errors are the delivery log (``GET /webhooks/{id}/deliveries``).

Each delivery is an HTTP POST of the event as JSON, signed with the webhook's secret:
``X-Conveyor-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` and
``X-Conveyor-Timestamp: <unix seconds>``; ``verify()`` shows a receiver's check.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Backend, ClaimedJob, Outcome, OutcomeKind
from conveyor.retry import Backoff, Fail
from conveyor.serialize import loads
from conveyor.task import EnqueueOptions, Signature

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.notify")

EVENTS = ("job.succeeded", "job.retrying", "job.dead", "job.cancelled")
KIND = "webhook"
DELIVER_TASK = "conveyor.webhook"
#: Seconds a worker trusts its copy of the webhook list before reading it again.
WEBHOOKS_TTL = 5.0
DELIVERY_TIMEOUT = 10.0
SIGNATURE_TOLERANCE = 300
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
        name = _EVENT_OF.get(outcome.kind)
        if name is None or job.task == DELIVER_TASK:  # deliveries announce nothing
            return False
        return bool(self.listeners.get(name)) or self._stale() or bool(self._webhooks)

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > WEBHOOKS_TTL

    async def emit(self, backend: Backend, finished: list[tuple[ClaimedJob, Outcome]]) -> None:
        """Announce accepted outcomes; never raises (a notification is not the job).

        Listeners are called in order; the webhook deliveries of the whole batch are
        enqueued in one write, on the worker's own connection.
        """
        events = [e for e in (_event(job, outcome) for job, outcome in finished) if e]
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


def _event(job: ClaimedJob, outcome: Outcome) -> Event | None:
    name = _EVENT_OF.get(outcome.kind)
    if name is None or job.task == DELIVER_TASK:  # deliveries announce nothing
        return None
    error = loads(outcome.error_json) if outcome.error_json else None
    return Event(
        name=name,
        job_id=job.id,
        task=job.task,
        queue=job.queue,
        tenant=job.tenant,
        attempt=job.attempt,
        at=time.time(),
        result=loads(outcome.result_json) if outcome.result_json else None,
        error=error if isinstance(error, dict) else None,
    )


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
