"""``/metrics`` in the Prometheus text format (prometheus-client, one registry per server).

Gauges are read from the store at each scrape (``stats()``, ``waiting_counts()`` and the
running jobs), so they are exact and the same whichever server is scraped. Histograms
and counters come from the sampler (``sampler.py``): every finished job it sees is observed once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.backends.base import STATS_STATES, DepthCount, QueueStats
from conveyor.job import Job, JobState
from conveyor.web.context import WebContext
from conveyor.worker import presence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store = StoreCollector()
        self.registry.register(self.store)
        self.wait = Histogram(
            "conveyor_job_wait_seconds",
            "Due -> start of the final attempt, of finished jobs (sampled)",
            ["queue"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.run = Histogram(
            "conveyor_job_run_seconds",
            "Start -> finish of the final attempt, of finished jobs (sampled)",
            ["queue", "task"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "conveyor_jobs_finished",
            "Jobs seen finishing, by final state (succeeded or dead; sampled)",
            ["queue", "tenant", "state"],
            registry=self.registry,
        )
        self.retries = Counter(
            "conveyor_job_retries",
            "Extra attempts used by the finished jobs seen (attempt - 1; sampled)",
            ["queue"],
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "conveyor_lease_expiries",
            "Attempts of the finished jobs seen that ended with an expired lease (sampled)",
            ["queue"],
            registry=self.registry,
        )
        self._lock = asyncio.Lock()

    def observe(self, job: Job, wait: float | None, run: float | None) -> None:
        if wait is not None:
            self.wait.labels(job.queue).observe(wait)
        if run is not None:
            self.run.labels(job.queue, job.task).observe(run)
        self.finished.labels(job.queue, _tenant(job.tenant), job.state.value).inc()
        if job.attempt > 1:
            self.retries.labels(job.queue).inc(job.attempt - 1)
        lost = sum(1 for e in job.errors if e.type == "WorkerLost")
        if lost:
            self.lease_expiries.labels(job.queue).inc(lost)

    async def render(self, ctx: WebContext) -> bytes:
        backend = await ctx.backend()
        stats = await backend.stats()
        depth = await backend.waiting_counts()
        running = await backend.query(state=JobState.RUNNING, limit=_RUNNING_SCAN)
        now = await backend.now()
        seen = [presence.parse(k, v, now) for k, v in await backend.list_records(presence.KIND)]
        snapshot = Snapshot(
            stats=stats,
            depth=depth,
            workers=len({j.worker for j in running if j.worker}),
            alive=sum(1 for w in seen if w["alive"]),
            lost=sum(1 for w in seen if not w["alive"]),
        )
        async with self._lock:  # no await between setting the snapshot and rendering it
            self.store.snapshot = snapshot
            return generate_latest(self.registry)
