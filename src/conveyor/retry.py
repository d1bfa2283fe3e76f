"""Retry policy: exponential backoff with jitter, and the exceptions tasks raise to steer it."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number *n* (n = 1 after the first failed attempt).

    ``delay = min(cap, base * factor ** (n - 1))``; with ``jitter`` the delay is drawn
    uniformly from ``[delay / 2, delay]`` so that jobs failing together do not retry
    together, while a retry never comes sooner than half the nominal delay.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("Backoff base and cap must be >= 0")
        if self.factor < 1:
            raise ValueError("Backoff factor must be >= 1")

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        n = max(1, retry_number)
        # Clamp the exponent first so huge attempt numbers cannot overflow a float.
        nominal = min(self.cap, self.base * self.factor ** min(n - 1, 64))
        if not self.jitter or nominal == 0:
            return nominal
        r = (rng or random).random()
        return nominal / 2 + r * nominal / 2


class Retry(Exception):
    """Raise inside a task to retry it, after ``delay`` seconds (default: the backoff).

    The attempt still counts: a job out of attempts ends ``dead`` instead.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0")
        self.delay = delay
        self.reason = reason
        super().__init__(reason)


class Await(Exception):
    """Raise inside a task to hand its job to an outside service.

    The job moves to ``waiting`` (its worker slot is freed at once) until the service
    completes it with ``POST /jobs/{id}/complete`` (or ``/fail``, or
    ``app.complete_external``) using ``current_job().completion_token``. If ``deadline``
    seconds pass first, the job times out: ``ExternalTimeout`` is recorded, it runs
    again while attempts are left (else ``dead``) and ``job.timeout`` is announced.
    """

    def __init__(self, deadline: float) -> None:
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise TypeError(f"Await deadline must be a number of seconds, not {deadline!r}")
        if not (deadline > 0 and deadline < float("inf")):
            raise ValueError(
                f"Await deadline must be a finite number of seconds > 0, not {deadline!r}"
            )
        self.deadline = float(deadline)
        super().__init__(f"awaiting external completion (deadline {deadline:g} s)")


class Fail(Exception):
    """Raise inside a task to fail it for good: no retry, the job goes ``dead``."""

    def __init__(self, reason: str = "failed") -> None:
        self.reason = reason
        super().__init__(reason)
