"""Graceful shutdown: SIGTERM, a grace period, then unfinished jobs go back to the queue."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import Conveyor


@pytest.mark.timeout(60)
def test_sigterm_releases_a_long_job_after_the_grace_period(cv: Conveyor) -> None:
    sync_job = cv.enqueue("sleepy", "--args", "[60]")
    async_job = cv.enqueue("async_sleepy", "--args", "[60]")
    supervisor = cv.start_worker("-c", "4", "--grace", "1", "--lease", "5")
    cv.wait_for(
        lambda: {cv.job(sync_job)["state"], cv.job(async_job)["state"]} == {"running"},
        20,
        "both jobs to run",
    )
    assert cv.job(sync_job)["attempt"] == 1

    sent = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=15) == 0
    assert time.monotonic() - sent < 6, "the worker should exit about 1 s (--grace) later"

    for job_id in (sync_job, async_job):
        job = cv.job(job_id)
        assert job["state"] == "queued", job
        assert job["attempt"] == 0, job  # the attempt is given back: nothing burned
        assert job["errors"] == [], job
    assert "released 2 unfinished job(s)" in cv.worker_logs()


@pytest.mark.timeout(60)
def test_cancel_stops_a_running_job(cv: Conveyor) -> None:
    job_id = cv.enqueue("async_sleepy", "--args", "[60]")
    supervisor = cv.start_worker("--lease", "1.5")
    cv.wait_for(lambda: cv.job(job_id)["state"] == "running", 20, "the job to run")
    out = cv.run("cancel", job_id).stdout
    assert "cancel requested" in out
    cv.wait_for(lambda: cv.job(job_id)["state"] == "cancelled", 10, "the job to be cancelled")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=15) == 0


@pytest.mark.timeout(60)
def test_a_second_signal_releases_at_once(cv: Conveyor) -> None:
    job_id = cv.enqueue("async_sleepy", "--args", "[60]")
    supervisor = cv.start_worker("-c", "2", "--grace", "60", "--lease", "5")
    cv.wait_for(lambda: cv.job(job_id)["state"] == "running", 20, "the job to run")

    sent = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the first signal starts a 60 s grace period...
    supervisor.send_signal(signal.SIGTERM)  # ...the second one ends it
    assert supervisor.wait(timeout=20) == 0
    assert time.monotonic() - sent < 15, "a second signal must not wait out --grace 60"
    job = cv.job(job_id)
    assert job["state"] == "queued" and job["attempt"] == 0, job


@pytest.mark.timeout(90)
def test_supervisor_gives_up_on_a_crash_loop(cv: Conveyor) -> None:
    """Worker processes that die at start are not restarted for ever: the supervisor
    stops loudly with a non-zero status."""
    (cv.path / "crashy_app.py").write_text(
        "import sys\n"
        "import conveyor\n"
        "if sys.argv[0].endswith('child.py'):  # only inside a worker process\n"
        "    raise RuntimeError('broken in the worker process')\n"
        "app = conveyor.App()\n"
    )
    done = cv.run("worker", "crashy_app:app", timeout=80, check=False)
    assert done.returncode == 1, done.stderr
    assert "keep crashing at start" in done.stderr and "giving up" in done.stderr
