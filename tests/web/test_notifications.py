"""Notifications: in-process listeners, and webhooks delivered by workers, signed, retried."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import notify
from conveyor.backends import create_backend
from tests.contract.conftest import ENGINES, fresh_store
from tests.web.conftest import Running
from tests.web.test_api import submit


class Receiver:
    """A webhook receiver on a loopback port: records requests, answers from a script."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"got {len(self.requests)} of {count} requests"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500, 200])  # the first delivery fails: the worker must retry
    yield r
    r.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_listeners_hear_every_outcome(engine: str, tmp_path: Path) -> None:
    with fresh_store(engine, tmp_path) as url:
        app = conveyor.App(url)
        heard: list[notify.Event] = []
        for name in notify.EVENTS:
            app.on(name)(heard.append)

        @app.task(name="ok")
        def ok(x: int) -> int:
            return x * 2

        @app.task(name="once", max_attempts=2, backoff=conveyor.Backoff(base=0, jitter=False))
        def once() -> str:
            if conveyor.current_job().attempt == 1:
                raise ValueError("first try")
            return "second"

        @app.task(name="never", max_attempts=1)
        def never() -> None:
            raise conveyor.Fail("no")

        try:
            ok.options(tenant="org-7").enqueue(21)
            once.enqueue()
            never.enqueue()
            conveyor.Worker(app, handle_signals=False, poll_interval=0.05).run(burst=True)
        finally:
            app.close()
    seen = sorted((e.task, e.name, e.attempt) for e in heard)
    assert seen == [
        ("never", "job.dead", 1),
        ("ok", "job.succeeded", 1),
        ("once", "job.retrying", 1),
        ("once", "job.succeeded", 2),
    ]
    [succeeded] = [e for e in heard if e.task == "ok"]
    assert (succeeded.result, succeeded.tenant, succeeded.queue) == (42, "org-7", "default")
    [dead] = [e for e in heard if e.name == "job.dead"]
    assert dead.error is not None and dead.error["type"] == "Fail"


def test_batch_finished_is_heard_when_the_merge_job_ends(tmp_path: Path) -> None:
    with fresh_store("sqlite", tmp_path) as url:
        app = conveyor.App(url)
        heard: list[notify.Event] = []
        app.on("batch.finished")(heard.append)

        @app.task(name="square")
        def square(chunk: list[int]) -> int:
            return sum(x * x for x in chunk)

        @app.task(name="total")
        def total(results: list[int]) -> int:
            return sum(results)

        try:
            batch = app.map(square, [1, 2, 3], then=total)
            conveyor.Worker(app, handle_signals=False, poll_interval=0.05).run(burst=True)
            assert batch.wait(timeout=10) == 14
        finally:
            app.close()
    assert [(e.name, e.job_id, e.task, e.result) for e in heard] == [
        ("batch.finished", batch.id, "total", 14)
    ]


def test_a_job_the_reaper_sends_to_dead_is_announced(tmp_path: Path) -> None:
    """Its worker was lost: the maintenance loop announces job.dead for it."""
    with fresh_store("sqlite", tmp_path) as url:
        app = conveyor.App(url)
        heard: list[notify.Event] = []
        app.on("job.dead")(heard.append)

        @app.task(name="lost", max_attempts=1)
        def lost() -> None:
            raise AssertionError("never runs: a vanished worker holds it")

        async def claim_and_vanish() -> str:
            backend = create_backend(url)
            await backend.open()
            try:
                (job,) = await backend.claim(["default"], 1, worker="gone", lease=0.2)
                return job.id
            finally:
                await backend.close()

        worker = conveyor.Worker(
            app, handle_signals=False, poll_interval=0.05, maintenance_interval=0.05
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        try:
            lost.enqueue()
            job_id = asyncio.run(claim_and_vanish())
            thread.start()
            deadline = time.monotonic() + 15
            while not heard:
                assert time.monotonic() < deadline, "no job.dead for the reaped job"
                time.sleep(0.05)
        finally:
            worker.stop()
            thread.join(30)
            app.close()
    [event] = heard
    assert (event.name, event.job_id, event.task) == ("job.dead", job_id, "lost")
    assert event.error is not None and event.error["type"] == "WorkerLost"


def test_unknown_event_names_are_refused() -> None:
    app = conveyor.App("sqlite:///unused-notify.db")
    with pytest.raises(ValueError, match=r"unknown event 'job\.done'"):
        app.on("job.done")


def test_webhook_is_signed_retried_and_logged(
    served: Running, worker: conveyor.Worker, receiver: Receiver
) -> None:
    org7 = served.client(served.org7)
    response = org7.post("/webhooks", json={"url": receiver.url, "events": ["job.succeeded"]})
    assert response.status_code == 201, response.text
    hook = response.json()
    assert hook["tenant"] == "org-7" and hook["secret"].startswith("whsec_")

    theirs = submit(served, served.org8, args=["theirs"])["id"]  # another tenant: not sent
    mine = submit(served, served.org7, args=["mine"], kwargs={"width": 5})["id"]
    receiver.wait_for(2)  # 500, then the retry that succeeds
    time.sleep(0.5)  # nothing else is coming
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert notify.verify(
            hook["secret"], headers["X-Conveyor-Timestamp"], body, headers["X-Conveyor-Signature"]
        )
        assert headers["X-Conveyor-Event"] == "job.succeeded"
        event = json.loads(body)
        assert event["job_id"] == mine and event["tenant"] == "org-7"
        assert event["result"] == {"image": "mine", "width": 5}
    assert theirs not in str(receiver.requests)

    def log() -> list[dict[str, Any]]:
        return list(org7.get(f"/webhooks/{hook['id']}/deliveries").json()["deliveries"])

    deadline = time.monotonic() + 10
    while not log() or log()[0]["state"] != "succeeded":
        assert time.monotonic() < deadline, log()
        time.sleep(0.05)
    [delivery] = log()
    assert (delivery["event"], delivery["event_job_id"]) == ("job.succeeded", mine)
    assert delivery["attempt"] == 2
    assert "500" in delivery["errors"][0]["message"]
    assert delivery["result"]["status"] == 200


def test_a_failed_batch_is_posted_to_its_webhook_once(served: Running) -> None:
    """The store cancels the merge job when a chunk dies: the maintenance loop drains
    the outbox and the webhook gets one ``batch.finished`` with the chunk's error."""
    app = served.app

    @app.task(name="part", max_attempts=1)
    def part(items: list[int]) -> int:
        if 2 in items:
            raise ValueError("bad item 2")
        return sum(items)

    @app.task(name="join")
    def join(results: list[int]) -> int:
        raise AssertionError("must not run")

    receiver = Receiver([])
    org7 = served.client(served.org7)
    events = ["batch.finished"]
    response = org7.post("/webhooks", json={"url": receiver.url, "events": events})
    assert response.status_code == 201, response.text
    secret = response.json()["secret"]
    worker = conveyor.Worker(
        app, poll_interval=0.05, maintenance_interval=0.05, handle_signals=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        batch = app.map(part, [1, 2, 3], chunk_size=1, then=join, tenant="org-7")
        receiver.wait_for(1)
        time.sleep(0.5)  # nothing else is coming
    finally:
        worker.stop()
        thread.join(30)
        receiver.close()
    [(headers, body)] = receiver.requests
    assert notify.verify(
        secret, headers["X-Conveyor-Timestamp"], body, headers["X-Conveyor-Signature"]
    )
    event = json.loads(body)
    assert (event["event"], event["job_id"], event["tenant"]) == (
        "batch.finished",
        batch.id,
        "org-7",
    )
    [failure] = event["error"]["failures"]
    assert (failure["job"], failure["type"]) == (batch.jobs[1].id, "ValueError")


def test_signature_check_refuses_tampering_and_old_deliveries() -> None:
    body = b'{"event":"job.dead"}'
    now = 1_700_000_000
    signature = notify.sign("whsec_x", now, body)
    assert notify.verify("whsec_x", str(now), body, signature, now=now + 10)
    assert not notify.verify("whsec_x", str(now), body + b" ", signature, now=now)
    assert not notify.verify("whsec_y", str(now), body, signature, now=now)
    assert not notify.verify("whsec_x", str(now), body, signature, now=now + 301)
    assert not notify.verify("whsec_x", "soon", body, signature, now=now)


def test_webhook_api_validation_and_isolation(served: Running) -> None:
    org7, org8, admin = (served.client(t) for t in (served.org7, served.org8, served.admin))
    for body, field in [
        ({"url": "ftp://example.org/x", "events": ["job.dead"]}, "url"),
        ({"url": "http://127.0.0.1:9/", "events": ["job.done"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["job.dead"], "colour": 1}, "colour"),
    ]:
        response = org7.post("/webhooks", json=body)
        assert response.status_code == 422, body
        assert field in response.json()["detail"][0]["loc"]
    other = {"url": "http://127.0.0.1:9/", "events": ["job.dead"], "tenant": "org-8"}
    assert org7.post("/webhooks", json=other).status_code == 403
    hook = org7.post("/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["job.dead"]})
    hook_id = hook.json()["id"]
    assert [h["id"] for h in org7.get("/webhooks").json()["webhooks"]] == [hook_id]
    assert "secret" not in org7.get("/webhooks").json()["webhooks"][0]
    assert org8.get("/webhooks").json() == {"webhooks": []}
    assert org8.get(f"/webhooks/{hook_id}/deliveries").status_code == 404
    assert org8.delete(f"/webhooks/{hook_id}").status_code == 404
    every = admin.post("/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["job.dead"]})
    assert every.json()["tenant"] is None  # an admin's webhook hears every tenant
    assert len(admin.get("/webhooks").json()["webhooks"]) == 2
    assert org7.delete(f"/webhooks/{hook_id}").status_code == 204
    assert org7.delete(f"/webhooks/{hook_id}").status_code == 404
