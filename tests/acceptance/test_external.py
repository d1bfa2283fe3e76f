"""External completion through the real CLI: a `conveyor worker` process parks the job,
a thread of the test (the "outside service") completes it with the token, and a second
job whose deadline passes times out and runs again."""

from __future__ import annotations

import threading

import pytest

import conveyor

from .conftest import Conveyor

EXT_APP = "ext_app:app"
EXT_MODULE = """
from pathlib import Path

import conveyor

app = conveyor.App()
HERE = Path(__file__).parent


@app.task(name="render", max_attempts=2)
def render(scene, deadline):
    job = conveyor.current_job()
    if job.attempt == 2:
        return "rendered on the second attempt"
    # Hand the job to the "outside service": it reads the id and token from a file.
    tmp = HERE / f"{scene}.tmp"
    tmp.write_text(f"{job.id} {job.completion_token}")
    tmp.rename(HERE / f"{scene}.handoff")
    raise conveyor.Await(deadline=deadline)
"""


@pytest.fixture
def ext(cv: Conveyor) -> Conveyor:
    (cv.path / "ext_app.py").write_text(EXT_MODULE)
    return cv


@pytest.mark.timeout(90)
def test_a_worker_process_parks_and_a_thread_completes(ext: Conveyor) -> None:
    quick = ext.run("enqueue", "render", "--args", '["intro", 120]').stdout.strip()
    slow = ext.run("enqueue", "render", "--args", '["outro", 1]').stdout.strip()
    ext.start_worker("-p", "1", "-c", "2", app=EXT_APP)
    handoff = ext.path / "intro.handoff"
    ext.wait_for(handoff.exists, 30, "the intro job to be handed off")
    job_id, token = handoff.read_text().split()
    assert job_id == quick
    ext.wait_for(lambda: ext.job(quick)["state"] == "waiting", 30, "the park")

    app = conveyor.App(ext.url)
    try:
        service = threading.Thread(
            target=app.complete_external, args=(job_id, token, {"video": "intro.mp4"})
        )
        service.start()
        service.join(30)
        done = ext.job(quick)
        assert done["state"] == "succeeded" and done["result"] == {"video": "intro.mp4"}
        with pytest.raises(conveyor.CompletionRefused):
            app.complete_external(job_id, token, "again")

        # The outro job's one-second deadline passes: ExternalTimeout, then attempt 2.
        ext.wait_for(lambda: ext.job(slow)["state"] == "succeeded", 60, "the timed-out retry")
        timed_out = ext.job(slow)
        assert timed_out["attempt"] == 2
        assert timed_out["errors"][0]["type"] == "ExternalTimeout"
        _, late_token = (ext.path / "outro.handoff").read_text().split()
        with pytest.raises(conveyor.CompletionRefused) as refused:
            app.complete_external(slow, late_token, "too late")
        assert refused.value.reason == "late"
    finally:
        app.close()
