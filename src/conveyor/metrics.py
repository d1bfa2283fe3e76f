"""Exact job counters: each process counts what it does, ``/metrics`` sums them.

The store keeps job rows, not an event stream, so counting finished jobs by reading the
store afterwards can only sample. Instead every process that changes jobs counts its own
events in memory, where they happen: a worker counts the attempts it starts (wait time),
the attempts it ends (run time) and the outcomes the store accepted from it; the web
server counts the external completions it applies. Nothing is added to the store's hot
path: no extra call per job.

Every 5 s (a worker with its presence heartbeat, the server every ``PUBLISH_INTERVAL``)
and when it stops gracefully, a process writes its cumulative counts as one record (kind
``metrics``, key: the worker's id and a suffix per run, ``record_key``) with the store's
records primitives. ``/metrics`` sums every record.
Records of stopped processes stay, so a counter never goes down when a worker stops or
restarts (its replacement writes a record of its own); ``conveyor serve`` folds records
not written for the retention (the default ``result_ttl``, 7 days) into one ``retired``
record (see ``fold_stale``), so they neither pile up nor drop out of the sums.

The limit of exactness: a process killed without warning (SIGKILL, a power cut) loses
what it counted since its last write, at most 5 s of events.

Label cardinality: a deployment may serve 10,000 tenants, so only one counter
(``conveyor_jobs_finished``, two states) has a ``tenant`` label, like the
``conveyor_jobs`` gauge; the histograms and the per-task counters have none.

This module is part of the core (no prometheus-client): ``conveyor.web.metrics`` turns the
sums into Prometheus families.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from conveyor.backends.base import Backend, ClaimedJob, Outcome
    from conveyor.job import JobState

log = logging.getLogger("conveyor.metrics")

KIND = "metrics"
#: The record ``fold_stale`` keeps the counts of long-stopped processes in.
RETIRED_KEY = "~retired"
FORMAT = 1
PUBLISH_INTERVAL = 5.0
#: A process with nothing new to count still rewrites its record this often, so a
#: record older than the retention always belongs to a process that stopped.
REFRESH_INTERVAL = 3600.0
_FOLD_LOCK = "conveyor:metrics-fold"
_PUBLISH_TIMEOUT = 10.0

#: Upper bounds (seconds) of the wait and run time histograms, fixed so that every
#: process's buckets add up.
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    type: Literal["counter", "histogram"]
    labels: tuple[str, ...]
    help: str


#: Every family the processes count, by the short name they are recorded under.
FAMILIES: dict[str, Family] = {
    f.name.removeprefix("conveyor_"): f
    for f in (
        Family(
            "conveyor_attempts",
            "counter",
            ("queue", "task", "outcome"),
            "Attempts ended by workers, by outcome: succeeded, retry, dead, cancelled, "
            "released, parked (the store accepted it); rejected (fencing refused it); "
            "lost (lease lost, no outcome sent)",
        ),
        Family(
            "conveyor_jobs_finished",
            "counter",
            ("queue", "tenant", "state"),
            "Jobs that reached succeeded or dead by a worker's outcome or an external completion",
        ),
        Family(
            "conveyor_external_completions",
            "counter",
            ("queue", "task", "outcome"),
            "Waiting jobs completed over HTTP (/jobs/{id}/complete|fail): succeeded, retry, dead",
        ),
        Family(
            "conveyor_lease_expiries",
            "counter",
            ("outcome",),
            "Running jobs the reaper took back after their lease expired: requeued "
            "(retried) or dead (no attempts left)",
        ),
        Family(
            "conveyor_external_timeouts",
            "counter",
            ("outcome",),
            "Waiting jobs whose deadline passed without an external completion: retry or dead",
        ),
        Family(
            "conveyor_job_wait_seconds",
            "histogram",
            ("queue", "attempt"),
            "Enqueue -> start of each attempt (store clock); attempt=first is the queue "
            "latency, attempt=retry includes earlier attempts and their backoff",
        ),
        Family(
            "conveyor_job_run_seconds",
            "histogram",
            ("queue", "task"),
            "Start -> end of each attempt in the worker, whatever its outcome",
        ),
    )
}


class Histogram:
    """Observations per bucket (not cumulative; the last one is ``+Inf``) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: list[int] | None = None, total: float = 0.0) -> None:
        self.counts = counts if counts is not None else [0] * (len(BUCKETS) + 1)
        self.total = total

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bucket (le = "<=").
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip((*BUCKETS, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out


Labels = tuple[str, ...]


class Counts:
    """Cumulative counters and histograms by family and label values."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, int]] = {}
        self.histograms: dict[str, dict[Labels, Histogram]] = {}
        #: Bumped on every change: ``publish`` skips a write when nothing changed.
        self.changes = 0

    def inc(self, family: str, labels: Labels, n: int = 1) -> None:
        series = self.counters.setdefault(family, {})
        series[labels] = series.get(labels, 0) + n
        self.changes += 1

    def observe(self, family: str, labels: Labels, value: float) -> None:
        series = self.histograms.setdefault(family, {})
        hist = series.get(labels)
        if hist is None:
            hist = series[labels] = Histogram()
        hist.observe(max(0.0, value))
        self.changes += 1

    def add(self, other: Counts) -> None:
        for family, series in other.counters.items():
            mine = self.counters.setdefault(family, {})
            for labels, n in series.items():
                mine[labels] = mine.get(labels, 0) + n
        for family, hseries in other.histograms.items():
            hmine = self.histograms.setdefault(family, {})
            for labels, hist in hseries.items():
                if labels not in hmine:
                    hmine[labels] = Histogram()
                hmine[labels].add(hist)
        self.changes += 1

    def counter(self, family: str, labels: Labels) -> int:
        return self.counters.get(family, {}).get(labels, 0)

    # -- the record ----------------------------------------------------------------------
    def to_json(self, at: float, extra: dict[str, Any] | None = None) -> str:
        data: dict[str, Any] = {
            "format": FORMAT,
            "at": at,
            "buckets": list(BUCKETS),
            "counters": {
                f: [[*labels, n] for labels, n in series.items()]
                for f, series in self.counters.items()
            },
            "histograms": {
                f: [[*labels, h.counts, h.total] for labels, h in series.items()]
                for f, series in self.histograms.items()
            },
        }
        data.update(extra or {})
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> tuple[Counts, dict[str, Any]]:
        """The counts of a record and the record itself; ValueError if unreadable."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a metrics record of this format")
            counts = cls()
            for family, rows in data["counters"].items():
                series = counts.counters.setdefault(family, {})
                for *labels, n in rows:
                    key = tuple(map(str, labels))
                    series[key] = series.get(key, 0) + int(n)
            # Other bounds cannot be added to ours: such a record's histograms are left
            # out (its counters still count).
            if [float(b) for b in data["buckets"]] == list(BUCKETS):
                for family, rows in data["histograms"].items():
                    hseries = counts.histograms.setdefault(family, {})
                    for *labels, bucket_counts, total in rows:
                        if len(bucket_counts) != len(BUCKETS) + 1:
                            raise ValueError("histogram of the wrong size")
                        hist = Histogram([int(n) for n in bucket_counts], float(total))
                        hseries.setdefault(tuple(map(str, labels)), Histogram()).add(hist)
            return counts, data
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed metrics record: {exc}") from None


def total(records: Iterable[tuple[str, str]]) -> Counts:
    """The sum of every process's record (``list_records(KIND)``).

    A record ``fold_stale`` already folded into ``retired`` (its key is listed there)
    is not counted again while it waits to be deleted.
    """
    parsed: dict[str, tuple[Counts, dict[str, Any]]] = {}
    for key, text in records:
        try:
            parsed[key] = Counts.from_json(text)
        except ValueError as exc:  # a damaged record must not take /metrics down
            log.warning("metrics record %r skipped: %s", key, exc)
    retired = parsed.get(RETIRED_KEY)
    folded = set(retired[1].get("folded", [])) if retired else set()
    out = Counts()
    for key, (counts, _) in parsed.items():
        if key not in folded:
            out.add(counts)
    return out


async def fold_stale(backend: Backend, owner: str, retention: float) -> int:
    """Fold the records not written for ``retention`` seconds into ``retired`` and delete
    them; returns how many. One process at a time (a store lock), so two servers never
    fold the same record twice.

    The order makes every scrape consistent: ``retired`` is written first, listing the
    keys it now holds, and ``total`` skips those keys until they are deleted.

    A running process rewrites its record at least every ``REFRESH_INTERVAL``, so the
    retention is never taken shorter than two of those (a ``result_ttl`` of minutes must
    not fold the record of a worker still counting).
    """
    retention = max(retention, 2 * REFRESH_INTERVAL)
    if not await backend.try_lock(_FOLD_LOCK, owner, 60.0):
        return 0
    try:
        now = await backend.now()
        records = dict(await backend.list_records(KIND))
        retired = Counts()
        folded: set[str] = set()
        if RETIRED_KEY in records:
            retired, data = Counts.from_json(records[RETIRED_KEY])
            folded = set(data.get("folded", []))
        stale = []
        for key, text in records.items():
            if key == RETIRED_KEY or key in folded:
                continue
            try:
                counts, data = Counts.from_json(text)
            except ValueError:
                continue
            if now - float(data.get("at") or 0.0) > retention:
                retired.add(counts)
                stale.append(key)
        # Keys already deleted need not be listed any longer (dropped at the next fold).
        keep = (folded & records.keys()) | set(stale)
        if stale or keep != folded:
            await backend.put_record(
                KIND, RETIRED_KEY, retired.to_json(now, {"folded": sorted(keep)})
            )
        for key in stale:
            await backend.delete_record(KIND, key)
        return len(stale)
    finally:
        await backend.unlock(_FOLD_LOCK, owner)


def record_key(owner: str) -> str:
    """A key of its own for each run of a process: a worker restarted under the same
    name (``Worker(name=...)``) must not overwrite, and so lower, its earlier counts."""
    return f"{owner}#{secrets.token_hex(3)}"


class Recorder(Counts):
    """The counts of one process, with the calls that write them as record ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self._published = -1
        self._published_at = 0.0

    async def publish(self, backend: Backend, *, force: bool = False) -> None:
        """Write the record if anything changed since the last write (or ``force``,
        or it is ``REFRESH_INTERVAL`` old). Raises what the store raises."""
        stale = time.monotonic() - self._published_at > REFRESH_INTERVAL
        if self.changes == 0 or (self.changes == self._published and not (force or stale)):
            return  # an idle process leaves no record behind
        changes = self.changes
        await backend.put_record(KIND, self.key, self.to_json(await backend.now()))
        self._published, self._published_at = changes, time.monotonic()

    async def publish_quietly(self, backend: Backend, *, force: bool = False) -> None:
        """``publish``, logging a failure instead of raising; bounded in time, so a store
        that hangs does not hold a worker's shutdown."""
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                await self.publish(backend, force=force)
        except Exception as exc:  # counts are for people looking; retried at the next beat
            log.warning("%s: could not write its metrics record (%s)", self.key, exc)


class _Series:
    """The counts of one (queue, task) in a worker, held directly: the hooks below do
    no label-tuple building or dictionary look-ups beyond one per call."""

    __slots__ = ("outcomes", "run", "wait_first", "wait_retry")

    def __init__(self, wait_first: Histogram, wait_retry: Histogram, run: Histogram) -> None:
        self.wait_first = wait_first
        self.wait_retry = wait_retry
        self.run = run
        self.outcomes: dict[str, int] = {}


class WorkerCounts(Recorder):
    """What a worker counts. The hooks cost a few dictionary updates (under 2 us of CPU
    per attempt: ``benchmarks/metrics_cost.py``) and no store call."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(record_key(worker_id))
        self._series: dict[tuple[str, str], _Series] = {}
        #: Attempts started and not settled yet, by lease token (one per attempt):
        #: (their series, queue, tenant, monotonic start).
        self._live: dict[str, tuple[_Series, str, str | None, float]] = {}
        self._finished: dict[tuple[str, str | None, str], int] = {}

    def _new_series(self, queue: str, task: str) -> _Series:
        wait = self.histograms.setdefault("job_wait_seconds", {})
        run = self.histograms.setdefault("job_run_seconds", {})
        series = _Series(
            wait.setdefault((queue, "first"), Histogram()),
            wait.setdefault((queue, "retry"), Histogram()),
            run.setdefault((queue, task), Histogram()),
        )
        self._series[queue, task] = series
        return series

    def started(self, job: ClaimedJob, lease: float) -> None:
        """An attempt starts. The store stamped its lease ``now + lease`` when it handed
        the job out, so the start is on the store's clock, like ``enqueued_at``."""
        series = self._series.get((job.queue, job.task)) or self._new_series(job.queue, job.task)
        wait = job.lease_expires_at - lease - job.enqueued_at
        (series.wait_first if job.attempt <= 1 else series.wait_retry).observe(
            wait if wait > 0.0 else 0.0
        )
        self._live[job.lease_token] = (series, job.queue, job.tenant, time.monotonic())
        self.changes += 1

    def ended(self, job: ClaimedJob, outcome: Outcome | None) -> None:
        """An attempt ended with ``outcome`` (None: its lease was lost, nothing is sent)."""
        live = self._live.get(job.lease_token)
        if live is None:
            return
        series = live[0]
        series.run.observe(time.monotonic() - live[3])
        if outcome is None:
            del self._live[job.lease_token]
            series.outcomes["lost"] = series.outcomes.get("lost", 0) + 1
        self.changes += 1

    def settled(
        self,
        batch: Sequence[Outcome],
        accepted: Sequence[bool],
        cancelled: Collection[str] = (),
    ) -> None:
        """The store answered for ``batch``: count what it applied, and what it refused.
        ``cancelled``: lease tokens of accepted retries, releases and parks that the
        store turned into cancelled (a cancel request was pending), counted as such."""
        live_attempts, finished = self._live, self._finished
        for outcome, ok in zip(batch, accepted, strict=True):
            live = live_attempts.pop(outcome.lease_token, None)
            if live is None:
                continue
            outcomes = live[0].outcomes
            if not ok:
                kind = "rejected"
            elif cancelled and outcome.lease_token in cancelled:
                kind = "cancelled"
            else:
                kind = outcome.kind.value
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if kind == "succeeded" or kind == "dead":
                key = (live[1], live[2], kind)
                finished[key] = finished.get(key, 0) + 1
        self.changes += 1

    def to_json(self, at: float, extra: dict[str, Any] | None = None) -> str:
        # The counters the hooks keep in their own shape join the generic ones here,
        # once per write rather than once per attempt.
        attempts = self.counters.setdefault("attempts", {})
        for (queue, task), series in self._series.items():
            for kind, n in series.outcomes.items():
                attempts[queue, task, kind] = n
        done = self.counters.setdefault("jobs_finished", {})
        for (queue, tenant, state), n in self._finished.items():
            done[queue, tenant if tenant is not None else "", state] = n
        return super().to_json(at, extra)

    def reaped(self, count: int, dead: Sequence[str]) -> None:
        """The reaper (in this worker, while it held the maintenance lock) took back
        ``count`` jobs, sending ``dead`` to dead."""
        if count > len(dead):
            self.inc("lease_expiries", ("requeued",), count - len(dead))
        if dead:
            self.inc("lease_expiries", ("dead",), len(dead))

    def timed_out(self, expired: Sequence[tuple[str, JobState]]) -> None:
        """Waiting jobs timed out (``expire_waiting``)."""
        dead = sum(1 for _, state in expired if state.value == "dead")
        if dead:
            self.inc("external_timeouts", ("dead",), dead)
        if len(expired) > dead:
            self.inc("external_timeouts", ("retry",), len(expired) - dead)
