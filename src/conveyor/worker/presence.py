"""Worker presence: each worker keeps a small record in the store while it runs.

The record (kind ``worker``, key: the worker's id) says where the worker runs, what it
serves and how busy it is, and ``seen_at`` (the store's clock) is renewed every
``PRESENCE_INTERVAL`` seconds: the dashboard's workers page and the ``conveyor_workers``
metric read these heartbeats, idle workers included. A worker deletes its record when it
stops; one that dies leaves a record that stops being renewed (shown as lost, and pruned
by ``conveyor serve`` after ``PRUNE_AFTER`` seconds).

A failed write is logged and retried at the next beat: presence is for people looking,
never a reason to stop a worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Backend

if TYPE_CHECKING:
    from conveyor.worker.loop import Worker

KIND = "worker"
PRESENCE_INTERVAL = 5.0
#: A worker not seen for this many intervals is shown as lost.
LOST_AFTER_BEATS = 3
PRUNE_AFTER = 3600.0

log = logging.getLogger("conveyor.worker")


def _record(worker: Worker, started_at: float, seen_at: float) -> str:
    return json.dumps(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(worker.queues),
            "concurrency": worker.concurrency,
            "running": worker.running_count,
            "processed": worker.processed,
            "started_at": started_at,
            "seen_at": seen_at,
            "interval": PRESENCE_INTERVAL,
        },
        separators=(",", ":"),
    )


async def presence_loop(worker: Worker, backend: Backend) -> None:
    started_at: float | None = None
    while True:
        try:
            now = await backend.now()
            started_at = now if started_at is None else started_at
            await backend.put_record(KIND, worker.id, _record(worker, started_at, now))
        except Exception as exc:
            log.warning("worker %s: presence heartbeat failed (%s)", worker.id, exc)
        else:  # the exact counts of /metrics ride along (metrics.py)
            await worker.counts.publish_quietly(backend)
        await asyncio.sleep(PRESENCE_INTERVAL)


async def leave(worker: Worker, backend: Backend) -> None:
    try:
        await backend.delete_record(KIND, worker.id)
    except Exception as exc:
        log.warning("worker %s: could not remove its presence record (%s)", worker.id, exc)


def parse(key: str, text: str, now: float) -> dict[str, Any]:
    """A presence record as the dashboard shows it, with ``alive`` and ``age``."""
    try:
        data: dict[str, Any] = json.loads(text)
        seen = float(data.get("seen_at") or 0.0)
        interval = float(data.get("interval") or PRESENCE_INTERVAL)
    except (ValueError, TypeError, AttributeError):  # not written by a worker: treat as lost
        data, seen, interval = {}, 0.0, PRESENCE_INTERVAL
    data.update(id=key, age=max(0.0, now - seen), alive=now - seen <= interval * LOST_AFTER_BEATS)
    return data
