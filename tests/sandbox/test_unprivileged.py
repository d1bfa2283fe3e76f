"""A worker that is not root: the attempt keeps the worker's user id; its processes are
found by process group, its network is cut through a user namespace where the kernel
allows one. Run here by dropping to ``nobody`` (so only when the test runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None,
        reason="needs root and setpriv to become an ordinary user",
    ),
]

NOBODY = 65534

SCRIPT = """
import json, os, socket, sys, time
import conveyor

app = conveyor.App("sqlite:///" + sys.argv[1] + "/c.db")
LIMITS = conveyor.Sandbox(cpu_seconds=1, wall_seconds=10, max_processes=8)


@app.task(name="peek", sandbox=LIMITS)
def peek(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        network = "connected"
    except OSError as exc:
        network = exc.strerror
    return {"uid": os.getuid(), "environ": dict(os.environ), "network": network}


@app.task(name="bomb", sandbox=LIMITS)
def bomb():
    conveyor.current_job().progress(0.0, str(os.getpid()))
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)


server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
peek_job, bomb_job = peek.enqueue(server.getsockname()[1]), bomb.enqueue()
conveyor.Worker(app, handle_signals=False).run(burst=True)
out = {}
for name, handle in (("peek", peek_job), ("bomb", bomb_job)):
    job = handle.info()
    out[name] = {
        "state": job.state.value,
        "result": job.result,
        "errors": [e.message for e in job.errors],
        "progress": job.progress_message,
    }
print(json.dumps(out))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can write to (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="conveyor-sandbox-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_ordinary_users_worker(shared_dir: Path) -> None:
    (shared_dir / "run.py").write_text(SCRIPT)
    env = {**os.environ, "CONVEYOR_URL": "sqlite:///nowhere.db", "SECRET": "x-secret"}
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            str(shared_dir / "run.py"),
            str(shared_dir),
        ],
        cwd=shared_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    peek = out["peek"]
    assert peek["state"] == "succeeded", peek
    assert peek["result"]["uid"] == NOBODY
    assert "SECRET" not in peek["result"]["environ"]
    assert "CONVEYOR_URL" not in peek["result"]["environ"]
    if "network isolation is unavailable" in done.stderr:
        assert peek["result"]["network"] == "connected"
    else:
        assert peek["result"]["network"] != "connected"

    bomb = out["bomb"]
    assert bomb["state"] == "dead"
    assert bomb["errors"][0].startswith("process_limit"), bomb
    leader = int(bomb["progress"])
    left = []
    for name in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if name.isdigit() and int(fields[2]) == leader and fields[0] != b"Z":
            left.append(name)
    assert left == []
