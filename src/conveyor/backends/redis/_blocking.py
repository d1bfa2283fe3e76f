"""Enqueue from the caller's own thread: the sync API's fast path.

The sync ``App.enqueue`` otherwise hands every call to a background event loop and
blocks for the answer; those two thread hand-offs cost more than the enqueue itself.
Here the calling thread runs the same ``enqueue.lua`` over redis-py's sync client
(hiredis parser). Its connection pool is thread-safe (each call borrows a connection)
and starts over in a forked child, so many threads and pre-forking servers may share one
``App``. Arguments are encoded by the same function as the async path, so there is one
wire format.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from redis.backoff import NoBackoff
from redis.client import Redis
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from conveyor.backends.redis._safety import check_server_blocking
from conveyor.backends.redis._scripts import script_source
from conveyor.backends.redis._url import RedisOptions

# No CLIENT SETINFO on connect: two round trips per new connection, which a producer
# far from its server feels on its first enqueue. redis-py 8 spells it driver_info=None
# (and deprecates the older lib_name/lib_version, which redis-py 5 needs).
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


class BlockingEnqueuer:
    """A sync client and the enqueue script, connected (and the server checked) lazily."""

    def __init__(self, options: RedisOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self._script: Any = None

    def _open(self) -> Any:
        with self._lock:
            if self._script is None:
                # The same choices as the async client: no command retry after a
                # connection error (the caller may retry; enqueue is idempotent per id).
                client = Redis.from_url(
                    self._options.client_url,
                    decode_responses=True,
                    retry=Retry(NoBackoff(), 0),
                    socket_timeout=None,
                    socket_connect_timeout=5.0,
                    socket_keepalive=True,
                    health_check_interval=15,
                    **_NO_SETINFO,
                )
                try:
                    check_server_blocking(
                        client, self._options.where, allow_eviction=self._options.allow_eviction
                    )
                    script = client.register_script(script_source("enqueue"))
                    # Loaded now: the first enqueue is one round trip, not three
                    # (EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA again).
                    script.sha = client.script_load(script.script)
                except BaseException:
                    client.close()
                    raise
                self._client = client
                self._script = script
            return self._script

    def run(self, keys: list[str], args: list[Any]) -> list[str]:
        script = self._script or self._open()
        try:
            return self._evalsha(script.sha, keys, args)
        except NoScriptError:  # a restarted or flushed server: load it, then once more
            script.sha = self._client.script_load(script.script)
            return self._evalsha(script.sha, keys, args)

    def _evalsha(self, sha: str, keys: list[str], args: list[Any]) -> list[str]:
        # A connection of the pool, used directly: redis-py's per-command machinery
        # (retry policy, hooks) costs a quarter of a single-job enqueue. Any failure
        # other than an error reply (which leaves the connection clean) drops the
        # connection, so a half-read reply can never reach the next caller.
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
            reply: list[str] = conn.read_response()
        except ResponseError:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return reply

    def close(self) -> None:
        with self._lock:
            client, self._client, self._script = self._client, None, None
        if client is not None:
            client.close()
