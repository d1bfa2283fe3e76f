"""Opening a connection: URL options, pragmas, and the race-free schema set-up."""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

from conveyor.backends.sqlite import _sql

T = TypeVar("T")

SCHEMA_VERSION = 2
#: RETURNING (3.35) is used by claim, heartbeat and try_lock.
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 30_000


def synchronous_mode(url: str) -> str:
    """The ``synchronous`` pragma from ``?synchronous=full|normal`` (default NORMAL).

    WAL + NORMAL survives a crash or ``kill -9`` of any process; only an OS crash or
    power loss can lose the last commits. FULL survives those too, at an fsync per commit.
    """
    value = "normal"
    for name, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name != "synchronous":
            raise ValueError(f"unknown SQLite URL option {name!r} in {url!r}")
        value = raw.lower()
        if value not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, not {raw!r} ({url!r})")
    return value.upper()


def connect(path: str, synchronous: str) -> sqlite3.Connection:
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
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            cached_statements=256,
            # Used only from the backend's own thread, except for the final close at
            # interpreter exit, after that thread is gone.
            check_same_thread=False,
        )
    except sqlite3.OperationalError as exc:
        raise sqlite3.OperationalError(f"cannot open SQLite file {path!r}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = _when_unlocked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise RuntimeError(f"cannot switch {path!r} to WAL (journal mode {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
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


def _when_unlocked(step: Callable[[], T]) -> T:
    """Run ``step``, retrying while another connection holds the lock it needs.

    Switching a fresh file to WAL needs an exclusive lock. When several processes open
    the same new file at once, SQLite answers "database is locked" immediately instead
    of waiting (two shared holders both wanting exclusive would deadlock), so the busy
    timeout never applies: wait and retry here, within the same time budget.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
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
        if version == 1:
            for statement in _upgrade_v1(conn, schema):
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


def _upgrade_v1(conn: sqlite3.Connection, schema: str) -> list[str]:
    """SQL that turns a version 1 file into version 2, run before the schema script.

    Version 2 allows the state ``blocked`` (a CHECK constraint, which SQLite cannot
    alter) and adds the dependency columns, so the jobs table is rebuilt: copied into
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
        "ALTER TABLE jobs RENAME TO jobs_v1",
        new_table,
        f"INSERT INTO jobs ({columns}) SELECT {columns} FROM jobs_v1",
        # Dropping the old table drops its indexes and triggers, so the schema script
        # creates the new ones under the same names.
        "DROP TABLE jobs_v1",
    ]
