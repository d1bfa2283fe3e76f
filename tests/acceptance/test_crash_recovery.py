"""Workers die (SIGKILL of the supervisor, a task killing its own process); no job is lost."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest

from .conftest import Conveyor, alive, wait_for


@pytest.mark.timeout(120)
def test_kill9_of_the_supervisor_loses_no_job_and_records_none_twice(cv: Conveyor) -> None:
    ids = cv.produce("record", 24, seconds=1.5)
    supervisor = cv.start_worker("-p", "2", "-c", "4", "--lease", "2")
    workers = cv.worker_pids(supervisor, 2)

    def mid_flight() -> bool:
        counts = collections.Counter(j["state"] for j in cv.jobs())
        return counts["succeeded"] >= 4 and counts["running"] >= 4

    cv.wait_for(mid_flight, timeout=30, what="some jobs done and some in flight")
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(timeout=10)

    # Its worker processes die with it (PR_SET_PDEATHSIG), even though nobody told them.
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, "the worker processes to die")
    orphaned = {j["id"] for j in cv.jobs("--state", "running")}
    assert orphaned, "expected jobs in flight when the worker was killed"

    # A new worker takes the orphans over once their leases expire, and drains the queue.
    started = time.monotonic()
    cv.run_worker("-c", "8", "--lease", "2", timeout=60)
    assert time.monotonic() - started < 45

    jobs = {j["id"]: j for j in cv.jobs()}
    assert set(jobs) == set(ids)  # none lost, none invented
    assert {j["state"] for j in jobs.values()} == {"succeeded"}
    assert sorted(j["result"] for j in jobs.values()) == list(range(24))
    for job_id in orphaned:
        job = jobs[job_id]
        assert job["attempt"] == 2, job
        assert len(job["errors"]) == 1 and "worker lost" in job["errors"][0]["message"], job
    for job_id in set(ids) - orphaned:
        assert jobs[job_id]["errors"] == [], jobs[job_id]

    # At least once, and the store records exactly one success for each job: the attempt
    # it names ran to its end exactly once.
    ends = collections.Counter((f[1], int(f[2])) for f in cv.executions() if f[0] == "end")
    assert {job_id for job_id, _ in ends} == set(ids)
    for job_id, job in jobs.items():
        assert ends[(job_id, job["attempt"])] == 1, (job_id, job["attempt"], ends)


@pytest.mark.timeout(120)
def test_a_task_that_kills_its_worker_ends_dead_and_the_worker_goes_on(cv: Conveyor) -> None:
    supervisor = cv.start_worker("-p", "1", "-c", "4", "--lease", "2")
    cv.worker_pids(supervisor, 1)
    killer = cv.enqueue("suicide")
    others = [cv.enqueue("record", "--args", f"[{i}]") for i in range(3)]

    cv.wait_for(lambda: cv.job(killer)["state"] == "dead", 60, "the suicide job to be dead")
    job = cv.job(killer)
    assert job["attempt"] == 2 and job["max_attempts"] == 2
    assert len(job["errors"]) == 2, job["errors"]
    assert all("worker lost" in err["message"] for err in job["errors"]), job["errors"]

    # The supervisor replaced the process each time, and it still serves new jobs.
    assert supervisor.poll() is None
    others += [cv.enqueue("record", "--args", f"[{i}]") for i in range(3, 6)]
    cv.wait_for(
        lambda: all(cv.job(i)["state"] == "succeeded" for i in others), 30, "the other jobs"
    )
    assert [cv.job(i)["result"] for i in others] == list(range(6))
    assert cv.worker_logs().count("killed by SIGKILL") == 2

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 0


def test_workers_die_with_their_supervisor_even_when_idle(cv: Conveyor) -> None:
    supervisor = cv.start_worker("-p", "2", "--lease", "2")
    workers = cv.worker_pids(supervisor, 2)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, "the worker processes to die")
