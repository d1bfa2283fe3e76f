"""Who a sandboxed attempt runs as, and that the weaker set-ups say so out loud."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.worker import sandbox as sandbox_runner
from conveyor.worker import sandbox_child, sandbox_fs

from .conftest import announce, announced, assert_no_processes_left, run

pytestmark = pytest.mark.timeout(30)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the worker is not root")


@root_only
def test_a_root_workers_attempt_runs_as_an_unprivileged_user(app: conveyor.App) -> None:
    @app.task(name="whoami", sandbox=conveyor.Sandbox())
    def whoami() -> dict[str, Any]:
        socket.getaddrinfo("localhost", 80)  # imports encodings.idna lazily
        try:
            with open(f"/proc/{os.getppid()}/mem", "rb"):
                worker_memory = "readable"
        except OSError:
            worker_memory = "unreadable"
        try:
            os.kill(os.getppid(), 0)
            signal_worker = "allowed"
        except PermissionError:
            signal_worker = "refused"
        return {"uid": os.getuid(), "memory": worker_memory, "signal": signal_worker}

    h = whoami.enqueue()
    run(app)
    seen = h.wait(timeout=5)
    assert seen["uid"] >= 1_900_000_000
    assert seen["memory"] == "unreadable" and seen["signal"] == "refused"


@root_only
def test_when_attempts_must_stay_root_the_worker_warns_and_still_contains_them(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox_fs, "exposures", lambda paths: None)
    monkeypatch.setattr(sandbox_runner, "_warned_root", False)

    @app.task(name="bomb", sandbox=conveyor.Sandbox(max_processes=8, wall_seconds=10))
    def bomb() -> None:
        announce()
        while True:
            with contextlib.suppress(OSError):
                os.fork()

    h = bomb.enqueue()
    with caplog.at_level(logging.WARNING, logger="conveyor.sandbox"):
        run(app)
    assert "attempts run as root" in caplog.text
    pid, uid = announced(h)
    assert uid == 0
    job = h.info()
    assert job.state is JobState.DEAD
    assert job.errors[0].message.startswith("process_limit")
    assert_no_processes_left(pid, uid)


def test_without_network_isolation_the_worker_warns(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if the kernel refused a network namespace (the child is a fork: it has this).
    monkeypatch.setattr(sandbox_child, "_cut_network", lambda libc: "unavailable (test)")
    monkeypatch.setattr(sandbox_runner, "_warned_network", False)

    @app.task(name="net", sandbox=conveyor.Sandbox(network=False))
    def net() -> str:
        return "ran"

    handles = [net.enqueue() for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="conveyor.sandbox"):
        run(app)
    assert [h.wait(timeout=5) for h in handles] == ["ran"] * 3
    warnings = [r for r in caplog.records if "network isolation is unavailable" in r.message]
    assert len(warnings) == 1  # once per process, not once per attempt
    assert "unavailable (test)" in warnings[0].getMessage()
