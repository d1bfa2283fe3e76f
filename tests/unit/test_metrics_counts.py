"""The arithmetic of /metrics' exact counts: buckets, records, sums and folding."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conveyor import metrics
from conveyor.backends import create_backend
from conveyor.backends.base import ClaimedJob, Outcome, OutcomeKind
from conveyor.metrics import BUCKETS, Counts, Histogram, Recorder, WorkerCounts


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    h = Histogram()
    for v in (0.0, 0.005, 0.0051, 1.0, 3600.0, 3600.5):
        h.observe(v)
    assert h.count == 6 and h.total == pytest.approx(7201.5101)
    cumulative = dict(h.cumulative())
    assert cumulative["0.005"] == 2  # 0 and 0.005 (le means <=)
    assert cumulative["0.01"] == 3
    assert cumulative["1.0"] == 4
    assert cumulative["3600.0"] == 5
    assert cumulative["+Inf"] == 6
    assert list(cumulative)[-1] == "+Inf" and len(cumulative) == len(BUCKETS) + 1


def record(counts: Counts, at: float = 0.0) -> str:
    return counts.to_json(at)


def test_records_of_several_processes_add_up() -> None:
    a, b = Counts(), Counts()
    a.inc("attempts", ("q", "t", "succeeded"), 3)
    b.inc("attempts", ("q", "t", "succeeded"), 4)
    b.inc("attempts", ("q", "t", "dead"))
    a.observe("job_run_seconds", ("q", "t"), 0.2)
    b.observe("job_run_seconds", ("q", "t"), 0.3)
    b.observe("job_run_seconds", ("q", "t"), 100.0)
    out = metrics.total([("a", record(a)), ("b", record(b))])
    assert out.counter("attempts", ("q", "t", "succeeded")) == 7
    assert out.counter("attempts", ("q", "t", "dead")) == 1
    run = out.histograms["job_run_seconds"][("q", "t")]
    assert run.count == 3 and run.total == pytest.approx(100.5)
    assert dict(run.cumulative())["0.25"] == 1 and dict(run.cumulative())["0.5"] == 2
    # The inputs are untouched (a scrape must not add into a process's own counts).
    assert a.counter("attempts", ("q", "t", "succeeded")) == 3


def test_unreadable_records_are_skipped_and_other_buckets_keep_their_counters() -> None:
    good = Counts()
    good.inc("attempts", ("q", "t", "succeeded"))
    good.observe("job_run_seconds", ("q", "t"), 1.0)
    other = json.loads(record(good))
    other["buckets"] = [1.0, 2.0]  # a future version with other bounds
    out = metrics.total(
        [
            ("good", record(good)),
            ("other", json.dumps(other)),
            ("garbage", "{not json"),
            ("old", json.dumps({"format": 0})),
            ("broken", json.dumps({"format": metrics.FORMAT, "counters": {"attempts": 5}})),
        ]
    )
    assert out.counter("attempts", ("q", "t", "succeeded")) == 2
    assert out.histograms["job_run_seconds"][("q", "t")].count == 1


def test_a_folded_record_is_not_counted_twice() -> None:
    a = Counts()
    a.inc("attempts", ("q", "t", "succeeded"), 5)
    retired = Counts()
    retired.add(a)  # folded, not deleted yet
    folded = retired.to_json(0.0, {"folded": ["a"]})
    assert (
        metrics.total([("a", record(a)), (metrics.RETIRED_KEY, folded)]).counter(
            "attempts", ("q", "t", "succeeded")
        )
        == 5
    )


def test_an_idle_recorder_writes_nothing_and_a_busy_one_only_changes(tmp_path: Path) -> None:
    async def run() -> list[list[tuple[str, str]]]:
        backend = create_backend(f"sqlite:///{tmp_path / 'c.db'}")
        await backend.open()
        seen = []
        try:
            rec = Recorder("w")
            await rec.publish(backend)
            seen.append(await backend.list_records(metrics.KIND))
            rec.inc("attempts", ("q", "t", "succeeded"))
            await rec.publish(backend)
            seen.append(await backend.list_records(metrics.KIND))
            await backend.delete_record(metrics.KIND, "w")
            await rec.publish(backend)  # nothing new: no write
            seen.append(await backend.list_records(metrics.KIND))
            await rec.publish(backend, force=True)
            seen.append(await backend.list_records(metrics.KIND))
            return seen
        finally:
            await backend.close()

    empty, one, skipped, forced = asyncio.run(run())
    assert empty == [] and skipped == []
    assert [k for k, _ in one] == [k for k, _ in forced] == ["w"]


def claimed(n: int, attempt: int = 1, tenant: str | None = "org-7") -> ClaimedJob:
    # Enqueued at 100.0, handed out at 102.5 with a 30 s lease: waited 2.5 s.
    return ClaimedJob(
        f"id{n}", "t", "q", tenant, 5, "[]", "{}", attempt, 3, None, f"tok{n}", 132.5, 100.0
    )


def test_worker_hooks_count_each_attempt_once_whatever_becomes_of_it() -> None:
    c = WorkerCounts("w")
    jobs = [claimed(0), claimed(1, attempt=2), claimed(2, tenant=None), claimed(3), claimed(4)]
    for job in jobs:
        c.started(job, 30.0)
    ok, retry, dead, rejected = (
        Outcome(j.id, j.lease_token, kind)
        for j, kind in zip(
            jobs,
            [OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.DEAD, OutcomeKind.SUCCEEDED],
            strict=False,
        )
    )
    for job, outcome in zip(jobs, [ok, retry, dead, rejected, None], strict=True):
        c.ended(job, outcome)
    c.settled([ok, retry, dead, rejected], [True, True, True, False])
    c.settled([ok], [True])  # an outcome answered twice is counted once
    c.reaped(3, ["x"])
    out = metrics.total([("w", c.to_json(0.0))])
    by_outcome = {k[2]: n for k, n in out.counters["attempts"].items()}
    assert by_outcome == {"succeeded": 1, "retry": 1, "dead": 1, "rejected": 1, "lost": 1}
    assert out.counters["jobs_finished"] == {
        ("q", "org-7", "succeeded"): 1,
        ("q", "", "dead"): 1,
    }
    assert out.counters["lease_expiries"] == {("requeued",): 2, ("dead",): 1}
    wait = out.histograms["job_wait_seconds"]
    assert (wait["q", "first"].count, wait["q", "retry"].count) == (4, 1)
    assert wait["q", "first"].total == pytest.approx(10.0)
    assert dict(wait["q", "first"].cumulative())["1.0"] == 0
    assert dict(wait["q", "first"].cumulative())["2.5"] == 4
    assert out.histograms["job_run_seconds"]["q", "t"].count == 5
    assert not c._live  # nothing left behind
