"""Push wake-ups: one pub/sub connection per backend instance.

Scripts that may make work claimable ``PUBLISH`` to their queue's ``wake`` channel. A
listener task holds the subscription and sets a flag; ``wait_for_work`` waits on that
flag. Cancelling a wait (the worker does so whenever a slot frees) then costs nothing,
whereas cancelling a blocking ``BLPOP`` would throw its pooled connection away.

The flag is "something happened since the last claim": the backend clears it just
before each claim, so a wake published after the claim looked is never lost, and one
published before only causes a spurious (allowed) return.

On a Redis Cluster the client's ``pubsub()`` subscribes on the node that owns the
channel's slot (the store's slot). Plain ``PUBLISH`` is forwarded to every node over the
cluster bus, so a wake published by a script reaches the listener wherever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("conveyor.redis")

#: Back-off between reconnect attempts of the listener, in seconds.
_RETRY_MIN = 0.05
_RETRY_MAX = 2.0


class WakeListener:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._channels: set[str] = set()
        self._pubsub: Any = None  # redis.asyncio PubSub (its methods are untyped)
        self._task: asyncio.Task[None] | None = None
        self.flag = asyncio.Event()
        #: False while the subscription is broken: waits then fall back to their timeout.
        self.healthy = False

    async def ensure(self, channels: Iterable[str]) -> bool:
        """Subscribe to ``channels``; True if any was new (its past wakes were missed)."""
        new = [c for c in channels if c not in self._channels]
        if not new:
            return False
        self._channels.update(new)
        if self._pubsub is None:
            if self._task is not None:
                return True  # reconnecting: the listener subscribes to every channel
            self._pubsub = self._client.pubsub()
        try:
            await self._pubsub.subscribe(*new)
        except BaseException:
            self._channels.difference_update(new)
            raise
        self.healthy = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())
        return True

    async def _listen(self) -> None:
        delay = _RETRY_MIN
        while True:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    pubsub = self._pubsub = self._client.pubsub()
                    await pubsub.subscribe(*self._channels)
                    self.healthy = True
                    self.flag.set()  # wakes published while we were away are lost
                    log.warning("redis wake-up subscription restored")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None:
                        self.flag.set()
                    delay = _RETRY_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: reconnect with back-off
                if self.healthy:  # once per outage, not once per attempt
                    log.warning("redis wake-up subscription lost (%s); reconnecting", exc)
                self.healthy = False
                self.flag.set()  # let waiters look for themselves
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        self._channels.clear()
        self.healthy = False
