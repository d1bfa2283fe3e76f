"""``conveyor token ...`` and ``conveyor serve``, as a user runs them (real CLI)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import APP, CONVEYOR, Conveyor, wait_showing


@pytest.fixture
def cv(tmp_path: Path) -> Iterator[Conveyor]:
    conveyor = Conveyor(tmp_path)
    try:
        yield conveyor
    finally:
        conveyor.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_token_create_list_revoke(cv: Conveyor) -> None:
    created = cv.run("token", "create", "--tenant", "org-7", "--name", "ci")
    token = created.stdout.strip()
    assert token.startswith("cvy_") and len(token) > 40
    assert "not shown again" in created.stderr
    admin = cv.run("token", "create", "--admin").stdout.strip()
    listed = cv.json("token", "list")
    assert [(t["tenant"], t["admin"], t["name"]) for t in listed] == [
        ("org-7", False, "ci"),
        (None, True, None),
    ]
    assert token not in cv.run("token", "list").stdout  # only ids, never the token
    assert not list(cv.path.glob("*.db")) or token.encode() not in (cv.path / "c.db").read_bytes()

    revoked = cv.run("token", "revoke", listed[0]["id"])
    assert f"revoked token {listed[0]['id']}" in revoked.stdout
    assert [t["id"] for t in cv.json("token", "list")] == [listed[1]["id"]]
    again = cv.run("token", "revoke", listed[0]["id"], check=False)
    assert again.returncode == 1 and "no token with id" in again.stderr
    assert admin


def test_token_create_needs_a_tenant_or_admin(cv: Conveyor) -> None:
    done = cv.run("token", "create", check=False)
    assert done.returncode == 2
    assert "--tenant" in done.stderr


def test_serve_answers_the_api_with_a_token(cv: Conveyor) -> None:
    token = cv.run("token", "create", "--tenant", "org-7").stdout.strip()
    port = _free_port()
    log = cv.path / "serve.log"
    cv.logs.append(log)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CONVEYOR, "serve", APP, "--port", str(port)],
            cwd=cv.path,
            env=cv.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cv.procs.append(proc)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_showing(up, 20, "the server to answer", cv.worker_logs)
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(base + "/jobs", json={"task": "record", "args": [1]}, headers=headers)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert cv.job(job_id)["tenant"] == "org-7"  # the CLI sees what the API wrote
    assert httpx.get(base + "/jobs", headers={"Authorization": "Bearer x"}).status_code == 401
    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
    assert proc.wait(timeout=15) in (0, -15)
    output = log.read_text()
    assert f"http://127.0.0.1:{port}/" in output
    assert "Finished server process" in output
