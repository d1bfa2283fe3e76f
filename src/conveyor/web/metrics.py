"""``/metrics`` in the Prometheus text format (prometheus-client, one registry per server).

Gauges are read from the store at each scrape (``stats()``, ``waiting_counts()`` and the
running jobs), so they are exact and the same whichever server is scraped. Counters and
histograms are the sum of the records every worker and server writes of what it counted
itself (``conveyor/metrics.py``): exact too, up to the last few seconds of a process
killed without warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from conveyor import metrics as counting
from conveyor.backends.base import STATS_STATES, DepthCount, QueueStats
from conveyor.job import JobState
from conveyor.web.context import WebContext
from conveyor.worker import presence

log = logging.getLogger("conveyor.web")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How often ``conveyor serve`` looks for metrics records to fold (``fold_stale``).
_FOLD_EVERY = 60.0
#: Running jobs read per scrape to count workers (one row per running job).
_RUNNING_SCAN = 10_000


def _tenant(value: str | None) -> str:
    return value if value is not None else ""


@dataclass
class Snapshot:
    stats: list[QueueStats] = field(default_factory=list)
    depth: list[DepthCount] = field(default_factory=list)
    workers: int = 0
    alive: int = 0
    lost: int = 0


class StoreCollector(Collector):
    """Gauges from the last snapshot (taken just before ``generate_latest``)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        rows = self.snapshot.stats
        jobs = GaugeMetricFamily(
            "conveyor_jobs",
            "Jobs in the store by queue, tenant and state (queue depth: state=queued)",
            labels=["queue", "tenant", "state"],
        )
        wait = GaugeMetricFamily(
            "conveyor_queue_oldest_wait_seconds",
            "Seconds the oldest ready job of the queue and tenant has waited",
            labels=["queue", "tenant"],
        )
        weight = GaugeMetricFamily(
            "conveyor_tenant_weight", "The tenant's share weight", labels=["queue", "tenant"]
        )
        cap = GaugeMetricFamily(
            "conveyor_tenant_max_running",
            "The tenant's cap on running jobs (absent: no cap)",
            labels=["queue", "tenant"],
        )
        share = GaugeMetricFamily(
            "conveyor_tenant_running_share",
            "The tenant's share of the jobs running in the queue (0..1)",
            labels=["queue", "tenant"],
        )
        running_in: dict[str, int] = {}
        for s in rows:
            running_in[s.queue] = running_in.get(s.queue, 0) + s.running
        for s in rows:
            labels = [s.queue, _tenant(s.tenant)]
            for state in STATS_STATES:
                jobs.add_metric([*labels, state], getattr(s, state))
            wait.add_metric(labels, s.oldest_wait or 0.0)
            weight.add_metric(labels, s.weight)
            if s.max_running is not None:
                cap.add_metric(labels, s.max_running)
            total = running_in[s.queue]
            share.add_metric(labels, s.running / total if total else 0.0)
        workers = GaugeMetricFamily(
            "conveyor_workers_busy",
            "Workers holding at least one running job (idle workers are not in the store)",
            value=self.snapshot.workers,
        )
        present = GaugeMetricFamily(
            "conveyor_workers",
            "Workers by presence heartbeat: alive, or lost (not heard from for 3 beats)",
            labels=["status"],
        )
        present.add_metric(["alive"], self.snapshot.alive)
        present.add_metric(["lost"], self.snapshot.lost)
        return [jobs, wait, weight, cap, share, workers, present, self._depth()]

    def _depth(self) -> Metric:
        depth = GaugeMetricFamily(
            "conveyor_jobs_waiting",
            "Jobs waiting to run by queue, tenant, priority and state (no series: none)",
            labels=["queue", "tenant", "priority", "state"],
        )
        for d in self.snapshot.depth:
            depth.add_metric([d.queue, _tenant(d.tenant), str(d.priority), d.state], d.count)
        return depth


class CountsCollector(Collector):
    """Counter and histogram families from the summed records (set before each render)."""

    def __init__(self) -> None:
        self.counts = counting.Counts()

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        for short, family in counting.FAMILIES.items():
            labels = list(family.labels)
            if family.type == "counter":
                counter = CounterMetricFamily(family.name, family.help, labels=labels)
                for values, n in sorted(self.counts.counters.get(short, {}).items()):
                    counter.add_metric(list(values), n)
                out.append(counter)
            else:
                hist = HistogramMetricFamily(family.name, family.help, labels=labels)
                for values, h in sorted(self.counts.histograms.get(short, {}).items()):
                    hist.add_metric(list(values), h.cumulative(), sum_value=h.total)
                out.append(hist)
        return out


class Metrics:
    def __init__(self, recorder: counting.Recorder) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store = StoreCollector()
        self.exact = CountsCollector()
        self.registry.register(self.store)
        self.registry.register(self.exact)
        #: What this server counts itself (external completions), written like a worker's.
        self.recorder = recorder
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def render(self, ctx: WebContext) -> bytes:
        backend = await ctx.backend()
        stats = await backend.stats()
        depth = await backend.waiting_counts()
        running = await backend.query(state=JobState.RUNNING, limit=_RUNNING_SCAN)
        now = await backend.now()
        seen = [presence.parse(k, v, now) for k, v in await backend.list_records(presence.KIND)]
        # Our own counts are read from memory, not from our (up to 5 s old) record.
        records = [
            (k, v) for k, v in await backend.list_records(counting.KIND) if k != self.recorder.key
        ]
        counts = counting.total(records)
        counts.add(self.recorder)
        snapshot = Snapshot(
            stats=stats,
            depth=depth,
            workers=len({j.worker for j in running if j.worker}),
            alive=sum(1 for w in seen if w["alive"]),
            lost=sum(1 for w in seen if not w["alive"]),
        )
        async with self._lock:  # no await between setting the snapshot and rendering it
            self.store.snapshot = snapshot
            self.exact.counts = counts
            return generate_latest(self.registry)

    # -- this server's record ------------------------------------------------------------
    def start(self, ctx: WebContext) -> None:
        self._task = asyncio.create_task(self._loop(ctx), name="conveyor-web-metrics")

    async def stop(self, ctx: WebContext) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.recorder.publish_quietly(await ctx.backend(), force=True)

    async def _loop(self, ctx: WebContext) -> None:
        retention = ctx.app.defaults.result_ttl
        folded_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(counting.PUBLISH_INTERVAL)
            try:
                backend = await ctx.backend()
                await self.recorder.publish(backend)
                if retention is not None and loop.time() - folded_at > _FOLD_EVERY:
                    folded_at = loop.time()
                    await counting.fold_stale(backend, self.recorder.key, retention)
            except Exception:  # a store hiccup must not end the publishing for good
                log.warning("writing or folding metrics records failed", exc_info=True)
