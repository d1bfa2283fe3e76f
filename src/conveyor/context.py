"""``current_job()``: what a running task can know and say about its own job."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

ProgressSink = Callable[[float | None, str | None], None]


@dataclass(eq=False)
class JobContext:
    """The running job, as seen from inside its task (``conveyor.current_job()``)."""

    id: str
    task: str
    queue: str
    tenant: str | None
    priority: int
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    _sink: ProgressSink = field(repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    #: The token an outside service presents to complete this job after the task
    #: raises ``conveyor.Await`` (``POST /jobs/{id}/complete``, ``app.complete_external``).
    #: It is this attempt's lease token: hand it only to the service that completes it.
    completion_token: str = field(default="", repr=False)

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress (``fraction`` in 0..1 and/or a short message).

        Never blocks: the worker writes the latest value to the store in the background,
        so it is cheap to call in a tight loop.
        """
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
                raise TypeError("progress fraction must be a number between 0 and 1")
            if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"progress fraction must be between 0 and 1, got {fraction}")
        if message is not None and not isinstance(message, str):
            raise TypeError("progress message must be a string")
        self._sink(None if fraction is None else float(fraction), message)

    def await_external(self, deadline: float) -> NoReturn:
        """End the task here and park the job until an outside service completes it.

        Raises ``conveyor.Await(deadline)`` (let it propagate). Hand
        ``self.completion_token`` to the service first.
        """
        from conveyor.retry import Await

        raise Await(deadline)

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job. Long sync tasks should check it."""
        return self._cancel_requested

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


_current: ContextVar[JobContext | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> JobContext:
    """The job this code runs in. Raises ``RuntimeError`` outside a running task."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("conveyor.current_job() was called outside a running task")
    return ctx
