"""External completion: jobs finished by an outside service (``conveyor.Await``).

A task raises ``Await(deadline)`` (or calls ``current_job().await_external(...)``); its
worker parks the job in ``waiting`` (the store keeps the attempt's lease token as the
completion token and the deadline in ``lease_expires_at``) and frees the slot. The
outside service later completes it with the token; these are the App's methods for
that, used by the HTTP API too. The store fences every completion on the token and the
deadline in one atomic step, so a late or repeated completion is refused, never applied.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor import notify
from conveyor.backends.base import (
    EXTERNAL_FAILURE,
    Backend,
    ExternalReply,
    Outcome,
    OutcomeKind,
)
from conveyor.errors import CompletionRefused
from conveyor.job import JobState
from conveyor.retry import Backoff
from conveyor.serialize import PayloadTooLarge, dumps

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.portal import Portal

#: A failure message longer than this is cut (it is stored in the job's error history).
MAX_MESSAGE = 4000
_EVENT_OF_STATE = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.RETRYING: "job.retrying",
    JobState.QUEUED: "job.retrying",
    JobState.DEAD: "job.dead",
}


def failure(error: str | Mapping[str, Any] | None) -> tuple[str, str]:
    """``(type, message)`` of an outside failure: a message, or ``{"type", "message"}``."""
    if error is None:
        return EXTERNAL_FAILURE, "failed by the external service"
    if isinstance(error, str):
        return EXTERNAL_FAILURE, error[:MAX_MESSAGE]
    if isinstance(error, Mapping):
        type_ = error.get("type", EXTERNAL_FAILURE)
        message = error.get("message", "")
        if not isinstance(type_, str) or not type_ or len(type_) > 200:
            raise ValueError("error type must be a non-empty string of at most 200 characters")
        if not isinstance(message, str):
            raise ValueError("error message must be a string")
        return type_, message[:MAX_MESSAGE]
    raise TypeError(f"error must be a message or a {{'type', 'message'}} object, not {error!r}")


def _check(job_id: Any, token: Any) -> None:
    if not isinstance(job_id, str) or not job_id:
        raise TypeError("job_id must be a non-empty string")
    if not isinstance(token, str) or not token:
        raise TypeError("the completion token must be a non-empty string")


async def complete(app: App, backend: Backend, job_id: str, token: str, outcome: Outcome) -> None:
    """Apply ``outcome`` with the token; raise ``CompletionRefused`` unless applied, then
    announce it like a worker would."""
    reply = await backend.complete_external(outcome)
    if reply is ExternalReply.UNKNOWN:
        # A quick service may answer before the worker has parked the job: while the
        # attempt still holds the lease, its token completes it like the task's own
        # outcome (the worker's park is then fenced off). The park moves the job from
        # running to waiting once per token, so waiting / running / waiting covers it.
        if (await backend.finish([outcome]))[0]:
            reply = ExternalReply.APPLIED
        else:
            reply = await backend.complete_external(outcome)
    if reply is not ExternalReply.APPLIED:
        raise CompletionRefused(job_id, reply.value)
    job = await backend.get(job_id)
    name = None if job is None else _EVENT_OF_STATE.get(job.state)
    if job is not None and name is not None:
        event = notify.job_event(name, job)
        if event is not None:
            await app.notifier.publish(backend, [event])


class ExternalMixin:
    """The App's external-completion methods (sync ones call the ``*_async`` ones)."""

    if TYPE_CHECKING:
        _portal: Portal
        tasks: dict[str, Any]

        async def backend(self) -> Backend: ...

    def complete_external(self, job_id: str, token: str, result: Any = None) -> None:
        """Complete a ``waiting`` job with ``result`` (JSON), as if its task returned it.

        ``token`` is the job's completion token (``current_job().completion_token``).
        Raises ``CompletionRefused`` (``reason``: unknown / late / closed).
        """
        self._portal.call(self.complete_external_async(job_id, token, result))

    async def complete_external_async(self, job_id: str, token: str, result: Any = None) -> None:
        _check(job_id, token)
        result_json = dumps(result, what="result")
        limit = self._app().defaults.max_payload
        if len(result_json.encode()) > limit:  # an outside service's result, unchecked so far
            raise PayloadTooLarge(len(result_json.encode()), limit)
        outcome = Outcome(job_id, token, OutcomeKind.SUCCEEDED, result_json=result_json)
        await complete(self._app(), await self.backend(), job_id, token, outcome)

    def fail_external(
        self,
        job_id: str,
        token: str,
        error: str | Mapping[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> None:
        """Fail a ``waiting`` job from outside: ``error`` is a message or
        ``{"type": ..., "message": ...}``. With ``retry`` (the default) the task's retry
        policy applies (backoff, then ``dead`` when out of attempts); ``retry=False``
        sends it to ``dead`` at once. Raises ``CompletionRefused`` like
        ``complete_external``."""
        self._portal.call(self.fail_external_async(job_id, token, error, retry=retry))

    async def fail_external_async(
        self,
        job_id: str,
        token: str,
        error: str | Mapping[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> None:
        _check(job_id, token)
        type_, message = failure(error)
        backend = await self.backend()
        job = await backend.get(job_id)
        if job is None:
            raise CompletionRefused(job_id, ExternalReply.UNKNOWN.value)
        task = self.tasks.get(job.task)
        backoff: Backoff = task.backoff if task is not None else Backoff()
        error_json = dumps(
            {
                "attempt": job.attempt,
                "type": type_,
                "message": message,
                "traceback": None,
                "at": time.time(),
            }
        )
        kind = OutcomeKind.RETRY if retry else OutcomeKind.DEAD
        delay = backoff.delay(job.attempt) if retry else 0.0
        outcome = Outcome(job_id, token, kind, error_json=error_json, retry_delay=delay)
        await complete(self._app(), backend, job_id, token, outcome)

    def _app(self) -> App:
        return self  # type: ignore[return-value]
