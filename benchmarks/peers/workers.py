"""Start a peer's worker CLI in its own process group, and always take it down again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from adapters_path import ADAPTERS
from common import count_records


class WorkerDied(RuntimeError):
    pass


@contextmanager
def running_workers(
    commands: Sequence[Sequence[str]], env: dict[str, str], log: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run the worker commands until the block ends; output goes to ``log``.

    Each command gets its own session so the whole tree (Celery's prefork children, RQ's
    work horses, `-p 2` supervisors) can be killed by process group.
    """
    full_env = {**os.environ, **env, "PYTHONPATH": str(ADAPTERS)}
    procs: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        try:
            for command in commands:
                out.write(f"$ {' '.join(command)}\n".encode())
                out.flush()
                procs.append(
                    subprocess.Popen(
                        list(command),
                        cwd=ADAPTERS,
                        env=full_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            yield procs
        finally:
            stop(procs)


def stop(procs: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process group, then SIGKILL what is left after ``grace`` seconds."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        # also kill the group when its leader already exited: children may linger
        _signal_group(proc, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, sig)


def wait_for_records(
    path: Path,
    count: int,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]],
    poll: float = 0.002,
) -> None:
    """Block until ``count`` jobs have recorded themselves, a worker dies, or time is up."""
    deadline = time.monotonic() + timeout
    while count_records(path) < count:
        for proc in procs:
            if proc.poll() is not None:
                raise WorkerDied(f"worker exited with {proc.returncode}: {proc.args!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count_records(path)} of {count} jobs ran in {timeout}s")
        time.sleep(poll)
