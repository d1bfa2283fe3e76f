"""A sync task that ignores its timeout gets its worker process replaced."""

from __future__ import annotations

import collections

import pytest

from .conftest import Conveyor


@pytest.mark.timeout(90)
def test_stuck_sync_task_times_out_and_its_process_is_replaced(cv: Conveyor) -> None:
    # Enqueued first, so that one claim takes them all into the same worker process.
    neighbours = cv.produce("record", 3, seconds=3.0)
    stuck = cv.enqueue("stuck")  # timeout=1 s, sleeps 30 s
    done = cv.run_worker("-p", "1", "-c", "4", "--lease", "5", timeout=60)

    job = cv.job(stuck)
    assert job["state"] == "dead"
    assert [(e["type"], e["message"]) for e in job["errors"]] == [
        ("TimeoutError", "timed out after 1 s (attempt 1 of 1, no attempts left)")
    ]
    # The worker asked to be replaced, and the supervisor started a new process.
    assert done.stderr.count("started worker process 0") == 2, done.stderr
    assert "overran its timeout" in done.stderr

    # The jobs that shared the process were released, not failed: their interrupted
    # attempt was given back, and they ran again, in the new process, to success.
    starts = collections.defaultdict(list)
    for what, job_id, attempt, pid in cv.executions():
        if what == "start":
            starts[job_id].append((int(attempt), pid))
    for i, job_id in enumerate(neighbours):
        job = cv.job(job_id)
        assert job["state"] == "succeeded" and job["result"] == i
        assert job["attempt"] == 1 and job["errors"] == [], job
        (first, pid1), (second, pid2) = starts[job_id]
        assert first == second == 1 and pid1 != pid2
