"""Fixtures for the PostgreSQL-specific tests (each test gets its own schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from conveyor.backends.base import NewJob
from conveyor.backends.postgres import PostgresBackend
from conveyor.job import new_job_id
from conveyor.serialize import dumps
from tests.stores_postgres import postgres_store


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_store() as url:
        yield url


OpenPG = Callable[..., Awaitable[PostgresBackend]]


@pytest.fixture
async def open_pg(pg_url: str) -> AsyncIterator[OpenPG]:
    """Opens another backend instance on the test's schema (closed after the test)."""
    opened: list[PostgresBackend] = []

    async def factory(**kwargs: Any) -> PostgresBackend:
        backend = PostgresBackend(pg_url, **kwargs)
        await backend.open()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


def new_job(
    task: str = "t", *, queue: str = "default", tenant: str | None = None, **options: Any
) -> NewJob:
    options.setdefault("priority", 5)
    options.setdefault("max_attempts", 3)
    return NewJob(
        id=new_job_id(),
        task=task,
        queue=queue,
        tenant=tenant,
        args_json=dumps([]),
        kwargs_json=dumps({}),
        **options,
    )
