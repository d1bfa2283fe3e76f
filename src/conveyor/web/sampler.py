"""Samples the store every few seconds for the dashboard's charts (/metrics counts
exactly instead: ``conveyor/metrics.py``).

The store keeps job rows, not an event stream, so throughput and latency are measured
by looking at the most recently enqueued finished jobs (``SAMPLE_WINDOW`` succeeded and
as many dead ones) on each tick and observing every job not seen before exactly once.
This is a sample, not an exact count: a job that finishes long after ``SAMPLE_WINDOW``
newer jobs already finished is not seen (docs/web.md says so). The first tick only
remembers what is already finished, so a restart does not count old jobs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, QueueStats
from conveyor.job import Job, JobState
from conveyor.worker import presence

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.web")

SAMPLE_WINDOW = 500
HISTORY = 180  # ticks kept for the charts (6 minutes at the default 2 s)
_SEEN_MAX = SAMPLE_WINDOW * 8


def wait_seconds(job: Job) -> float | None:
    """Due (enqueue, or the delay/retry due time) -> start of the last attempt."""
    if job.started_at is None:
        return None
    due = job.enqueued_at
    if job.run_at is not None and due < job.run_at <= job.started_at:
        due = job.run_at
    return max(0.0, (job.started_at - due).total_seconds())


def run_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return max(0.0, (job.finished_at - job.started_at).total_seconds())


@dataclass
class Bucket:
    """What one tick saw finish, for one tenant (or all of them)."""

    succeeded: int = 0
    dead: int = 0
    waits: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)

    def add(self, job: Job, wait: float | None, run: float | None) -> None:
        if job.state is JobState.SUCCEEDED:
            self.succeeded += 1
        else:
            self.dead += 1
        if wait is not None:
            self.waits.append(wait)
        if run is not None:
            self.runs.append(run)


@dataclass
class Tick:
    at: float
    seconds: float
    everyone: Bucket
    tenants: dict[str | None, Bucket]
    stats: list[QueueStats]

    def point(self, tenant: str | None, admin: bool) -> dict[str, float | None]:
        """One chart point, as a tenant (or an admin, for the whole store) sees it."""
        bucket = self.everyone if admin else self.tenants.get(tenant, Bucket())
        rows = [s for s in self.stats if admin or s.tenant == tenant]
        return {
            "t": self.at,
            "throughput": (bucket.succeeded + bucket.dead) / self.seconds,
            "failed": bucket.dead / self.seconds,
            "wait_p50": _median(bucket.waits),
            "run_p50": _median(bucket.runs),
            "queued": float(sum(s.queued for s in rows)),
            "running": float(sum(s.running for s in rows)),
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Sampler:
    def __init__(self, app: App, *, interval: float = 2.0) -> None:
        self.app = app
        self.interval = interval
        self.ticks: deque[Tick] = deque(maxlen=HISTORY)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._primed = False
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="conveyor-web-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a store hiccup must not end the charts for good
                log.warning("sampling the store failed; trying again", exc_info=True)
            await asyncio.sleep(self.interval)

    async def tick(self) -> Tick | None:
        backend = await self.app.backend()
        finished = await backend.query(state=JobState.SUCCEEDED, limit=SAMPLE_WINDOW)
        finished += await backend.query(state=JobState.DEAD, limit=SAMPLE_WINDOW)
        stats = await backend.stats()
        await self._prune_workers(backend)
        now = time.monotonic()
        seconds, self._last = max(now - self._last, 1e-3), now
        new = [j for j in finished if j.id not in self._seen]
        for job in new:
            self._seen[job.id] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        if not self._primed:  # what had finished before we started is not throughput
            self._primed = True
            return None
        tick = Tick(at=time.time(), seconds=seconds, everyone=Bucket(), tenants={}, stats=stats)
        for job in new:
            wait, run = wait_seconds(job), run_seconds(job)
            tick.everyone.add(job, wait, run)
            tick.tenants.setdefault(job.tenant, Bucket()).add(job, wait, run)
        self.ticks.append(tick)
        return tick

    async def _prune_workers(self, backend: Backend) -> None:
        """Forget workers that died without a word (their records stop being renewed)."""
        now = await backend.now()
        for key, text in await backend.list_records(presence.KIND):
            if presence.parse(key, text, now)["age"] > presence.PRUNE_AFTER:
                await backend.delete_record(presence.KIND, key)

    def recent_waits(self, ticks: int = 30) -> dict[str | None, float]:
        """Median wait per tenant over the last ``ticks`` samples (a minute by default)."""
        waits: dict[str | None, list[float]] = {}
        for tick in list(self.ticks)[-ticks:]:
            for tenant, bucket in tick.tenants.items():
                waits.setdefault(tenant, []).extend(bucket.waits)
        return {t: statistics.median(w) for t, w in waits.items() if w}

    def series(self, tenant: str | None, admin: bool) -> list[dict[str, float | None]]:
        return [t.point(tenant, admin) for t in self.ticks]
