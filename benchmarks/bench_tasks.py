"""Tasks for the benchmarks. The app reads its URL from CONVEYOR_URL."""

from __future__ import annotations

import conveyor

app = conveyor.App(result_ttl=3600)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.anoop")
async def anoop() -> None:
    return None
