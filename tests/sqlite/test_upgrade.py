"""A version 1 file (before workflows) is upgraded in place when opened, keeping its jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
