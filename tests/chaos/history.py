"""A shared, append-only history of a chaos run, and the checker that judges it.

Every process of a run (the test, its producers, every worker process) appends events
to one JSONL file. Each event is ONE ``os.write`` on a descriptor opened with
``O_APPEND``, so lines from different processes never interleave, and an event written
before a ``kill -9`` is never lost or torn (the kernel has it already).

Events (``ev``), each with ``pid``, ``t`` (wall clock, ``time.time()``) and ``m``
(``time.monotonic()``, one clock for every process on a Linux machine):

``enqueued``  id [key]          the producer's enqueue call returned this id
``claim``     id attempt token expires lease   the worker's store granted a lease
``renew``     id token sent acked lease        a heartbeat renewed it; the new expiry is
                                               somewhere in [sent + lease, acked + lease]
``lost``      id token           a heartbeat was told the lease no longer holds
``finish``    id token kind accepted sent      the worker sent an outcome; the store
                                               accepted it or rejected it (fencing)
``start``     id attempt         the task body began
``end``       id attempt         the task body returned (it "completed")
``fail``      id attempt         the task body raised (a failure it reports itself)
``stop``      id attempt         the task body was cancelled (CancelledError)

``claim``/``renew``/``lost``/``finish`` are written by a thin recording wrapper around the
worker's backend (``tests/chaos/chaos_tasks.py``), so they name the lease token, which
``current_job()`` does not expose; ``start``/``end``/``fail``/``stop`` come from the task bodies.

The checker (``check``) compares this history with the store's final view of each job.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Outcomes after which the job is finished for good (``retry`` and ``released`` are not).
FINAL_KINDS = frozenset({"succeeded", "dead", "cancelled"})
FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})


class Recorder:
    """Appends events to the history file; safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._fd_pid = -1

    def record(self, ev: str, **fields: Any) -> None:
        event = {"ev": ev, "pid": os.getpid(), "t": time.time(), "m": time.monotonic(), **fields}
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        # Open lazily and again after a fork: the descriptor belongs to this process.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd_pid = os.getpid()
        os.write(self._fd, line)  # one write per event: atomic with O_APPEND

    def close(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events, in file order. A torn last line (impossible with one write per event,
    but cheap to tolerate) is ignored rather than failing the whole check."""
    p = Path(path)
    if not p.exists():
        return []
    events = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


@dataclass(frozen=True)
class StoredJob:
    """The store's final word on one job (from ``app.jobs(...)``)."""

    id: str
    state: str
    attempt: int
    max_attempts: int
    error_types: tuple[str, ...] = ()

    @classmethod
    def from_job(cls, job: Any) -> StoredJob:
        return cls(
            id=job.id,
            state=str(job.state.value if hasattr(job.state, "value") else job.state),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            error_types=tuple(e.type for e in job.errors),
        )


@dataclass
class Report:
    """What the checker found. ``ok`` means nothing was lost, duplicated, invented,
    inconsistent, or leased twice at once."""

    acknowledged: int = 0
    #: Acknowledged jobs not finished (succeeded/dead/cancelled) in the store at the end.
    lost: list[str] = field(default_factory=list)
    #: Jobs with more than one accepted final outcome, or claimed again after one.
    duplicated: list[str] = field(default_factory=list)
    #: Jobs that ran, completed or are stored but were never acknowledged to a producer.
    unexpected: list[str] = field(default_factory=list)
    #: Two leases on one job provably held at the same moment: (job, attempt, attempt).
    lease_overlaps: list[tuple[str, int, int]] = field(default_factory=list)
    #: The store contradicts the history: a success with no completed body for that
    #: attempt, more attempts than allowed, an accepted outcome the store does not show.
    inconsistent: list[str] = field(default_factory=list)
    # -- information, not failures (at-least-once allows them) -------------------------
    final_states: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    #: Body completions beyond the one recorded (a lost lease, a crash after the body).
    extra_completions: int = 0
    rejected_completions: int = 0
    #: Attempts whose body started while an earlier attempt's body was still running
    #: (allowed only once the earlier lease had ended: see ``lease_overlaps``).
    concurrent_bodies: int = 0
    #: Attempts whose body went on after its last granted lease had expired (a worker
    #: frozen by SIGSTOP does this; it must then be rejected, never recorded).
    ran_past_lease: int = 0
    unrecorded_claims: int = 0
    #: Attempts followed by another attempt, whose body ended but whose outcome is not in
    #: the history (the worker was killed in between); the overlap check then assumes
    #: the lease may have ended with the body.
    unrecorded_outcomes: int = 0
    max_attempt_seen: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.lease_overlaps
            or self.inconsistent
        )

    def summary(self) -> str:
        head = "PASS" if self.ok else "FAIL"
        return (
            f"{head}: acknowledged={self.acknowledged} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} unexpected={len(self.unexpected)} "
            f"lease_overlaps={len(self.lease_overlaps)} inconsistent={len(self.inconsistent)} | "
            f"final={self.final_states} executions={self.executions} "
            f"extra_completions={self.extra_completions} "
            f"rejected_completions={self.rejected_completions} "
            f"concurrent_bodies={self.concurrent_bodies} ran_past_lease={self.ran_past_lease} "
            f"unrecorded_claims={self.unrecorded_claims} "
            f"unrecorded_outcomes={self.unrecorded_outcomes} "
            f"max_attempt={self.max_attempt_seen}"
        )

    def details(self, limit: int = 20) -> str:
        lines = [self.summary()]
        for name in ("lost", "duplicated", "unexpected", "lease_overlaps", "inconsistent"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name} ({len(items)}): {items[:limit]}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass
class _Attempt:
    attempt: int
    token: str | None = None
    claimed_at: float | None = None  # store clock: expires - lease
    held_until: float | None = None  # lower bound of the last granted expiry
    held_until_max: float | None = None  # upper bound of it
    released_at: float | None = None  # start of an accepted finish (any kind)
    sent_outcome: bool = False  # a finish for this lease is in the history
    body_start: float | None = None
    body_end: float | None = None
    completed: bool = False


def check(
    events: Iterable[Mapping[str, Any]],
    store: Iterable[StoredJob],
    *,
    tolerance: float = 0.05,
    expect_all_stored: bool = True,
) -> Report:
    """Judge a run. ``tolerance`` (seconds) absorbs the difference between the store's
    clock and this machine's (zero for SQLite; loopback servers for the others).
    With ``expect_all_stored``, a stored job nobody acknowledged is ``unexpected``."""
    events = list(events)
    stored = {job.id: job for job in store}
    report = Report()
    acked = {e["id"] for e in events if e["ev"] == "enqueued"}
    report.acknowledged = len(acked)
    report.final_states = dict(Counter(j.state for j in stored.values() if j.id in acked))

    # -- lost: acknowledged, not finished ------------------------------------------------
    for job_id in sorted(acked):
        job = stored.get(job_id)
        if job is None or job.state not in FINAL_STATES:
            report.lost.append(job_id)

    # -- unexpected: ran or stored, never acknowledged -----------------------------------
    seen = {e["id"] for e in events if e["ev"] in ("start", "end", "claim", "finish")}
    if expect_all_stored:
        seen |= set(stored)
    report.unexpected = sorted(seen - acked)

    # -- per attempt: leases, bodies and outcomes ----------------------------------------
    attempts: dict[str, dict[int, _Attempt]] = defaultdict(dict)
    by_token: dict[tuple[str, str], _Attempt] = {}
    accepted_finals: dict[str, list[tuple[str, float]]] = defaultdict(list)  # id -> [(kind,t)]
    accepted_by_attempt: dict[tuple[str, int], str] = {}

    def attempt_of(job_id: str, n: int) -> _Attempt:
        return attempts[job_id].setdefault(n, _Attempt(n))

    for e in events:
        if e["ev"] == "claim":
            a = attempt_of(e["id"], int(e["attempt"]))
            a.token = e["token"]
            a.claimed_at = float(e["expires"]) - float(e["lease"])
            a.held_until = a.held_until_max = float(e["expires"])
            by_token[(e["id"], e["token"])] = a
    for e in events:
        ev = e["ev"]
        if ev == "renew":
            a_or_none = by_token.get((e["id"], e["token"]))
            if a_or_none is not None and a_or_none.held_until is not None:
                lease = float(e["lease"])
                a_or_none.held_until = max(a_or_none.held_until, float(e["sent"]) + lease)
                a_or_none.held_until_max = max(
                    a_or_none.held_until_max or 0.0, float(e["acked"]) + lease
                )
        elif ev == "finish":
            sender = by_token.get((e["id"], e["token"]))
            if sender is not None:
                sender.sent_outcome = True
            if e["accepted"]:
                a_or_none = by_token.get((e["id"], e["token"]))
                if a_or_none is not None:
                    sent = float(e["sent"])
                    a_or_none.released_at = min(a_or_none.released_at or sent, sent)
                    accepted_by_attempt[(e["id"], a_or_none.attempt)] = e["kind"]
                if e["kind"] in FINAL_KINDS:
                    accepted_finals[e["id"]].append((e["kind"], float(e["sent"])))
            else:
                report.rejected_completions += 1
        elif ev == "start":
            a = attempt_of(e["id"], int(e["attempt"]))
            a.body_start = float(e["t"])
            report.executions += 1
        elif ev in ("end", "fail", "stop"):
            a = attempt_of(e["id"], int(e["attempt"]))
            a.body_end = float(e["t"])
            a.completed = a.completed or ev == "end"

    # -- duplicated: more than one accepted final outcome, or claimed after one ----------
    for job_id, finals in accepted_finals.items():
        if len(finals) > 1:
            report.duplicated.append(job_id)
            continue
        first_final = finals[0][1]
        if any(
            a.claimed_at is not None and a.claimed_at > first_final + tolerance
            for a in attempts[job_id].values()
        ):
            report.duplicated.append(job_id)  # resurrected after its outcome was recorded
    report.duplicated.sort()

    for job in stored.values():
        if job.attempt > job.max_attempts:
            report.inconsistent.append(f"{job.id}: attempt {job.attempt} > max {job.max_attempts}")
    for job_id, per_attempt in attempts.items():
        job = stored.get(job_id)
        ordered = [per_attempt[n] for n in sorted(per_attempt)]
        report.max_attempt_seen = max(report.max_attempt_seen, ordered[-1].attempt)
        report.unrecorded_claims += sum(
            1 for a in ordered if a.token is None and a.body_start is not None
        )
        completions = sum(1 for a in ordered if a.completed)
        recorded = 1 if job is not None and job.state == "succeeded" else 0
        report.extra_completions += max(0, completions - recorded)

        # Consistency of the store with what the workers were told.
        if job is not None:
            if job.state == "succeeded":
                winner = per_attempt.get(job.attempt)
                if winner is None or not winner.completed:
                    report.inconsistent.append(
                        f"{job_id}: succeeded at attempt {job.attempt}, whose body never completed"
                    )
            for (fid, n), kind in accepted_by_attempt.items():
                if (
                    fid == job_id
                    and kind in FINAL_KINDS
                    and (job.state != kind or job.attempt != n)
                ):
                    report.inconsistent.append(
                        f"{job_id}: attempt {n}'s {kind} was accepted, store says "
                        f"{job.state} at attempt {job.attempt}"
                    )

        # Lease overlaps: attempt k+1 was granted while k's lease provably still held
        # (granted expiry in the future, and k had not even begun to send an outcome).
        for prev, nxt in itertools.pairwise(ordered):
            if nxt.claimed_at is None or prev.held_until is None:
                continue
            held_until = prev.held_until
            if prev.released_at is not None:
                held_until = min(held_until, prev.released_at)
            elif not prev.sent_outcome and prev.body_end is not None:
                # Its body ended but no outcome is in the history: the worker may have
                # been killed after the store applied the outcome and before it could
                # record it, so the lease may have been given back from then on.
                held_until = min(held_until, prev.body_end)
                report.unrecorded_outcomes += 1
            if nxt.claimed_at + tolerance < held_until:
                report.lease_overlaps.append((job_id, prev.attempt, nxt.attempt))
            if (
                prev.body_end is not None
                and nxt.body_start is not None
                and prev.body_end > nxt.body_start
            ):
                report.concurrent_bodies += 1
        for a in ordered:
            if (
                a.body_end is not None
                and a.held_until_max is not None
                and a.released_at is None
                and a.body_end > a.held_until_max + tolerance
            ):
                report.ran_past_lease += 1
    return report


def store_view(app: Any, limit: int = 100_000) -> list[StoredJob]:
    """The store's final view of every job, through the public API."""
    return [StoredJob.from_job(job) for job in app.jobs(limit=limit)]


def write_report(report: Report, directory: Path, name: str, extra: Mapping[str, Any]) -> Path:
    """Keep the report as a JSON file (``artifacts/`` is git-ignored)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
    path.write_text(json.dumps({**extra, "report": report.to_json()}, indent=2, default=str))
    return path
