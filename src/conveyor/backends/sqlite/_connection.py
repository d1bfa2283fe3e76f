"""Opening a connection: URL options, pragmas, and the race-free schema set-up."""

from __future__ import annotations

import math
import random
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

from conveyor.backends.sqlite import _sql

T = TypeVar("T")

SCHEMA_VERSION = 4
#: RETURNING (3.35) is used by claim, heartbeat and try_lock.
MIN_SQLITE = (3, 35, 0)
#: Seconds a write waits for another process's write lock before giving up.
BUSY_TIMEOUT = 30.0


class StoreBusy(sqlite3.OperationalError):
    """Another connection held the write lock for longer than the busy timeout.

    Transient: the worker logs it and tries again, as it does for a dropped
    connection on the network engines (the transaction was rolled back)."""


@dataclass(frozen=True, slots=True)
class Options:
    #: The ``synchronous`` pragma. WAL + NORMAL survives a crash or ``kill -9`` of any
    #: process; only an OS crash or power loss can lose the last commits. FULL survives
    #: those too, at an fsync per commit.
    synchronous: str = "NORMAL"
    busy_timeout: float = BUSY_TIMEOUT


def url_options(url: str) -> Options:
    """``?synchronous=full|normal`` (default normal) and ``?busy_timeout=<seconds>``
    (default 30)."""
    options = Options()
    for name, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name == "synchronous":
            if raw.lower() not in ("full", "normal"):
                raise ValueError(f"synchronous must be full or normal, not {raw!r} ({url!r})")
            options = replace(options, synchronous=raw.upper())
        elif name == "busy_timeout":
            try:
                seconds = float(raw)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds < math.inf:
                raise ValueError(f"busy_timeout must be a number of seconds > 0, not {raw!r}")
            options = replace(options, busy_timeout=seconds)
        else:
            raise ValueError(f"unknown SQLite URL option {name!r} in {url!r}")
    return options


def connect(path: str, options: Options) -> sqlite3.Connection:
    """A configured connection to ``path`` with the schema in place.

    Call it on the thread that will own the connection.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise RuntimeError(
            f"the SQLite backend needs SQLite >= 3.35, this Python has {sqlite3.sqlite_version}"
        )
    try:
        conn = sqlite3.connect(
            path,
            timeout=options.busy_timeout,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            cached_statements=256,
            # Used only from the backend's own thread, except for the final close at
            # interpreter exit, after that thread is gone.
            check_same_thread=False,
        )
    except sqlite3.OperationalError as exc:
        raise sqlite3.OperationalError(f"cannot open SQLite file {path!r}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {round(options.busy_timeout * 1000)}")
        mode = _when_unlocked(
            lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], options.busy_timeout
        )
        if str(mode).lower() != "wal":
            raise RuntimeError(f"cannot switch {path!r} to WAL (journal mode {mode})")
        conn.execute(f"PRAGMA synchronous = {options.synchronous}")
        # The claim's ORDER BY ... LIMIT 1 sorters are tiny; with the default
        # file-backed temp store each one costs a temp-file round trip (100+ us).
        conn.execute("PRAGMA temp_store = MEMORY")
        # A dependent cancelled because its dependency failed settles its own dependents
        # through the same trigger (schema.sql, jobs_settle_dependents).
        conn.execute("PRAGMA recursive_triggers = ON")
        _create_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _when_unlocked(step: Callable[[], T], budget: float) -> T:
    """Run ``step``, retrying while another connection holds the lock it needs.

    Switching a fresh file to WAL needs an exclusive lock. When several processes open
    the same new file at once, SQLite answers "database is locked" immediately instead
    of waiting (two shared holders both wanting exclusive would deadlock), so the busy
    timeout never applies: wait and retry here, within the same time budget.
    """
    deadline = time.monotonic() + budget
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005 + random.random() * 0.02)


def _create_schema(conn: sqlite3.Connection, path: str) -> None:
    # One BEGIN IMMEDIATE transaction that first reads the version: processes opening
    # (or upgrading) a file together queue on the write lock, and the later ones find
    # the work done. Every statement is IF NOT EXISTS, so re-running changes nothing.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path!r} was created by a newer Conveyor (schema {version}, this version "
                f"knows {SCHEMA_VERSION}); upgrade conveyor"
            )
        schema = _sql.schema()
        if version in (1, 2):
            for statement in _rebuild_jobs(conn, schema):
                conn.execute(statement)
        for statement in _statements(schema):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (trigger bodies included) for execute()."""
    out: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end of the schema: {buffer!r}")
    return out


def _rebuild_jobs(conn: sqlite3.Connection, schema: str) -> list[str]:
    """SQL that turns a version 1 or 2 file into version 3, run before the schema script.

    Version 2 allowed the state ``blocked`` and added the dependency columns; version 3
    allows ``waiting`` and adds ``wait_token`` (external completion). A CHECK
    constraint cannot be altered in SQLite, so the jobs table is rebuilt: copied into
    the new definition (taken from schema.sql itself, so the two cannot drift) while no
    trigger is attached, then the schema script re-creates indexes and triggers. The
    counter tables stay exact: the copy fires no trigger.
    """
    found = re.search(r"CREATE TABLE IF NOT EXISTS jobs \(.*?\n\);", schema, re.DOTALL)
    if found is None:  # pragma: no cover - schema.sql is part of the package
        raise RuntimeError("schema.sql has no jobs table")
    new_table = found.group(0).replace("CREATE TABLE IF NOT EXISTS jobs (", "CREATE TABLE jobs (")
    columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(jobs)"))
    return [
        "ALTER TABLE jobs RENAME TO jobs_old",
        new_table,
        f"INSERT INTO jobs ({columns}) SELECT {columns} FROM jobs_old",
        # Dropping the old table drops its indexes and triggers, so the schema script
        # creates the new ones under the same names.
        "DROP TABLE jobs_old",
    ]
