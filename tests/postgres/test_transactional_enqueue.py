"""Transactional enqueue through the public API: the job exists iff the caller's
transaction commits (``connection=`` on enqueue, options() and enqueue_many)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

import conveyor
from conveyor import JobNotFound, JobState
from tests.services import POSTGRES_URL


@pytest.fixture
def app(pg_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(pg_url)

    @app.task(name="send_receipt")
    def send_receipt(order: int) -> int:
        return order

    app.jobs()  # opens the store once, which applies the schema migrations
    yield app
    app.close()


def test_commit_keeps_the_job_rollback_drops_it(app: conveyor.App) -> None:
    with psycopg.connect(POSTGRES_URL) as conn:  # not autocommit: a transaction is open
        kept = app.enqueue("send_receipt", [1], connection=conn)
        with pytest.raises(JobNotFound):
            kept.info()  # not visible to anyone before the commit
        conn.commit()
        dropped = app.tasks["send_receipt"].options(connection=conn).enqueue(2)
        conn.rollback()
    assert kept.info().state is JobState.QUEUED
    with pytest.raises(JobNotFound):
        dropped.info()


def test_enqueue_many_joins_the_transaction(app: conveyor.App) -> None:
    task = app.tasks["send_receipt"]
    with psycopg.connect(POSTGRES_URL) as conn:
        handles = app.enqueue_many([task.s(n) for n in range(5)], connection=conn)
        conn.rollback()
        assert len(handles) == 5
        again = app.enqueue_many([task.s(n) for n in range(5)], connection=conn)
        conn.commit()
    assert app.jobs(task="send_receipt") and len(app.jobs(task="send_receipt")) == 5
    assert {h.id for h in again} == {j.id for j in app.jobs(task="send_receipt")}


async def test_async_connection(app: conveyor.App) -> None:
    task = app.tasks["send_receipt"]
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        kept = await task.options(connection=conn).enqueue_async(7)
        await conn.commit()
        dropped = await app.enqueue_async("send_receipt", [8], connection=conn)
        await conn.rollback()
    assert (await kept.info_async()).args == [7]
    with pytest.raises(JobNotFound):
        await dropped.info_async()
    worker = conveyor.Worker(app, handle_signals=False)
    await worker.run_async(burst=True)
    assert await kept.wait_async(timeout=10) == 7
    await app.close_async()


def test_connection_killed_mid_transaction_leaves_no_job(app: conveyor.App) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        conn = psycopg.connect(POSTGRES_URL)
        try:
            handle = app.enqueue("send_receipt", [3], connection=conn)
            admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
            with pytest.raises(psycopg.OperationalError):
                conn.commit()
        finally:
            conn.close()
    with pytest.raises(JobNotFound):
        handle.info()
    assert app.jobs() == []


def test_a_connection_of_the_wrong_kind_is_refused(app: conveyor.App) -> None:
    with pytest.raises(TypeError, match="psycopg"):
        app.enqueue("send_receipt", [1], connection=object())
    assert app.jobs() == []
