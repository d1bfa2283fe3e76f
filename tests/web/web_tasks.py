"""Tasks the web tests submit (importable by name: ``tests.web.web_tasks``)."""

from __future__ import annotations

import os
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

    return app
