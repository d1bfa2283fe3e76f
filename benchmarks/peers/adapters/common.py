"""What every peer's task module shares: where the services are, and the job record.

Imported by the harness *and* by each peer's worker process, so it only uses the
standard library. The worker learns its settings from environment variables that the
harness sets before it starts the worker.

Every benchmark job does the same tiny thing, whatever the peer: it appends one
fixed-width line ``<tag> <time.time()>`` to a record file with ``O_APPEND``. That is a
single ``write(2)`` (atomic for appends this small on Linux, so lines from threads and
processes never interleave), far cheaper than a Redis round trip, and it does not load
the server under test. The harness counts finished jobs by the file size and reads the
start times (first start -> last start for throughput, enqueue -> start for latency,
the order of the lines for fairness).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RECORD_SIZE = 33  # 14-char tag + space + 17-char timestamp + newline
TAG_WIDTH = 14

_fd: int | None = None
_fd_pid: int | None = None


def redis_url() -> str:
    """The Redis URL (with its private DB number) that peers on Redis use."""
    return os.environ.get("PEERBENCH_REDIS_URL", "redis://127.0.0.1:6379/11")


def pg_dsn(peer: str) -> str:
    """The private database of one PostgreSQL peer, created and dropped by the harness."""
    base = os.environ.get("PEERBENCH_PG_URL", "postgresql://root@127.0.0.1:5432")
    prefix = os.environ.get("PEERBENCH_PG_PREFIX", "peerbench")
    return f"{base}/{prefix}_{peer}"


def record(tag: str) -> None:
    """Append ``tag`` and the current time to the record file (the job's whole body)."""
    global _fd, _fd_pid
    now = time.time()
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:  # a forked child must not share the parent's fd state
        _fd = os.open(os.environ["PEERBENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        _fd_pid = pid
    line = f"{tag[:TAG_WIDTH]:<{TAG_WIDTH}} {now:17.6f}\n"
    os.write(_fd, line.encode("ascii"))


def count_records(path: Path) -> int:
    try:
        return path.stat().st_size // RECORD_SIZE
    except FileNotFoundError:
        return 0


def read_records(path: Path) -> list[tuple[str, float]]:
    """(tag, start time) per finished job, in the order the jobs started."""
    rows = []
    for line in path.read_text("ascii").splitlines():
        tag, stamp = line.split()
        rows.append((tag, float(stamp)))
    return rows
