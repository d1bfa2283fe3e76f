"""Enqueue from the caller's own thread: the sync API's fast path.

The sync ``App.enqueue`` otherwise hands every call to a background event loop and
blocks for the answer; those two thread hand-offs cost more than the enqueue itself.
Here the calling thread runs the same ``enqueue.lua`` over redis-py's sync client
(hiredis parser) on connections of its own: each call borrows an idle one (threads
never share one at a time) and a forked child starts over with new ones, so many threads
and pre-forking servers may share one ``App``. Arguments are encoded by the same
function as the async path, so there is one wire format.

A call that gets no answer within ``CALL_TIMEOUT`` seconds, or whose connection breaks,
is sent once more on a new connection: the script may or may not have run, and running
it again is safe, since enqueue is idempotent per job id (a job that exists is not
inserted twice). A producer behind a connection that went silent (a middlebox that
forgot it, a server that froze) therefore gets its answer, or an error, instead of
waiting until TCP gives up, which can take hours.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from typing import Any

from redis.backoff import NoBackoff
from redis.client import Redis
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from conveyor.backends.redis._safety import check_server_blocking
from conveyor.backends.redis._scripts import (
    Library,
    Scripts,
    function_missing,
    load_refused,
    script_source,
)
from conveyor.backends.redis._spin import ReplySpin
from conveyor.backends.redis._url import RedisOptions

# No CLIENT SETINFO on connect: two round trips per new connection, which a producer
# far from its server feels on its first enqueue. redis-py 8 spells it driver_info=None
# (and deprecates the older lib_name/lib_version, which redis-py 5 needs).
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)

log = logging.getLogger("conveyor.redis")

#: Seconds a connection may sit idle before it is checked (one poll of its socket)
#: before use; a busy producer's connections are never idle that long.
_CHECK_AFTER_IDLE = 1.0

#: Seconds an enqueue waits for Redis's answer before it gives up on the connection and
#: tries once more on a new one (``?socket_timeout=`` in the URL sets another). Far above
#: what a script takes (an ``enqueue_many`` of 100,000 jobs takes about half a second);
#: a spurious give-up costs a second call, never a duplicate job.
CALL_TIMEOUT = 10.0

#: Forks of this process so far, counted in the child: a connection list made before
#: the last fork belongs to the parent. (``os.getpid()`` per call is a system call.)
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def _resp(parts: list[Any]) -> bytes:
    """Parts of a command in the Redis protocol (RESP): ``$<len>`` and the bytes each."""
    out = []
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _EnqueueScript:
    """enqueue.lua as this server runs it: a function of the library where the server
    has functions (see ``_scripts.py``), else a script by ``EVALSHA``."""

    def __init__(self) -> None:
        self.library = Library.build(Scripts.names())
        self.command = ("FCALL", self.library.function("enqueue"))

    def load(self, conn: Any) -> None:
        """(Re)load it over ``conn``, choosing the form on first use."""
        if self.command[0] == "FCALL":
            try:
                _command(conn, "FUNCTION", "LOAD", self.library.source)
                return
            except ResponseError as exc:
                if not load_refused(exc):
                    return
        self.command = ("EVALSHA", _command(conn, "SCRIPT", "LOAD", script_source("enqueue")))

    def lost(self, exc: ResponseError) -> bool:
        """Did the server answer that it does not have it (restarted, or flushed)?"""
        return isinstance(exc, NoScriptError) or function_missing(exc)


class BlockingEnqueuer:
    """A sync client and the enqueue script, connected (and the server checked) lazily."""

    def __init__(self, options: RedisOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self._script: _EnqueueScript | None = None
        #: Idle connections of this process, most recently used last. Not redis-py's
        #: pool: its bookkeeping per borrow (a lock, a readiness poll of the socket,
        #: metrics hooks) cost as much client time as the rest of a single enqueue.
        self._idle: list[tuple[Any, float]] = []
        self._forks = _forks
        #: The packed start of the last call (all but its last three arguments), with
        #: what it was packed from: a producer's calls differ only in their jobs.
        self._head: tuple[tuple[Any, ...], bytes] = ((), b"")
        self._spin = ReplySpin(options.spin)

    def _open(self) -> Any:
        with self._lock:
            if self._script is None:
                # The same choices as the async client: no command retry after a
                # connection error (the caller may retry; enqueue is idempotent per id).
                client = Redis.from_url(
                    self._options.client_url,
                    decode_responses=True,
                    retry=Retry(NoBackoff(), 0),
                    # The URL's own socket_timeout, if any, wins (redis-py's from_url).
                    socket_timeout=CALL_TIMEOUT,
                    socket_connect_timeout=5.0,
                    socket_keepalive=True,
                    # No handshake beyond the TCP connect: RESP2 needs no HELLO, and the
                    # idle check in _take replaces redis-py's PING health checks; a
                    # producer far from its server pays each of those round trips.
                    protocol=2,
                    health_check_interval=0,
                    **_NO_SETINFO,
                )
                self._client = client
                # The checks and the script load run on a connection of our own, which
                # then serves the first enqueue (a new one would cost its handshake's
                # round trips again). Not one from redis-py's pool: its readiness poll
                # on a brand-new TLS connection can see the server's TLS 1.3 session
                # ticket, which arrives just after the handshake, as stale data and
                # fail with "Connection not ready".
                conn = self._take()
                try:
                    check_server_blocking(
                        conn, self._options.where, allow_eviction=self._options.allow_eviction
                    )
                    # Loaded now: the first enqueue is one round trip, not three
                    # (EVALSHA answered NOSCRIPT, SCRIPT LOAD, EVALSHA again).
                    script = _EnqueueScript()
                    script.load(conn)
                except BaseException:
                    conn.disconnect()
                    self._client = None
                    client.close()
                    raise
                self._idle.append((conn, time.monotonic()))
                self._script = script
            return self._script

    def run(self, keys: list[str], args: list[Any], *, single: bool = False) -> list[str]:
        """Run the enqueue script; ``single``: the call carries one job, so its reply is
        awaited by polling first (see ``_spin.py``)."""
        script = self._script or self._open()
        try:
            return self._run(script.command, keys, args, single)
        except ResponseError as exc:
            if not script.lost(exc):
                raise
        # A restarted or flushed server: load the script again, then once more.
        conn = self._take()
        try:
            script.load(conn)
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append((conn, time.monotonic()))
        return self._run(script.command, keys, args, single)

    def _run(
        self, command: tuple[str, str], keys: list[str], args: list[Any], single: bool
    ) -> list[str]:
        packed = self._pack(command, keys, args)
        try:
            return self._call(packed, single)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # No answer, or a broken connection: the script may or may not have run.
            # Once more on a new connection (idempotent per job id), after dropping the
            # idle ones, which may have gone silent too.
            log.warning("enqueue got no answer (%s): trying once more on a new connection", exc)
            self._drop_idle()
            return self._call(packed, single)

    def _call(self, packed: bytes, single: bool) -> list[str]:
        # A connection used by one call at a time: list.pop/append are atomic, so
        # threads share the idle list without a lock. Any failure other than an error
        # reply (which leaves the connection clean) drops the connection, so a half-read
        # reply can never reach the next caller.
        conn = self._take()
        try:
            conn.send_packed_command([packed], check_health=False)
            if single:
                sent = time.perf_counter()
                self._spin.wait(getattr(conn, "_sock", None))  # redis-py's socket
                reply: list[str] = conn.read_response()
                self._spin.record(time.perf_counter() - sent)
            else:
                reply = conn.read_response()
        except ResponseError:
            self._idle.append((conn, time.monotonic()))
            raise
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append((conn, time.monotonic()))
        return reply

    def _pack(self, command: tuple[str, str], keys: list[str], args: list[str]) -> bytes:
        """``EVALSHA sha`` (or ``FCALL function``) ``len(keys) *keys *args``, packed;
        only the last three arguments (one job's id and arguments, or a batch's store,
        queues and jobs) are packed per call, the rest when it changes (a single
        enqueue's task and options)."""
        fixed = (*command, *keys, *args[:-3])
        head = self._head  # read once: another thread may replace it meanwhile
        if fixed != head[0]:
            count = 3 + len(keys) + len(args)
            parts = [*command, len(keys), *keys, *args[:-3]]
            head = self._head = (fixed, b"*%d\r\n%b" % (count, _resp(parts)))
        return head[1] + _resp(args[-3:])

    def _take(self) -> Any:
        if self._forks != _forks:
            # A forked child: the parent's sockets are the parent's; start over.
            self._idle = []
            self._forks = _forks
        try:
            conn, released_at = self._idle.pop()
        except IndexError:
            pool = self._client.connection_pool
            return pool.connection_class(**pool.connection_kwargs)
        if time.monotonic() - released_at > _CHECK_AFTER_IDLE:
            # As redis-py's pool does on every borrow: a connection the server closed
            # meanwhile (a restart, a timeout) is readable; reconnect before sending,
            # rather than fail a call that never reached the server.
            try:
                if conn.can_read():
                    raise ConnectionError("unexpected data on an idle connection")
            except (ConnectionError, TimeoutError, OSError, RedisConnectionError):
                conn.disconnect()
        return conn

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        if self._forks == _forks:
            for conn, _ in idle:
                conn.disconnect()

    def close(self) -> None:
        with self._lock:
            client, self._client, self._script = self._client, None, None
        self._drop_idle()
        if client is not None:
            client.close()


def _command(conn: Any, *args: Any) -> Any:
    """One command on one of our connections, and its reply."""
    conn.send_command(*args, check_health=False)
    return conn.read_response()
