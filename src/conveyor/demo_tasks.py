"""The tasks of ``conveyor demo``: a small SaaS back office.

Workers import this as ``conveyor.demo_tasks:app``. The app takes its storage URL from
``$CONVEYOR_URL``, which the demo points at its own fresh SQLite file before importing
this module (and passes on to the worker processes).
"""

from __future__ import annotations

import asyncio
import random
import time

import conveyor

app = conveyor.App()

#: Retries come quickly in the demo (0.2 s, then 0.4 s) so they are seen to happen.
QUICK_RETRY = conveyor.Backoff(base=0.2, factor=2.0, cap=1.0, jitter=False)


@app.task(name="demo.thumbnail")
async def thumbnail(image: int) -> str:
    """The flood: one tenant's bulk upload, each image a short job."""
    await asyncio.sleep(random.uniform(0.06, 0.14))
    return f"img-{image}.thumb.webp"


@app.task(name="demo.invoice")
async def invoice(number: int) -> dict[str, object]:
    """A small tenant's everyday work."""
    await asyncio.sleep(random.uniform(0.05, 0.15))
    return {"invoice": number, "pdf": f"invoice-{number}.pdf"}


@app.task(name="demo.export_report")
def export_report(rows: int, steps: int = 15) -> dict[str, int]:
    """A long sync task (runs in a thread) that reports its progress as it goes."""
    job = conveyor.current_job()
    for step in range(1, steps + 1):
        time.sleep(0.2)
        job.progress(step / steps, f"step {step}/{steps}: {rows * step // steps:,} rows")
    return {"rows": rows}


@app.task(name="demo.page_oncall", priority=0)
async def page_oncall(alert: str) -> str:
    """Urgent (priority 0): jumps ahead of every waiting priority-5 job."""
    await asyncio.sleep(0.05)
    return f"paged on-call about {alert}"


@app.task(name="demo.cleanup", priority=9)
async def cleanup(table: str) -> str:
    """Low priority (9): runs once nothing more urgent is waiting."""
    await asyncio.sleep(0.05)
    return f"vacuumed {table}"


@app.task(name="demo.sync_crm", max_attempts=4, backoff=QUICK_RETRY)
async def sync_crm(account: str) -> str:
    """Flaky: the CRM times out twice, then the third attempt gets through."""
    job = conveyor.current_job()
    await asyncio.sleep(0.05)
    if job.attempt < 3:
        raise ConnectionError(f"CRM API timed out for {account} (attempt {job.attempt})")
    return f"synced {account} on attempt {job.attempt}"


@app.task(name="demo.charge_card", max_attempts=3, backoff=QUICK_RETRY)
async def charge_card(order: int) -> str:
    """Fails for good: a declined card is not worth retrying, so it goes ``dead``."""
    await asyncio.sleep(0.05)
    raise conveyor.Fail(f"card declined for order {order}")
