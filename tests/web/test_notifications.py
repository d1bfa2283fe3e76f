"""Notifications: in-process listeners, and webhooks delivered by workers, signed, retried."""

from __future__ import annotations

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
