"""Finding and killing the processes of one sandboxed attempt, through Linux ``/proc``.

An attempt's processes are those in its process group (which a task can leave with
``setsid``) and, when the worker is root, those of the unprivileged user id the attempt
runs as (nothing else on the machine uses that id, and the attempt cannot change it;
see docs/sandbox.md). Zombies are dead already and are not counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    pgid: int
    uid: int  # the real user id


def _field(status: bytes, key: bytes) -> bytes:
    start = status.index(b"\n" + key + b":") + len(key) + 2
    return status[start : status.index(b"\n", start)].split()[0]


def scan() -> list[Proc]:
    """Every live process: one read of ``/proc/PID/status`` each."""
    found: list[Proc] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
            if _field(status, b"State") == b"Z":
                continue
            found.append(
                Proc(int(name), int(_field(status, b"NSpgid")), int(_field(status, b"Uid")))
            )
        except (OSError, ValueError, IndexError):  # gone meanwhile, or unreadable
            continue
    return found


def members(procs: list[Proc], *, pgid: int, uid: int | None) -> list[int]:
    """The processes of the attempt whose group is ``pgid`` and user id is ``uid``."""
    return [p.pid for p in procs if p.pgid == pgid or (uid is not None and p.uid == uid)]


class Census:
    """One scan of ``/proc`` shared by every attempt a worker watches, at most once
    per ``every`` seconds: watching costs the same for one attempt as for fifty."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._procs: list[Proc] = []
        self._at = float("-inf")

    def count(self, *, pgid: int, uid: int | None) -> int:
        now = time.monotonic()
        if now - self._at >= self.every:
            self._procs, self._at = scan(), now
        return len(members(self._procs, pgid=pgid, uid=uid))


def tasks_of_uid(uid: int) -> int:
    """Threads of every process of ``uid``: what the kernel checks ``RLIMIT_NPROC`` against."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/status", "rb") as f:
                    status = f.read()
                if int(_field(status, b"Uid")) == uid:
                    total += int(_field(status, b"Threads"))
    return total


def kill_all(*, pgid: int, uid: int | None, within: float = 2.0) -> bool:
    """SIGKILL every process of the attempt until none is left; False if some outlived
    ``within`` seconds (e.g. stuck in the kernel)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + within
    while True:
        left = members(scan(), pgid=pgid, uid=uid)
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        # One by one: a fork bomb forks between our scan and our kill, so scan again.
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
