"""The HTTP API's submit and read rates, against a real ``conveyor serve`` process.

    python benchmarks/web_api.py                       # SQLite in a temp dir
    python benchmarks/web_api.py --url redis://127.0.0.1:6379/0?prefix=bench-web -n 2000

One client on one keep-alive connection, sequential requests: this measures the
server's per-request cost (validation, auth lookup, one store write or read), not
what many concurrent clients could get. Prints each figure with the command and the
load average; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def conveyor_exe() -> str:
    return str(Path(sys.executable).parent / "conveyor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s ({count} in {seconds:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="store URL (default: SQLite in a temp dir)")
    parser.add_argument("-n", type=int, default=1000, help="single submissions and reads")
    parser.add_argument("--batches", type=int, default=10, help="batches of 1000 jobs")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="conveyor-web-bench-")
    url = args.url or f"sqlite:///{tmp}/bench.db"
    env = {**os.environ, "CONVEYOR_URL": url, "CONVEYOR_LOG_LEVEL": "warning"}
    token = subprocess.run(
        [conveyor_exe(), "token", "create", "--tenant", "bench"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [conveyor_exe(), "serve", "bench_tasks:app", "--port", str(port)],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)

            job = {"task": "bench.noop", "args": [1]}
            started = time.perf_counter()
            ids = []
            for _ in range(args.n):
                response = client.post("/jobs", json=job)
                response.raise_for_status()
                ids.append(response.json()["id"])
            single = time.perf_counter() - started

            batch = {"jobs": [job] * 1000}
            started = time.perf_counter()
            for _ in range(args.batches):
                client.post("/jobs/batch", json=batch).raise_for_status()
            batched = time.perf_counter() - started

            started = time.perf_counter()
            for job_id in ids:
                client.get(f"/jobs/{job_id}").raise_for_status()
            reads = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"command: python benchmarks/web_api.py {shlex.join(sys.argv[1:])}")
    print(f"store: {url.split('?')[0]}  python {platform.python_version()}  {platform.machine()}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(f"POST /jobs        {rate(args.n, single)}")
    print(f"POST /jobs/batch  {rate(args.batches * 1000, batched)} jobs, batches of 1000")
    print(f"GET /jobs/{{id}}    {rate(args.n, reads)}")


if __name__ == "__main__":
    main()
