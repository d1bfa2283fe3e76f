"""The operator's commands end to end: enqueue, jobs, job, dead, replay, cancel, stats."""

from __future__ import annotations

import json

import pytest

from .conftest import APP, Conveyor


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--args", "not json"], "Invalid value for '--args': not valid JSON"),
        (["--args", '{"a": 1}'], "Invalid value for '--args': must be a JSON array"),
        (["--kwargs", "[1, 2]"], "Invalid value for '--kwargs': must be a JSON object"),
        (["--kwargs", "{oops"], "Invalid value for '--kwargs': not valid JSON"),
        (["--priority", "12"], "priority must be an integer from 0 (most urgent) to 9, got 12"),
        (["--delay", "-5"], "delay must be >= 0 seconds, got -5.0"),
        (["--max-attempts", "0"], "max_attempts must be an integer >= 1, got 0"),
        (["--priority", "high"], "Invalid value for '--priority'"),
    ],
)
def test_enqueue_refuses_bad_input_clearly(cv: Conveyor, options: list[str], message: str) -> None:
    done = cv.run("enqueue", "record", *options, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (cv.path / "c.db").exists() or cv.jobs() == []


def test_bad_url_and_bad_app_fail_fast_and_clearly(cv: Conveyor) -> None:
    done = cv.run("--url", "mysql://x/y", "jobs", check=False)
    assert done.returncode == 2 and "unsupported storage URL scheme 'mysql'" in done.stderr
    assert "Traceback" not in done.stderr

    done = cv.run("worker", "no_such_module:app", timeout=20, check=False)
    assert done.returncode == 2
    assert "cannot load app 'no_such_module:app'" in done.stderr
    assert "started worker process" not in done.stderr  # failed before any child started

    (cv.path / "broken.py").write_text("import conveyor\napp = conveyor.App()\n1 / 0\n")
    done = cv.run("worker", "broken:app", timeout=20, check=False)
    assert done.returncode == 2
    assert "ZeroDivisionError" in done.stderr and "broken.py" in done.stderr  # where it broke

    done = cv.run("worker", "tasks_app:nothing", timeout=20, check=False)
    assert done.returncode == 2 and "has no attribute 'nothing'" in done.stderr


def test_unknown_task_goes_dead_and_the_worker_keeps_going(cv: Conveyor) -> None:
    # A producer that does not import the tasks enqueues by name (no --app).
    unknown = cv.enqueue("billing.nope", "--args", "[1]", app=False)
    known = cv.enqueue("record", "--args", "[7]", app=False)
    cv.run_worker("-c", "2")

    job = cv.job(unknown)
    assert job["state"] == "dead" and job["attempt"] == 1
    assert [e["message"] for e in job["errors"]] == ["unknown task 'billing.nope'"]
    assert cv.job(known)["state"] == "succeeded" and cv.job(known)["result"] == 7
    assert [j["id"] for j in cv.json("dead")] == [unknown]


@pytest.mark.timeout(120)
def test_operator_commands_end_to_end(cv: Conveyor) -> None:
    broken = cv.enqueue("needs_file", "--args", '["fix.txt"]')
    acme = cv.enqueue("record", "--args", "[1]", "--tenant", "acme", "--kwargs", '{"seconds": 0}')
    urgent = cv.enqueue("record", "--args", "[2]", "--tenant", "globex", "--priority", "0")
    later = cv.enqueue("record", "--args", "[3]", "--delay", "600", "--key", "nightly")
    assert cv.enqueue("record", "--args", "[4]", "--key", "nightly") == later  # deduplicated

    # Listing and filtering before anything ran.
    assert [j["id"] for j in cv.jobs("--state", "scheduled")] == [later]
    assert [j["id"] for j in cv.jobs("--tenant", "acme")] == [acme]
    assert cv.job(urgent)["priority"] == 0 and cv.job(urgent)["state"] == "queued"
    assert cv.job(broken)["max_attempts"] == 1  # the task's own default, via --app
    human = cv.run("jobs").stdout
    assert all(i in human for i in (broken, acme, urgent, later))

    # Cancel: a scheduled job is cancelled at once; cancelling again changes nothing.
    assert f"cancelled {later}" in cv.run("cancel", later).stdout
    assert cv.job(later)["state"] == "cancelled"
    assert cv.run("cancel", later).returncode == 0

    cv.run_worker("-c", "4")
    assert cv.job(acme)["state"] == "succeeded" and cv.job(acme)["result"] == 1
    assert cv.job(urgent)["result"] == 2
    [dead] = cv.json("dead")
    assert dead["id"] == broken and dead["attempt"] == 1
    [error] = dead["errors"]
    assert error["type"] == "FileNotFoundError"
    assert error["message"].startswith("fix.txt is missing")
    assert "Traceback" in error["traceback"] and "needs_file" in error["traceback"]
    assert broken in cv.run("dead").stdout

    detail = cv.run("job", broken).stdout  # the human view shows the whole traceback
    assert "FileNotFoundError: fix.txt is missing" in detail and "Traceback" in detail
    assert '["fix.txt"]' in detail

    # Stats per queue and tenant.
    rows = {(s["queue"], s["tenant"]): s for s in cv.json("stats")}
    assert rows[("default", "acme")]["succeeded"] == 1
    assert rows[("default", "globex")]["succeeded"] == 1
    assert rows[("default", None)]["dead"] == 1
    assert rows[("default", None)]["cancelled"] == 1
    assert sum(s["queued"] + s["running"] for s in rows.values()) == 0
    table = cv.run("stats").stdout
    assert "acme" in table and "globex" in table and "oldest wait" in table

    # Fix the cause, replay the dead job: it runs again and succeeds; history is kept.
    (cv.path / "fix.txt").write_text("fixed")
    assert "replayed" in cv.run("replay", broken).stdout
    assert cv.job(broken)["state"] == "queued"
    cv.run_worker("-c", "4")
    job = cv.job(broken)
    assert job["state"] == "succeeded" and job["result"] == "fixed"
    assert len(job["errors"]) == 1
    assert cv.json("dead") == []

    # What cannot be done says why, with exit status 1.
    done = cv.run("replay", acme, check=False)
    assert done.returncode == 1 and "only dead or cancelled jobs can be replayed" in done.stderr
    done = cv.run("cancel", acme, check=False)
    assert done.returncode == 1 and "already succeeded" in done.stderr
    missing = "01234567-89ab-7def-8123-456789abcdef"
    for command in ("job", "replay", "cancel"):
        done = cv.run(command, missing, check=False)
        assert done.returncode == 1, command
        assert f"no job with id '{missing}'" in done.stderr
        assert "Traceback" not in done.stderr


def test_app_option_and_url_option(cv: Conveyor) -> None:
    other = f"sqlite:///{cv.path}/other.db"
    job_id = cv.run("--url", other, "--app", APP, "enqueue", "suicide").stdout.strip()
    job = json.loads(cv.run("--url", other, "job", job_id, "--json").stdout)
    assert job["max_attempts"] == 2  # the task's default, from --app
    assert cv.jobs() == []  # --url won over $CONVEYOR_URL
