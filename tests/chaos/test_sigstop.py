"""A worker frozen by SIGSTOP past its lease, then resumed with SIGCONT.

While it is frozen its lease expires, the reaper hands the job to another worker, and
that worker records the outcome. When the frozen worker wakes up it must neither record
the job a second time nor keep working on it: its heartbeat learns that the lease is
gone and it stops the attempt itself; a completion it still produces is rejected by the
store's fencing (or dropped by the worker, whichever sees the loss first).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.harness import Cluster

LEASE = "1.5"


def _first(cluster: Cluster, ev: str, **match: Any) -> dict[str, Any]:
    """The first event ``ev`` with these fields, or an empty dict (falsy) if none yet."""
    for e in cluster.events():
        if e["ev"] == ev and all(e.get(k) == v for k, v in match.items()):
            return e
    return {}


@contextlib.contextmanager
def _frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        # Resume even if the test failed, so cleanup's SIGKILL is never the only way out.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _freeze_until_taken_over(cluster: Cluster, task: str, *args: Any) -> tuple[str, int, int]:
    """Runs ``task`` on worker A, freezes A mid-attempt, lets worker B finish the job,
    resumes A. Returns (job id, pid of A, pid of B).

    A keeper, started just before A and serving a queue with no jobs, usually takes the
    maintenance lock first and reaps A's job as soon as its lease expires; otherwise A
    holds the lock and B reaps once it lapses (5 s): slower, same outcome. (A frozen
    lock holder is the soak's business.)"""
    keeper = cluster.start_worker("-p", "1", "-c", "1", "-q", "chaos-keeper", "--lease", LEASE)
    cluster.worker_pids(keeper, 1)
    frozen_worker = cluster.start_worker("-p", "1", "-c", "2", "--lease", LEASE)
    (pid_a,) = cluster.worker_pids(frozen_worker, 1)
    job_id = cluster.enqueue(task, *args)
    cluster.wait_for(lambda: _first(cluster, "start", id=job_id), 20, "attempt 1 to start")
    with _frozen(pid_a):
        other = cluster.start_worker("-p", "1", "-c", "2", "--lease", LEASE)
        (pid_b,) = cluster.worker_pids(other, 1)
        # The keeper reaps at the lease's expiry (if A held the lock: within lease + 5 s).
        cluster.wait_for(
            lambda: cluster.states().get(job_id) == "succeeded", 30, "B to finish the job"
        )
        started = _first(cluster, "start", id=job_id, attempt=2)
        assert started and started["pid"] == pid_b, started
    return job_id, pid_a, pid_b


@pytest.mark.timeout(90)
def test_a_resumed_worker_stops_the_attempt_whose_lease_it_lost(cluster: Cluster) -> None:
    # 40 naps of 0.1 s: after SIGCONT the body still has seconds to go, so the worker's
    # next heartbeat (told "lost") is what ends it. B's attempt takes 2 naps.
    job_id, pid_a, _ = _freeze_until_taken_over(cluster, "chaos.steps", 1, 40, 0.1, 2)
    stopped = cluster.wait_for(
        lambda: _first(cluster, "stop", id=job_id, attempt=1), 10, "A to stop attempt 1"
    )
    assert stopped["pid"] == pid_a
    assert _first(cluster, "lost", id=job_id)
    assert not _first(cluster, "end", id=job_id, attempt=1)  # never ran to its end
    report = cluster.check()
    assert report.ok, report.details()
    (job,) = cluster.store()
    assert (job.state, job.attempt, job.error_types) == ("succeeded", 2, ("WorkerLost",))


@pytest.mark.timeout(90)
def test_a_resumed_workers_late_completion_is_not_recorded(cluster: Cluster) -> None:
    # A sync body that counts its time by the clock: on SIGCONT it completes at once,
    # racing the worker's heartbeat; either way the store keeps B's outcome only.
    job_id, pid_a, _ = _freeze_until_taken_over(cluster, "chaos.busy", 1, 0.6)
    late = cluster.wait_for(
        lambda: _first(cluster, "end", id=job_id, attempt=1), 10, "A's late completion"
    )
    assert late["pid"] == pid_a

    def verdict() -> str | None:
        rejected = _first(cluster, "finish", id=job_id, accepted=False)
        if rejected:
            return "rejected by the store (fencing)"
        if _first(cluster, "lost", id=job_id):
            return "dropped by the worker (heartbeat said lost)"
        return None

    how = cluster.wait_for(verdict, 10, "A to learn that its lease was lost")
    report = cluster.check()
    assert report.ok, report.details()
    assert report.extra_completions == 1  # A's body did complete; it was not recorded
    (job,) = cluster.store()
    assert (job.state, job.attempt) == ("succeeded", 2)
    accepted = [e for e in cluster.events() if e["ev"] == "finish" and e["accepted"]]
    assert [e["pid"] for e in accepted] != [pid_a] and len(accepted) == 1
    print(f"\nA's late completion was {how}; {report.summary()}")
