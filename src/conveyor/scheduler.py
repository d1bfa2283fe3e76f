"""Periodic jobs: ``@app.periodic("*/5 * * * *")`` and ``@app.periodic(every=...)``.

Exactly once per tick, with any number of workers: the worker that holds the
maintenance lock enqueues due ticks, and each tick's job carries the dedup key
``periodic:<name>:<tick epoch seconds>`` reserved (``unique_for``) until after the next
tick. A second worker that takes over the lock, or a pass that looks at a tick again,
gets the existing job back instead of a duplicate.

Which ticks a pass enqueues: a worker that held the lock on its previous pass enqueues
every tick since that pass (none is skipped while the cluster is up). A pass without
that continuity (the first pass of a worker, after a lock hand-over, after everything
was down) enqueues only the latest tick that is due, once, when ``missed="once"``
(the default), or nothing when ``missed="skip"``: missed ticks are never caught up one
by one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.backends.base import Backend, NewJob

log = logging.getLogger("conveyor.scheduler")

MISSED_POLICIES = ("once", "skip")
#: How long a tick's key stays reserved beyond the next tick: covers a worker whose
#: pass over the tick runs late (a stalled lock holder) without holding keys for ever.
KEY_GRACE = 300.0
#: A pass never enqueues more ticks than this per schedule (a continuous pass after a
#: long stall of the lock holder): the newest ones are kept.
MAX_TICKS_PER_PASS = 100


@dataclass(frozen=True, slots=True)
class Schedule:
    """One periodic job: which task, when, with which arguments and options."""

    name: str
    task: str
    cron: str | None = None
    every: timedelta | None = None
    tz: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    missed: str = "once"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"periodic {self.name!r}: give a cron expression or every=, not both")
        if self.every is not None and (
            not isinstance(self.every, timedelta) or self.every.total_seconds() < 1
        ):
            raise ValueError(f"periodic {self.name!r}: every= must be a timedelta >= 1 s")
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"periodic {self.name!r}: missed= must be one of {MISSED_POLICIES}")
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"periodic {self.name!r}: unknown time zone {self.tz!r}") from None
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as exc:
                raise ValueError(f"periodic {self.name!r}: bad cron {self.cron!r}: {exc}") from None

    @property
    def when(self) -> str:
        if self.cron is not None:
            return f"{self.cron} ({self.tz})"
        assert self.every is not None
        return f"every {self.every.total_seconds():g} s"

    def next_after(self, at: float) -> float:
        """The first tick strictly after ``at`` (epoch seconds)."""
        if self.every is not None:
            step = self.every.total_seconds()
            return (at // step + 1) * step
        start = datetime.fromtimestamp(at, ZoneInfo(self.tz))
        return next(iter(CronSim(str(self.cron), start))).timestamp()

    def latest_until(self, at: float) -> float:
        """The last tick at or before ``at``."""
        if self.every is not None:
            step = self.every.total_seconds()
            return (at // step) * step
        # CronSim's reverse iteration is strict, so start just after ``at``.
        start = datetime.fromtimestamp(at + 0.001, ZoneInfo(self.tz))
        return next(iter(CronSim(str(self.cron), start, reverse=True))).timestamp()

    def ticks(self, after: float, until: float) -> Iterator[float]:
        """Ticks in ``(after, until]``, oldest first."""
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)


def tick_key(schedule: Schedule, tick: float) -> str:
    return f"periodic:{schedule.name}:{int(tick)}"


class Scheduler:
    """Enqueues due ticks; one per worker, called on each pass of the lock holder."""

    def __init__(self, app: App) -> None:
        self.app = app
        #: Store time of this worker's previous pass, while it held the lock throughout.
        self._last: float | None = None

    def lost_lock(self) -> None:
        """This worker's pass did not hold the lock: the next one starts afresh."""
        self._last = None

    async def run_due(self, backend: Backend) -> int:
        """Enqueue the ticks due since the last pass; returns how many it enqueued
        (a tick enqueued before counts again; the store keeps one job per tick)."""
        if not self.app.schedules:
            return 0
        now = await backend.now()
        count = 0
        for schedule in list(self.app.schedules.values()):
            for tick in self._due(schedule, self._last, now):
                await self._enqueue(backend, schedule, tick)
                count += 1
        # Only once every tick is in: a pass that failed half-way is redone in full.
        self._last = now
        return count

    def _due(self, schedule: Schedule, last: float | None, now: float) -> list[float]:
        if last is not None:
            return list(schedule.ticks(last, now))[-MAX_TICKS_PER_PASS:]
        if schedule.missed == "skip":
            return []
        return [schedule.latest_until(now)]

    async def _enqueue(self, backend: Backend, schedule: Schedule, tick: float) -> None:
        """Through the worker's own store connection (no second one for the app)."""
        await backend.enqueue([self.job_for(schedule, tick)])

    def job_for(self, schedule: Schedule, tick: float) -> NewJob:
        from conveyor.task import EnqueueOptions, Signature

        window = schedule.next_after(tick) - tick + KEY_GRACE
        options = EnqueueOptions().merged(
            **schedule.options, key=tick_key(schedule, tick), unique_for=window
        )
        sig = Signature(schedule.task, schedule.args, dict(schedule.kwargs), options)
        return self.app._new_job(sig)


def periodic_decorator(
    app: App,
    cron: str | None,
    *,
    every: timedelta | None,
    tz: str,
    name: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None,
    missed: str,
    options: Mapping[str, Any],
) -> Callable[[Callable[..., Any]], Any]:
    """What ``App.periodic`` returns: registers the task, then its schedule."""

    def register(fn: Callable[..., Any]) -> Any:
        from conveyor.task import Task

        task_name = fn.name if isinstance(fn, Task) else name or _default_name(fn)
        schedule = Schedule(  # validated before anything is registered
            name=name or task_name,
            task=task_name,
            cron=cron,
            every=every,
            tz=tz,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            missed=missed,
            options=dict(options),
        )
        # A job of this schedule must be valid now, not fail in a worker at every tick.
        Scheduler(app).job_for(schedule, 0.0)
        task = fn if isinstance(fn, Task) else app.task(name=task_name)(fn)
        app.add_schedule(schedule)
        return task

    return register


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def describe(app: App, now: float | None = None) -> list[tuple[Schedule, datetime]]:
    """Every schedule with its next run (for ``conveyor periodic``)."""
    at = datetime.now(UTC).timestamp() if now is None else now
    return [
        (s, datetime.fromtimestamp(s.next_after(at), ZoneInfo(s.tz)))
        for s in sorted(app.schedules.values(), key=lambda s: s.name)
    ]
