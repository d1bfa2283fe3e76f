"""Entry point of one supervised worker process: ``python -m conveyor.worker.child OPTS``."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys

from conveyor.worker.loop import Worker
from conveyor.worker.supervisor import WorkerOptions, load_app

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """On Linux, the kernel kills us when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The supervisor may have died while we were starting up (before prctl): compare
    # with the pid it gave us, since by now os.getppid() may already be the reaper's.
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    _die_with_parent(int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid())
    options = WorkerOptions(**json.loads(sys.argv[1]))
    logging.basicConfig(
        level=os.environ.get("CONVEYOR_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s [worker {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    app = load_app(options.app)
    worker = Worker(
        app,
        queues=options.queues,
        concurrency=options.concurrency,
        lease=options.lease,
        grace=options.grace,
        replace_on_stuck=True,
    )
    code = 0
    try:
        worker.run(burst=options.burst)
    except Exception:
        logging.getLogger("conveyor.worker").exception("worker failed")
        code = 1
    if worker.exit_code is not None:
        code = worker.exit_code
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: an abandoned sync thread must not keep us alive.
    os._exit(code)


if __name__ == "__main__":
    main()
