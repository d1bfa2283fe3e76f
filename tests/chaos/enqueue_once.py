"""One producer process of the dedup race: ``python -m tests.chaos.enqueue_once URL HISTORY
KEY GO_FILE [UNIQUE_FOR]``. Connects, says it is ready, waits for GO_FILE to appear (so that every
producer enqueues at the same moment), enqueues ``chaos.work`` with dedup KEY, records the
acknowledgement and prints the job id."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tests.chaos.chaos_tasks import make_app
from tests.chaos.history import Recorder


def connect(app: Any, seconds: float = 30) -> None:
    """Open the store before the race, not during it. A shared test server may be short
    of connections for a moment (other test sessions): try again, within a deadline."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            app.stats()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    url, history, key, go = sys.argv[1:5]
    window = {"unique_for": float(sys.argv[5])} if len(sys.argv) > 5 else {}
    app = make_app(url, history)
    connect(app)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    handle = app.enqueue("chaos.work", args=[0], key=key, **window)
    Recorder(history).record("enqueued", id=handle.id, key=key)
    print(handle.id, flush=True)
    app.close()


if __name__ == "__main__":
    main()
