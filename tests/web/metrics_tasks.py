"""Tasks of the /metrics counting tests (importable by worker subprocesses:
``python -c "...make_app(url)..."``)."""

from __future__ import annotations

import time

import conveyor
from conveyor.retry import Backoff

NOW = Backoff(base=0.0, jitter=False)  # retried at once: the tests do not wait for backoff


def make_app(url: str) -> conveyor.App:
    app = conveyor.App(url)

    @app.task(name="ok")
    def ok() -> str:
        return "ok"

    @app.task(name="second-time", max_attempts=3, backoff=NOW)
    def second_time() -> str:
        """Fails its first attempt, succeeds on the retry."""
        if conveyor.current_job().attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @app.task(name="hopeless", max_attempts=2, backoff=NOW)
    def hopeless() -> None:
        """Fails both attempts: one retry, then dead."""
        raise RuntimeError("always fails")

    @app.task(name="nap")
    def nap(seconds: float) -> None:
        time.sleep(seconds)

    return app
