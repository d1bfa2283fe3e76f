"""The dashboard over HTTP: login, session cookie, CSRF on every form, tenant views."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from conveyor.web import session as sessions
from tests.web.conftest import Running
from tests.web.test_api import make_dead, submit

PAGES = [
    "/ui/",
    "/ui/queues",
    "/ui/tenants",
    "/ui/jobs",
    "/ui/dead",
    "/ui/workers",
    "/ui/schedules",
]


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def login(served: Running, token: str) -> httpx.Client:
    client = served.client()
    form = client.get("/ui/login")
    assert form.status_code == 200
    response = client.post("/ui/login", data={"token": token, "csrf": _csrf(form.text)})
    assert response.status_code == 303, response.text
    return client


def test_pages_need_a_login(served: Running) -> None:
    client = served.client()
    for path in [*PAGES, "/ui/jobs/some-id"]:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=")
    assert client.get("/ui/data/overview").status_code == 401
    assert client.get("/").headers["location"] == "/ui/"


def test_login_sets_a_strict_http_only_cookie_and_every_page_renders(served: Running) -> None:
    client = served.client()
    form = client.get("/ui/login")
    response = client.post(
        "/ui/login", data={"token": served.admin, "csrf": _csrf(form.text), "next": "/ui/dead"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/dead"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert served.admin not in cookie  # the session holds the token's hash, not the token
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # nothing external
    assert client.get("/ui/data/overview").json()["series"] is not None


def test_login_refuses_bad_tokens_and_forms_without_csrf(served: Running) -> None:
    client = served.client()
    form = client.get("/ui/login")
    wrong = client.post("/ui/login", data={"token": "cvy_nope", "csrf": _csrf(form.text)})
    assert wrong.status_code == 401 and "Unknown or revoked token" in wrong.text
    forged = served.client().post("/ui/login", data={"token": served.admin, "csrf": "x"})
    assert forged.status_code == 401 and "expired" in forged.text
    assert sessions.COOKIE not in forged.headers.get("set-cookie", "")


def test_next_never_leaves_the_dashboard(served: Running) -> None:
    client = served.client()
    form = client.get("/ui/login")
    response = client.post(
        "/ui/login",
        data={"token": served.admin, "csrf": _csrf(form.text), "next": "//evil.example/"},
    )
    assert response.headers["location"] == "/ui/"


def test_every_form_needs_its_csrf_token(served: Running, tmp_path: Path) -> None:
    [dead] = make_dead(served, served.org7, tmp_path)
    queued = submit(served, served.org7)["id"]
    client = login(served, served.admin)
    for path in (f"/ui/jobs/{dead}/replay", f"/ui/jobs/{queued}/cancel", "/ui/dead/replay"):
        for data in ({}, {"csrf": "forged"}):
            assert client.post(path, data=data).status_code == 403, path
    assert client.post("/ui/logout").status_code == 403
    admin = served.client(served.admin)
    assert admin.get(f"/jobs/{dead}").json()["state"] == "dead"
    assert admin.get(f"/jobs/{queued}").json()["state"] == "queued"

    page = client.get(f"/ui/jobs/{dead}")
    token = _csrf(page.text)
    response = client.post(f"/ui/jobs/{dead}/replay", data={"csrf": token})
    assert response.status_code == 303 and "done=replayed" in response.headers["location"]
    assert "queued again" in client.get(response.headers["location"]).text
    assert admin.get(f"/jobs/{dead}").json()["state"] == "queued"
    response = client.post(f"/ui/jobs/{queued}/cancel", data={"csrf": token})
    assert admin.get(f"/jobs/{queued}").json()["state"] == "cancelled"


def test_replay_all_dead_from_the_dashboard(served: Running, tmp_path: Path) -> None:
    ids = make_dead(served, served.org7, tmp_path, n=2)
    client = login(served, served.admin)
    token = _csrf(client.get("/ui/dead").text)
    response = client.post("/ui/dead/replay", data={"csrf": token, "tenant": "org-7"})
    assert response.headers["location"] == "/ui/dead?done=replayed-dead&n=2"
    assert "replayed 2 dead job(s)" in client.get(response.headers["location"]).text
    admin = served.client(served.admin)
    assert {admin.get(f"/jobs/{i}").json()["state"] for i in ids} == {"queued"}


def test_a_tenant_sees_its_own_jobs_only(served: Running) -> None:
    mine = submit(served, served.org7, args=["mine"])["id"]
    theirs = submit(served, served.org8, args=["theirs"])["id"]
    client = login(served, served.org7)
    assert mine in client.get("/ui/jobs").text
    assert theirs not in client.get("/ui/jobs").text
    assert theirs not in client.get("/ui/jobs", params={"tenant": "org-8"}).text
    assert client.get(f"/ui/jobs/{theirs}").status_code == 404
    tenants = client.get("/ui/tenants").text
    assert "org-7" in tenants and "org-8" not in tenants
    # Search by id finds one's own job, and not another tenant's.
    found = client.get("/ui/jobs", params={"q": mine})
    assert found.status_code == 303 and found.headers["location"] == f"/ui/jobs/{mine}"
    assert client.get("/ui/jobs", params={"q": theirs}).status_code == 200


def test_schedules_page_lists_periodic_jobs(served: Running) -> None:
    page = login(served, served.admin).get("/ui/schedules").text
    row = page.split("<tr><td>leap-day-report</td>")[1].split("</tr>")[0]
    assert "0 3 29 2 *" in row and "skip" in row and "-02-29 03:00:00" in row


def test_flash_messages_are_fixed_texts(served: Running) -> None:
    client = login(served, served.admin)
    page = client.get("/ui/", params={"done": "Your token expired, log in at evil.example"})
    assert "evil.example" not in page.text
    assert 'class="flash"' not in page.text


def test_logout_ends_the_session(served: Running) -> None:
    client = login(served, served.admin)
    token = _csrf(client.get("/ui/").text)
    response = client.post("/ui/logout", data={"csrf": token})
    assert response.status_code == 303
    assert client.get("/ui/").status_code == 303  # back to the login page


def test_revoking_the_token_ends_its_sessions(served: Running) -> None:
    token = served.create_token(tenant="org-9")
    client = login(served, token)
    assert client.get("/ui/jobs").status_code == 200
    import asyncio

    from conveyor.backends import create_backend
    from conveyor.web import tokens

    async def revoke() -> None:
        backend = create_backend(served.store_url)
        await backend.open()
        try:
            for info in await tokens.list_tokens(backend):
                if info.tenant == "org-9":
                    await tokens.revoke_token(backend, info.id)
        finally:
            await backend.close()

    asyncio.run(revoke())
    assert client.get("/ui/jobs").status_code == 303
    assert client.get("/ui/data/overview").status_code == 401


@pytest.mark.parametrize("name", ["app.js", "app.css"])
def test_assets_ship_in_the_package(served: Running, name: str) -> None:
    response = served.client().get(f"/ui/static/{name}")
    assert response.status_code == 200
    assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in response.text


def test_workers_page_shows_presence_heartbeats(served: Running, worker: object) -> None:
    from conveyor.worker import Worker, presence

    assert isinstance(worker, Worker)
    admin = served.client(served.admin)
    deadline = time.monotonic() + 10
    while 'conveyor_workers{status="alive"} 1.0' not in admin.get("/metrics").text:
        assert time.monotonic() < deadline, "the worker's presence never showed"
        time.sleep(0.05)
    client = login(served, served.admin)
    row = client.get("/ui/workers").text.split(f'data-worker="{worker.id}"')[1].split("</tr>")[0]
    assert "alive" in row and "default" in row
    assert presence.parse("w", '{"seen_at": 100, "interval": 5}', 114)["alive"] is True
    assert presence.parse("w", '{"seen_at": 100, "interval": 5}', 116)["alive"] is False
    assert presence.parse("w", "not json", 116)["alive"] is False
    # A tenant does not see workers that run nothing of its own.
    assert worker.id not in login(served, served.org7).get("/ui/workers").text


def test_a_stopped_worker_removes_its_presence(served: Running) -> None:
    from conveyor.worker import Worker

    w = Worker(served.app, handle_signals=False, poll_interval=0.05)
    w.run(burst=True)
    text = served.client(served.admin).get("/metrics").text
    assert 'conveyor_workers{status="alive"} 0.0' in text
    assert w.id not in login(served, served.admin).get("/ui/workers").text
