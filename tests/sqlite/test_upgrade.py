"""A version 1 file (before workflows) is upgraded in place when opened, keeping its jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conveyor.backends.base import Outcome, OutcomeKind
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.backends.sqlite._connection import SCHEMA_VERSION
from conveyor.job import JobState

V1 = Path(__file__).with_name("schema_v1.sql")


async def test_version_1_file_is_upgraded_with_its_jobs_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1.read_text())
    conn.execute(
        "INSERT INTO jobs (id, task, queue, tenant, priority, base_priority, state, args_json,"
        " kwargs_json, max_attempts, enqueued_at, ready_at)"
        " VALUES ('01', 'old.task', 'default', '', 5, 5, 'queued', '[1]', '{}', 3, 1.0, 1.0)"
    )
    conn.commit()
    conn.close()

    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    try:
        job = await backend.get("01")
        assert job is not None and job.state is JobState.QUEUED and job.args == [1]
        (claimed,) = await backend.claim(["default"], 5, worker="w", lease=30)
        assert claimed.id == "01"  # the lane counters survived the rebuild
    finally:
        await backend.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert {"jobs_claimed", "jobs_settle_dependents"} <= names
    conn.close()


V2 = Path(__file__).with_name("schema_v2.sql")


async def test_version_2_file_is_upgraded_and_can_park_jobs(tmp_path: Path) -> None:
    """Version 3 allows the state ``waiting`` (external completion): a rebuild again."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(V2.read_text())
    conn.execute(
        "INSERT INTO jobs (id, task, queue, tenant, priority, base_priority, state, args_json,"
        " kwargs_json, max_attempts, enqueued_at, ready_at, key)"
        " VALUES ('02', 'old.task', 'default', 't', 5, 5, 'queued', '[2]', '{}', 3, 1.0, 1.0,"
        " 'k')"
    )
    conn.commit()
    conn.close()

    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    try:
        (claimed,) = await backend.claim(["default"], 5, worker="w", lease=30)
        park = Outcome(claimed.id, claimed.lease_token, OutcomeKind.PARKED, retry_delay=60.0)
        assert await backend.finish([park]) == [True]
        job = await backend.get("02")
        assert job is not None and job.state is JobState.WAITING and job.key == "k"
        (row,) = await backend.stats()
        assert (row.waiting, row.running, row.queued) == (1, 0, 0)
    finally:
        await backend.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()


V3 = Path(__file__).with_name("schema_v3.sql")


async def test_version_3_file_gets_the_outbox_in_place(tmp_path: Path) -> None:
    """Version 4 only adds the outbox table and its trigger: no rebuild, jobs kept."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    conn.executescript(V3.read_text())
    conn.execute(
        "INSERT INTO jobs (id, task, queue, tenant, priority, base_priority, state, args_json,"
        " kwargs_json, max_attempts, enqueued_at, ready_at)"
        " VALUES ('03', 'old.task', 'default', '', 5, 5, 'queued', '[3]', '{}', 3, 1.0, 1.0)"
    )
    conn.commit()
    conn.close()

    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    try:
        assert await backend.cancel("03") is JobState.CANCELLED
        (event,) = await backend.take_events(10)
        assert (event.name, event.job_id) == ("job.cancelled", "03")
        (row,) = await backend.stats()
        assert (row.queued, row.cancelled) == (0, 1)  # the lane counters held
    finally:
        await backend.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()
