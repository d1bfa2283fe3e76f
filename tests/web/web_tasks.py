"""Tasks the web tests submit (importable by name: ``tests.web.web_tasks``)."""

from __future__ import annotations

import os
import time
from typing import Any

import conveyor


def make_app(url: str) -> conveyor.App:
    app = conveyor.App(url, max_payload=64 * 1024)

    @app.task(name="media.resize")
    def resize(image: str, width: int = 100) -> dict[str, Any]:
        return {"image": image, "width": width}

    @app.task(name="flaky", max_attempts=1)
    def flaky(marker: str) -> str:
        """Fails until the file ``marker`` exists: a dead job that succeeds on replay."""
        if not os.path.exists(marker):
            raise RuntimeError(f"{marker} is not there yet")
        return "fixed"

    @app.task(name="slow")
    def slow(seconds: float) -> str:
        """Runs a while, reporting progress: something to see on the workers page."""
        for step in range(10):
            conveyor.current_job().progress(step / 10, f"step {step + 1}/10")
            time.sleep(seconds / 10)
        return "done"

    # Shown on the schedules page; due so rarely (and missed ticks skipped) that no
    # test ever sees it run.
    @app.periodic("0 3 29 2 *", missed="skip", name="leap-day-report")
    def leap_day_report() -> str:
        return "report"

    return app
