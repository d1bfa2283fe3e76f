"""The real ``conveyor worker`` command: its environment (store URL, secrets) stays out of
a sandboxed attempt, and the attempt's limits hold there too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor
from conveyor import JobState

pytestmark = pytest.mark.timeout(60)

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
SECRET = "s3cr3t-token-for-the-store"

TASKS = """
import os
import conveyor

app = conveyor.App()


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\\0", b"\\n").decode(errors="replace")
    except OSError as exc:
        return "unreadable: " + exc.strerror


@app.task(name="peek", sandbox=conveyor.Sandbox(env={"MODE": "sandboxed"}))
def peek():
    return {
        "environ": dict(os.environ),
        "proc_self": read("/proc/self/environ"),
        "proc_worker": read(f"/proc/{os.getppid()}/environ"),
        "uid": os.getuid(),
    }


@app.task(name="spin", sandbox=conveyor.Sandbox(cpu_seconds=1))
def spin():
    while True:
        pass
"""


def test_a_worker_started_by_the_cli_keeps_its_environment_to_itself(tmp_path: Path) -> None:
    (tmp_path / "sbx_tasks.py").write_text(TASKS)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    producer = conveyor.App(url)
    try:
        peek = producer.enqueue("peek")
        spin = producer.enqueue("spin")
        env = {**os.environ, "CONVEYOR_URL": url, "API_TOKEN": SECRET}
        done = subprocess.run(
            [CONVEYOR, "worker", "sbx_tasks:app", "--burst", "-p", "1", "-c", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=45,
        )
        assert done.returncode == 0, done.stderr
        seen = peek.wait(timeout=5)
        job = spin.info()
    finally:
        producer.close()

    assert seen["environ"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "MODE": "sandboxed",
    }
    assert SECRET not in seen["proc_self"] and url not in seen["proc_self"]
    if os.geteuid() == 0 and seen["uid"] == 0:
        # Attempts stayed root (the worker said why, in a warning): root reads anything.
        assert "attempts run as root" in done.stderr
    else:
        assert SECRET not in seen["proc_worker"] and url not in seen["proc_worker"]
    assert job.state is JobState.DEAD
    assert job.errors[0].message.startswith("cpu_limit")
