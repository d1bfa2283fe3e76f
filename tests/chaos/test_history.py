"""The checker itself, on synthetic histories: it passes good runs and catches bad ones."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

from tests.chaos.history import Recorder, StoredJob, check, read_history

LEASE = 2.0


class H:
    """A tiny builder of synthetic histories (times in seconds from 1000)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, ev: str, **fields: Any) -> H:
        fields.setdefault("t", 1000.0)
        self.events.append({"ev": ev, "pid": 1, "m": 0.0, **fields})
        return self

    def enqueued(self, job: str) -> H:
        return self.add("enqueued", id=job)

    def attempt(
        self,
        job: str,
        n: int,
        at: float,
        *,
        until: float,
        kind: str | None = "succeeded",
        accepted: bool = True,
        completed: bool = True,
    ) -> H:
        """One attempt: claimed at ``at``, body runs until ``until``, then ``kind``."""
        token = f"{job}-{n}"
        self.add("claim", id=job, attempt=n, token=token, expires=at + LEASE, lease=LEASE)
        self.add("start", id=job, attempt=n, t=at)
        renew = at + LEASE / 3
        while renew < until:
            self.add("renew", id=job, token=token, sent=renew, acked=renew, lease=LEASE)
            renew += LEASE / 3
        if completed:
            self.add("end", id=job, attempt=n, t=until)
        if kind is not None:
            self.add("finish", id=job, token=token, kind=kind, accepted=accepted, sent=until)
        return self


def job(job_id: str, state: str = "succeeded", attempt: int = 1, **kw: Any) -> StoredJob:
    return StoredJob(id=job_id, state=state, attempt=attempt, max_attempts=3, **kw)


def test_a_clean_run_passes() -> None:
    h = H().enqueued("a").enqueued("b").attempt("a", 1, 1000, until=1001)
    h.attempt("b", 1, 1000, until=1005)  # renewed along the way
    report = check(h.events, [job("a"), job("b")])
    assert report.ok, report.details()
    assert report.executions == 2 and report.extra_completions == 0


def test_a_crash_and_a_rerun_after_expiry_passes() -> None:
    # Attempt 1 dies mid-body (no end, no finish); the reaper hands it over after expiry.
    h = H().enqueued("a").attempt("a", 1, 1000, until=1000.5, kind=None, completed=False)
    h.attempt("a", 2, 1003, until=1004)
    report = check(h.events, [job("a", attempt=2, error_types=("WorkerLost",))])
    assert report.ok, report.details()
    assert report.executions == 2


def test_a_late_rejected_completion_is_not_a_duplicate() -> None:
    # A frozen worker's body completes after its lease ended; the store rejects it.
    h = H().enqueued("a").attempt("a", 1, 1000, until=1000.2, kind=None, completed=False)
    h.attempt("a", 2, 1003, until=1004)
    h.add("end", id="a", attempt=1, t=1006)
    h.add("finish", id="a", token="a-1", kind="succeeded", accepted=False, sent=1006)
    report = check(h.events, [job("a", attempt=2)])
    assert report.ok, report.details()
    assert report.rejected_completions == 1 and report.extra_completions == 1
    assert report.ran_past_lease == 1 and report.concurrent_bodies == 1


def test_lost_job_is_reported() -> None:
    h = H().enqueued("a").enqueued("b").attempt("a", 1, 1000, until=1001)
    report = check(h.events, [job("a"), job("b", state="queued", attempt=0)])
    assert not report.ok and report.lost == ["b"]
    # Missing from the store entirely is lost too.
    assert check(h.events, [job("a")]).lost == ["b"]


def test_two_accepted_completions_are_a_duplicate() -> None:
    h = H().enqueued("a").attempt("a", 1, 1000, until=1001).attempt("a", 2, 1002, until=1003)
    report = check(h.events, [job("a", attempt=2)])
    assert not report.ok and report.duplicated == ["a"]


def test_a_claim_after_the_recorded_outcome_is_a_duplicate() -> None:
    # Succeeded at attempt 1, then claimed again (the outcome did not stick).
    h = H().enqueued("a").attempt("a", 1, 1000, until=1001)
    h.attempt("a", 2, 1010, until=1011, kind=None)
    report = check(h.events, [job("a", attempt=2)])
    assert "a" in report.duplicated


def test_unexpected_job_is_reported() -> None:
    h = H().enqueued("a").attempt("a", 1, 1000, until=1001).attempt("x", 1, 1000, until=1001)
    report = check(h.events, [job("a"), job("x")])
    assert not report.ok and report.unexpected == ["x"]
    # A stored job nobody acknowledged is unexpected too, unless told otherwise.
    stored_only = check(
        H().enqueued("a").attempt("a", 1, 1000, until=1001).events,
        [job("a"), job("y", state="queued")],
    )
    assert stored_only.unexpected == ["y"]


def test_overlapping_leases_are_reported() -> None:
    # Attempt 2 granted at 1001 while attempt 1's lease (renewed at 1000.67 for 2 s)
    # still held and attempt 1 had not sent any outcome.
    h = H().enqueued("a").attempt("a", 1, 1000, until=1004, kind=None, completed=False)
    h.attempt("a", 2, 1001, until=1002)
    report = check(h.events, [job("a", attempt=2)])
    assert report.lease_overlaps == [("a", 1, 2)] and not report.ok


def test_an_outcome_applied_but_never_recorded_is_no_overlap() -> None:
    # The body failed at 1000.3; the worker was killed after the store applied its retry
    # and before it wrote that down, so the hand-over at 1000.6 may be legitimate...
    h = H().enqueued("a").attempt("a", 1, 1000, until=1000.3, kind=None)
    h.attempt("a", 2, 1000.6, until=1001)
    report = check(h.events, [job("a", attempt=2)])
    assert report.ok and report.unrecorded_outcomes == 1, report.details()
    # ...but not before its body ended: that is still an overlap.
    h = H().enqueued("b").attempt("b", 1, 1000, until=1000.9, kind=None)
    h.attempt("b", 2, 1000.6, until=1001)
    assert check(h.events, [job("b", attempt=2)]).lease_overlaps == [("b", 1, 2)]


def test_a_hand_over_right_after_a_released_lease_is_no_overlap() -> None:
    h = H().enqueued("a").attempt("a", 1, 1000, until=1000.5, kind="retry", completed=False)
    h.attempt("a", 2, 1000.6, until=1001)
    report = check(h.events, [job("a", attempt=2)])
    assert report.ok, report.details()


def test_inconsistent_store_is_reported() -> None:
    # Succeeded at attempt 2, whose body never completed; attempt 1's success accepted.
    h = H().enqueued("a").attempt("a", 1, 1000, until=1001)
    h.add("claim", id="a", attempt=2, token="a-2", expires=1000.5 + LEASE, lease=LEASE)
    report = check(h.events, [job("a", attempt=2)])
    assert report.inconsistent and not report.ok
    too_many = check(H().enqueued("b").events, [job("b", attempt=4)])
    assert too_many.inconsistent


def _append(path: str, n: int) -> None:
    rec = Recorder(path)
    for i in range(n):
        rec.record("enqueued", id=f"{i}", padding="x" * 300)


def test_concurrent_appends_from_processes_never_interleave(tmp_path: Path) -> None:
    path = str(tmp_path / "h.jsonl")
    procs = [multiprocessing.Process(target=_append, args=(path, 500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 2000
    assert all(json.loads(line)["ev"] == "enqueued" for line in lines)
    assert len(read_history(path)) == 2000
