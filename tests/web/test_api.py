"""The JSON API over real HTTP: every endpoint, every error status, tenant isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.worker import Worker
from tests.web.conftest import Running

ENDPOINTS = [
    ("POST", "/jobs", {"task": "media.resize", "args": ["a"]}),
    ("POST", "/jobs/batch", {"jobs": [{"task": "media.resize", "args": ["a"]}]}),
    ("GET", "/jobs", None),
    ("GET", "/jobs/some-id", None),
    ("POST", "/jobs/some-id/cancel", None),
    ("POST", "/jobs/some-id/replay", None),
    ("POST", "/jobs/replay", {}),
    ("GET", "/stats", None),
    ("PUT", "/tenants/org-7", {"weight": 2}),
    ("GET", "/tasks", None),
    ("GET", "/metrics", None),
    ("POST", "/webhooks", {"url": "http://127.0.0.1:9/", "events": ["job.dead"]}),
    ("GET", "/webhooks", None),
    ("DELETE", "/webhooks/abc", None),
    ("GET", "/webhooks/abc/deliveries", None),
]


def submit(served: Running, token: str, **body: Any) -> dict[str, Any]:
    body.setdefault("task", "media.resize")
    body.setdefault("args", ["img"])
    response = served.client(token).post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def make_dead(served: Running, token: str, tmp_path: Path, n: int = 1) -> list[str]:
    """Jobs that fail for good (their marker file is missing), run to ``dead``."""
    ids = [
        submit(served, token, task="flaky", args=[str(tmp_path / f"marker-{i}")])["id"]
        for i in range(n)
    ]
    Worker(served.app, handle_signals=False, poll_interval=0.05).run(burst=True)
    for job_id in ids:
        assert served.client(served.admin).get(f"/jobs/{job_id}").json()["state"] == "dead"
    return ids


# -- auth -------------------------------------------------------------------------------
def test_health_and_schema_need_no_token(served: Running) -> None:
    anonymous = served.client()
    assert anonymous.get("/health").json() == {"status": "ok"}
    schema = anonymous.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/batch", "/stats", "/metrics"} <= set(schema["paths"])
    assert "JobSubmit" in schema["components"]["schemas"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("token", [None, "cvy_not-a-real-token", "Basic abc"])
def test_every_endpoint_refuses_a_missing_or_bad_token(
    served: Running, method: str, path: str, body: Any, token: str | None
) -> None:
    headers = {}
    if token and token.startswith("Basic"):
        headers["Authorization"] = token
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    response = served.client().request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert served.client(served.admin).get("/jobs").json() == {"jobs": []}  # nothing happened


def test_a_revoked_token_stops_working_at_once(served: Running) -> None:
    token = served.create_token(tenant="org-9")
    assert served.client(token).get("/jobs").status_code == 200
    import asyncio

    from conveyor.backends import create_backend
    from conveyor.web import tokens

    async def revoke() -> None:
        backend = create_backend(served.store_url)
        await backend.open()
        try:
            [info] = [t for t in await tokens.list_tokens(backend) if t.tenant == "org-9"]
            await tokens.revoke_token(backend, info.id)
        finally:
            await backend.close()

    asyncio.run(revoke())
    assert served.client(token).get("/jobs").status_code == 401


# -- submit -----------------------------------------------------------------------------
def test_submit_one_on_every_engine(served_any: Running) -> None:
    served = served_any
    job = submit(
        served, served.org7, args=["img-1"], kwargs={"width": 640}, key="resize:img-1", delay=30
    )
    assert job["task"] == "media.resize"
    assert job["tenant"] == "org-7"  # the token's tenant
    assert job["state"] == "scheduled"
    assert job["args"] == ["img-1"] and job["kwargs"] == {"width": 640}
    assert job["priority"] == 5 and job["max_attempts"] == 3
    # The same key while the job is active answers the same job.
    again = submit(served, served.org7, args=["img-1"], key="resize:img-1")
    assert again["id"] == job["id"]
    # Another tenant cannot learn about it through the key.
    response = served.client(served.org8).post(
        "/jobs", json={"task": "media.resize", "args": ["x"], "key": "resize:img-1"}
    )
    assert response.status_code == 409
    assert job["id"] not in response.text


def test_submit_options(served: Running) -> None:
    low = submit(served, served.org7, low_priority=True)
    assert low["priority"] == 9
    urgent = submit(served, served.admin, tenant="org-8", priority=0, queue="media")
    assert (urgent["priority"], urgent["tenant"], urgent["queue"]) == (0, "org-8", "media")
    tuned = submit(served, served.admin, max_attempts=7, timeout=2.5)
    assert (tuned["max_attempts"], tuned["timeout"], tuned["tenant"]) == (7, 2.5, None)


def test_a_tenant_token_cannot_submit_for_another_tenant(served: Running) -> None:
    response = served.client(served.org7).post(
        "/jobs", json={"task": "media.resize", "args": ["a"], "tenant": "org-8"}
    )
    assert response.status_code == 403
    assert "org-7" in response.json()["detail"]


def test_unknown_task_is_404_with_its_name(served: Running) -> None:
    response = served.client(served.org7).post("/jobs", json={"task": "media.nope"})
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown task 'media.nope'", "task": "media.nope"}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"priority": 12}, "priority", "less than or equal to 9"),
        ({"priority": "high"}, "priority", "valid integer"),
        ({"priority": True}, "priority", "valid integer"),
        ({"delay": -1}, "delay", "greater than or equal to 0"),
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"args": "abc"}, "args", "valid list"),
        ({"kwargs": [1]}, "kwargs", "valid dictionary"),
        ({"tenant": ""}, "tenant", "at least 1 character"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"low_priority": True, "priority": 2}, "low_priority", "not both"),
        ({"task": None}, "task", "valid string"),
    ],
)
def test_invalid_submissions_are_422_with_field_and_reason(
    served: Running, body: dict[str, Any], field: str, reason: str
) -> None:
    payload = {"task": "media.resize", "args": ["a"], **body}
    if payload["task"] is None:
        del payload["task"]
        reason = "Field required"
    response = served.client(served.admin).post("/jobs", json=payload)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == field
    assert reason in error["msg"]


def test_a_value_json_cannot_hold_is_422(served: Running) -> None:
    response = served.client(served.admin).post(
        "/jobs",
        content=b'{"task": "media.resize", "args": [NaN]}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "args"]
    assert "not JSON-serializable" in error["msg"]


def test_malformed_json_is_422(served: Running) -> None:
    response = served.client(served.admin).post(
        "/jobs", content=b'{"task": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_payload_over_the_limit_is_413(served: Running) -> None:
    big = "x" * (64 * 1024)  # the test app's max_payload is 64 KiB
    response = served.client(served.org7).post(
        "/jobs", json={"task": "media.resize", "args": [big]}
    )
    assert response.status_code == 413
    assert "over the limit of 65536 bytes" in response.json()["detail"]
    huge = b"x" * (17 * 1024 * 1024)  # over the server's request body limit
    response = served.client(served.org7).post(
        "/jobs", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert served.client(served.admin).get("/jobs").json() == {"jobs": []}


# -- batch ------------------------------------------------------------------------------
def test_batch_submit(served_any: Running) -> None:
    served = served_any
    body = {"jobs": [{"task": "media.resize", "args": [f"img-{i}"]} for i in range(5)]}
    response = served.client(served.org7).post("/jobs/batch", json=body)
    assert response.status_code == 201
    ids = response.json()["ids"]
    assert len(ids) == 5
    listed = served.client(served.org7).get("/jobs").json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert {j["tenant"] for j in listed} == {"org-7"}


@pytest.mark.parametrize(
    ("jobs", "status", "needle"),
    [
        ([{"task": "media.resize"}, {"task": "nope"}], 404, "jobs[1]"),
        ([], 422, "at least 1 item"),
        ([{"task": "media.resize", "priority": 10}], 422, "less than or equal to 9"),
        ([{"task": "media.resize"}, {"task": "media.resize", "args": ["x" * 70000]}], 413, "limit"),
        ([{"task": "media.resize", "tenant": "org-8"}], 403, "org-7"),
    ],
)
def test_batch_errors_insert_nothing(
    served: Running, jobs: list[dict[str, Any]], status: int, needle: str
) -> None:
    response = served.client(served.org7).post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == status, response.text
    assert needle in response.text
    assert served.client(served.admin).get("/jobs").json() == {"jobs": []}


# -- reading ----------------------------------------------------------------------------
def test_tenant_isolation_with_two_tokens(served_any: Running) -> None:
    served = served_any
    mine = submit(served, served.org7)["id"]
    theirs = submit(served, served.org8)["id"]
    org7, org8, admin = (served.client(t) for t in (served.org7, served.org8, served.admin))

    assert org7.get(f"/jobs/{mine}").status_code == 200
    # Another tenant's job answers exactly like a job that does not exist.
    hidden, missing = org7.get(f"/jobs/{theirs}"), org7.get("/jobs/no-such-job")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"] == f"no job with id {theirs!r}"
    assert org7.post(f"/jobs/{theirs}/cancel").status_code == 404
    assert org7.post(f"/jobs/{theirs}/replay").status_code == 404

    assert [j["id"] for j in org7.get("/jobs").json()["jobs"]] == [mine]
    assert [j["id"] for j in org8.get("/jobs").json()["jobs"]] == [theirs]
    assert org7.get("/jobs", params={"tenant": "org-8"}).status_code == 403
    assert {r["tenant"] for r in org7.get("/stats").json()["stats"]} == {"org-7"}

    assert {j["id"] for j in admin.get("/jobs").json()["jobs"]} == {mine, theirs}
    assert [j["id"] for j in admin.get("/jobs", params={"tenant": "org-8"}).json()["jobs"]] == [
        theirs
    ]
    assert admin.get(f"/jobs/{theirs}").json()["tenant"] == "org-8"
    assert org8.get(f"/jobs/{theirs}").status_code == 200


def test_list_filters_and_their_errors(served: Running) -> None:
    submit(served, served.admin, tenant="org-7", queue="media")
    submit(served, served.admin, tenant="org-7", delay=60)
    admin = served.client(served.admin)
    assert len(admin.get("/jobs", params={"queue": "media"}).json()["jobs"]) == 1
    assert len(admin.get("/jobs", params={"state": "scheduled"}).json()["jobs"]) == 1
    assert len(admin.get("/jobs", params={"task": "media.resize", "limit": 1}).json()["jobs"]) == 1
    for params in ({"state": "sleeping"}, {"limit": 0}, {"limit": 1001}, {"queue": ""}):
        response = admin.get("/jobs", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][-1] in params


def test_get_job_detail(served: Running) -> None:
    job = submit(served, served.org7, args=["a"], kwargs={"width": 3})
    got = served.client(served.org7).get(f"/jobs/{job['id']}").json()
    assert got == job
    assert served.client(served.org7).get("/jobs/" + "x" * 101).status_code == 422


# -- acting on jobs ---------------------------------------------------------------------
def test_cancel(served_any: Running) -> None:
    served = served_any
    job = submit(served, served.org7)
    client = served.client(served.org7)
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json() == {"id": job["id"], "state": "cancelled"}
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
    assert client.post("/jobs/nope/cancel").status_code == 404


def test_replay_one_dead_job(served_any: Running, tmp_path: Path) -> None:
    served = served_any
    [dead] = make_dead(served, served.org7, tmp_path)
    client = served.client(served.org7)
    detail = client.get(f"/jobs/{dead}").json()
    assert detail["errors"][0]["type"] == "RuntimeError"
    assert "Traceback" in detail["errors"][0]["traceback"]
    response = client.post(f"/jobs/{dead}/replay")
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    conflict = client.post(f"/jobs/{dead}/replay")
    assert conflict.status_code == 409
    assert "only dead or cancelled" in conflict.json()["detail"]
    assert client.post("/jobs/nope/replay").status_code == 404


def test_replay_all_dead_jobs_matching_a_filter(served: Running, tmp_path: Path) -> None:
    mine = make_dead(served, served.org7, tmp_path / "a", n=2)
    theirs = make_dead(served, served.org8, tmp_path / "b", n=1)
    org7 = served.client(served.org7)
    response = org7.post("/jobs/replay", json={"task": "media.resize"})
    assert response.json() == {"replayed": []}  # no dead job of that task
    response = org7.post("/jobs/replay", json={})
    assert response.status_code == 200
    assert sorted(response.json()["replayed"]) == sorted(mine)  # never another tenant's
    assert org7.post("/jobs/replay", json={"tenant": "org-8"}).status_code == 403
    admin = served.client(served.admin)
    assert admin.post("/jobs/replay", json={"tenant": "org-8", "limit": 5}).json() == {
        "replayed": theirs
    }
    assert admin.post("/jobs/replay", json={"limit": 0}).status_code == 422


# -- stats, tenants, tasks, metrics -----------------------------------------------------
def test_stats_and_tenant_settings(served: Running) -> None:
    for _ in range(3):
        submit(served, served.org7)
    submit(served, served.org8)
    admin = served.client(served.admin)
    rows = {r["tenant"]: r for r in admin.get("/stats").json()["stats"]}
    assert rows["org-7"]["queued"] == 3 and rows["org-8"]["queued"] == 1
    assert rows["org-7"]["weight"] == 1.0 and rows["org-7"]["running_share"] == 0.0

    response = admin.put("/tenants/org-7", json={"weight": 3, "max_running": 2})
    assert response.status_code == 200
    assert (response.json()["weight"], response.json()["max_running"]) == (3.0, 2)
    assert served.client(served.org7).put("/tenants/org-7", json={"weight": 9}).status_code == 403
    bad = admin.put("/tenants/org-7", json={"weight": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "weight"


def test_tasks(served: Running) -> None:
    names = [t["name"] for t in served.client(served.org7).get("/tasks").json()["tasks"]]
    assert names == [
        "conveyor.webhook",
        "flaky",
        "leap-day-report",
        "media.resize",
        "payments.charge",
        "slow",
    ]


def test_metrics(served_any: Running, tmp_path: Path) -> None:
    served = served_any
    make_dead(served, served.org7, tmp_path)
    submit(served, served.org8)
    response = served.client(served.admin).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'conveyor_jobs{queue="default",state="dead",tenant="org-7"} 1.0' in text
    assert 'conveyor_jobs{queue="default",state="queued",tenant="org-8"} 1.0' in text
    for name in (
        "conveyor_queue_oldest_wait_seconds",
        "conveyor_tenant_running_share",
        "conveyor_tenant_weight",
        "conveyor_workers_busy",
        "conveyor_job_wait_seconds",
        "conveyor_job_run_seconds",
        "conveyor_jobs_finished_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert served.client(served.org7).get("/metrics").status_code == 403


def test_metrics_depth_by_priority(served_any: Running, tmp_path: Path) -> None:
    served = served_any
    make_dead(served, served.org7, tmp_path)  # finished: not waiting, no series
    submit(served, served.org7, priority=1)
    submit(served, served.org7, priority=1)
    submit(served, served.org8, priority=4)
    submit(served, served.org8, priority=4, delay=60)
    text = served.client(served.admin).get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("conveyor_jobs_waiting{")]
    assert sorted(series) == [
        'conveyor_jobs_waiting{priority="1",queue="default",state="queued",tenant="org-7"} 2.0',
        'conveyor_jobs_waiting{priority="4",queue="default",state="queued",tenant="org-8"} 1.0',
        'conveyor_jobs_waiting{priority="4",queue="default",state="scheduled",tenant="org-8"} 1.0',
    ]
    # The per-state gauge keeps its name and labels.
    assert 'conveyor_jobs{queue="default",state="queued",tenant="org-7"} 2.0' in text
