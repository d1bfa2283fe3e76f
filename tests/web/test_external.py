"""External completion over HTTP: a real worker parks the job, the test completes it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conveyor.job import JobState
from conveyor.worker import Worker
from tests.web.conftest import Running


def handed_off(served: Running, handoff: Path, **kwargs: Any) -> tuple[str, str]:
    """Submits a payments.charge job and waits until it is parked: (id, token)."""
    body = {"task": "payments.charge", "args": [str(handoff)], "kwargs": kwargs}
    response = served.client(served.org7).post("/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    wait_for_state(served, job_id, "waiting")
    found_id, token = handoff.read_text().split()
    assert found_id == job_id
    return job_id, token


def wait_for_state(served: Running, job_id: str, state: str, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        job = served.client(served.admin).get(f"/jobs/{job_id}").json()
        if job["state"] == state:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job['state']}, not {state}"
        time.sleep(0.05)


def test_complete_with_the_token_needs_no_api_token(
    served: Running, worker: Worker, tmp_path: Path
) -> None:
    job_id, token = handed_off(served, tmp_path / "handoff")
    outside = served.client()  # the outside service has no API token
    answer = outside.post(f"/jobs/{job_id}/complete", json={"token": token, "result": {"ok": 1}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": job_id, "state": "succeeded"}
    job = served.client(served.org7).get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["result"] == {"ok": 1}
    again = outside.post(f"/jobs/{job_id}/complete", json={"token": token, "result": 2})
    assert again.status_code == 409, again.text


def test_fail_without_retry_sends_the_job_to_dead(
    served: Running, worker: Worker, tmp_path: Path
) -> None:
    job_id, token = handed_off(served, tmp_path / "handoff")
    body = {"token": token, "error": {"type": "CardDeclined", "message": "no funds"}}
    answer = served.client().post(f"/jobs/{job_id}/fail", json={**body, "retry": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "dead"
    job = served.client(served.admin).get(f"/jobs/{job_id}").json()
    assert job["errors"][-1]["type"] == "CardDeclined"
    assert job["errors"][-1]["message"] == "no funds"


def test_wrong_token_and_unknown_id_answer_the_same_404(
    served: Running, worker: Worker, tmp_path: Path
) -> None:
    job_id, token = handed_off(served, tmp_path / "handoff")
    outside = served.client()
    wrong = outside.post(f"/jobs/{job_id}/complete", json={"token": "x" + token})
    unknown = outside.post("/jobs/no-such-job/complete", json={"token": token})
    assert wrong.status_code == unknown.status_code == 404
    assert wrong.json()["detail"].replace(job_id, "ID") == (
        unknown.json()["detail"].replace("no-such-job", "ID")
    )
    # Another tenant's API token does not help, and the job is still waiting.
    other = served.client(served.org8).post(f"/jobs/{job_id}/fail", json={"token": "nope"})
    assert other.status_code == 404
    assert served.client(served.org8).get(f"/jobs/{job_id}").status_code == 404
    assert served.client(served.org7).get(f"/jobs/{job_id}").json()["state"] == "waiting"
    assert outside.post(f"/jobs/{job_id}/complete", json={}).status_code == 422


def test_a_late_completion_after_the_deadline_is_refused(served: Running, tmp_path: Path) -> None:
    timeouts: list[str] = []
    served.app.on("job.timeout")(lambda event: timeouts.append(event.job_id))
    w = Worker(
        served.app,
        concurrency=2,
        poll_interval=0.05,
        maintenance_interval=0.1,
        handle_signals=False,
    )
    import threading

    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        job_id, token = handed_off(served, tmp_path / "handoff", deadline=0.3)
        job = wait_for_state(served, job_id, "dead")  # max_attempts=1: timed out for good
        assert job["errors"][-1]["type"] == "ExternalTimeout"
        late = served.client().post(f"/jobs/{job_id}/complete", json={"token": token})
        assert late.status_code == 409, late.text
        assert "deadline" in late.json()["detail"]
        assert served.client(served.admin).get(f"/jobs/{job_id}").json()["state"] == "dead"
        deadline = time.monotonic() + 10
        while job_id not in timeouts:
            assert time.monotonic() < deadline, "no job.timeout event"
            time.sleep(0.05)
    finally:
        w.stop()
        thread.join(30)


def test_waiting_jobs_are_counted_and_listed(
    served: Running, worker: Worker, tmp_path: Path
) -> None:
    job_id, _ = handed_off(served, tmp_path / "handoff")
    stats = served.client(served.org7).get("/stats").json()["stats"]
    assert [s["waiting"] for s in stats if s["tenant"] == "org-7"] == [1]
    listed = served.client(served.org7).get("/jobs", params={"state": "waiting"}).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert served.client(served.org7).post(f"/jobs/{job_id}/cancel").json() == {
        "id": job_id,
        "state": JobState.CANCELLED.value,
    }
