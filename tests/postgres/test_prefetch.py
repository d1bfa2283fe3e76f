"""A worker on PostgreSQL claims further ahead by default (Backend.prefetch_per_slot).

Each finish_and_claim costs the server mostly per call (a transaction, its locks, a
commit), so on a deep queue of tiny jobs a worker asks for up to 16 jobs per slot
ahead of its free slots, and each call carries several times more jobs. Ordering, caps and
leases of buffered jobs are covered for every engine in tests/contract
(test_app_worker.py, ``test_prefetched_jobs_*``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import conveyor
from conveyor import JobState
from conveyor.backends.postgres import PostgresBackend


@pytest.fixture
def app(pg_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(pg_url)
    yield app
    app.close()


@pytest.fixture
def prefetch_any_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefetch whenever the queue is deep (attempts on a loaded machine may take longer
    than the real threshold: it is wall-clock time)."""
    from conveyor.worker import loop

    monkeypatch.setattr(loop, "_PREFETCH_MAX_RUN", 5.0)
    monkeypatch.setattr(loop, "_PREFETCH_MAX_WAIT", 5.0)


def test_default_prefetch_is_sixteen_jobs_per_slot(app: conveyor.App) -> None:
    assert PostgresBackend.prefetch_per_slot == 16
    worker = conveyor.Worker(app, concurrency=3, handle_signals=False)
    assert worker.prefetch is None  # the engine decides when the worker opens it
    worker.run(burst=True)
    assert worker.prefetch == 48
    explicit = conveyor.Worker(app, concurrency=3, prefetch=1, handle_signals=False)
    explicit.run(burst=True)
    assert explicit.prefetch == 1


@pytest.mark.usefixtures("prefetch_any_run_time")
def test_deep_queue_is_claimed_further_ahead(app: conveyor.App) -> None:
    """With 2 slots the worker holds up to 2 + 32 jobs (running in the store: started or
    buffered), more than the 2 + 2 of the engine-independent default, and every job
    still runs once."""
    peak_held = 0

    @app.task(name="peek")
    async def peek() -> None:
        nonlocal peak_held
        backend = await app.backend()
        stats = await backend.stats()
        peak_held = max(peak_held, sum(s.running for s in stats if s.queue == "default"))
        await asyncio.sleep(0)

    handles = app.enqueue_many([peek.s() for _ in range(60)])
    conveyor.Worker(app, concurrency=2, handle_signals=False).run(burst=True)
    assert 2 + 2 < peak_held <= 2 + 32
    for h in handles:
        job = h.info()
        assert job.state is JobState.SUCCEEDED and job.attempt == 1, job
