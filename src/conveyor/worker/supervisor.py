"""``conveyor worker``: a supervisor process keeping ``-p`` worker processes alive.

Children run in their own session so that a terminal's Ctrl-C reaches only the
supervisor, which forwards one SIGTERM to each (a second signal: release at once).
Children die with the supervisor (``PR_SET_PDEATHSIG`` on Linux), so ``kill -9`` of the
supervisor is a crash of the whole worker, and its jobs come back through the reaper.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import App

log = logging.getLogger("conveyor.supervisor")

_FAST_CRASH = 2.0  # a child that dies sooner than this after starting crashed "fast"
_MAX_FAST_CRASHES = 5


@dataclass(frozen=True)
class WorkerOptions:
    app: str
    queues: list[str]
    concurrency: int = 8
    lease: float = 30.0
    grace: float = 10.0
    burst: bool = False


def load_app(path: str) -> App:
    """Import ``module:attribute`` (attribute defaults to ``app``) from the current dir."""
    from conveyor.app import App

    module_name, _, attr = path.partition(":")
    if not module_name:
        raise ValueError(f"invalid app path {path!r}: write module:attribute, e.g. tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attr or "app")
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr or 'app'!r}") from None
    if not isinstance(app, App):
        raise ValueError(f"{path!r} is a {type(app).__name__}, not a conveyor.App")
    return app


class Supervisor:
    def __init__(self, options: WorkerOptions, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.options = options
        self.processes = processes
        self._children: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self._stopping = 0
        self._fast_crashes = 0

    def _spawn(self, slot: int) -> None:
        # Our pid goes along so that a child can tell we died while it was still starting.
        options = json.dumps(asdict(self.options))
        cmd = [sys.executable, "-m", "conveyor.worker.child", options, str(os.getpid())]
        child = subprocess.Popen(cmd, start_new_session=True)
        self._children[slot] = (child, time.monotonic())
        log.info("started worker process %d (pid %d)", slot, child.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping += 1
        for child, _ in list(self._children.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.processes):
            self._spawn(slot)
        status = 0
        while self._children:
            time.sleep(0.05)
            for slot, (child, started) in list(self._children.items()):
                code = child.poll()
                if code is None:
                    continue
                del self._children[slot]
                if self._stopping or (self.options.burst and code == 0):
                    status = status or (code if code > 0 else 0)
                    continue
                status = self._restart(slot, code, time.monotonic() - started)
                if status:
                    self._on_signal(signal.SIGTERM, None)
        return status

    def _restart(self, slot: int, code: int, lived: float) -> int:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        from conveyor.worker.loop import EXIT_REPLACE

        if code == EXIT_REPLACE:
            log.warning("worker process %d replaced: a sync task overran its timeout", slot)
        else:
            log.error("worker process %d ended unexpectedly (%s); starting a new one", slot, how)
        self._fast_crashes = self._fast_crashes + 1 if lived < _FAST_CRASH else 0
        if self._fast_crashes >= _MAX_FAST_CRASHES:
            log.critical("worker processes keep crashing at start (%s); giving up", how)
            return 1
        if self._fast_crashes:
            time.sleep(min(0.2 * 2**self._fast_crashes, 5.0))
        self._spawn(slot)
        return 0
