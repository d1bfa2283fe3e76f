"""The backend conformance suite's fixtures.

Every test in ``tests/contract`` runs once per engine in ``ENGINES``. A test talks only to
the ``Backend`` protocol, so adding an engine means adding its name here and a branch
in ``store_url`` (e.g. a Redis or Postgres URL from the environment, flushed per test);
no test changes. Time never passes by sleeping: every backend gets the same
``FakeClock``, which tests move forward with ``clock.advance(seconds)``.

``redis-cluster`` is the Redis backend again, on a private three-node Redis Cluster
(``tests/redis/cluster.py``, started once per session where ``redis-server`` exists):
the same scripts, routed by the cluster client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import available_engines, create_backend
from conveyor.backends.base import Backend, ClaimedJob, NewJob, Outcome, OutcomeKind
from conveyor.job import new_job_id
from conveyor.serialize import dumps

#: Every engine that ships joins the suite; a backend cannot opt out of a test.
ENGINES = [{"postgresql": "postgres"}.get(e, e) for e in available_engines()]
#: The contract suite's own list: the Redis backend runs on a single server and a cluster.
CONTRACT_ENGINES = ENGINES + (["redis-cluster"] if "redis" in ENGINES else [])
START = 1_700_000_000.0


class FakeClock:
    """A clock that stands still until told to move."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[None]:
    """Keeps the shared private cluster up for the whole session once a test needs it."""
    from tests.redis.cluster import cluster_session

    with cluster_session():
        yield


@pytest.fixture(params=CONTRACT_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "redis-cluster":
        request.getfixturevalue("redis_cluster_session")
    return str(request.param)


@contextlib.contextmanager
def fresh_store(engine: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty, private store (its own file, schema, or key prefix)."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
    elif engine == "postgres":
        from tests.stores_postgres import postgres_store

        with postgres_store() as url:
            yield url
    elif engine == "redis":
        from tests.stores_redis import redis_store

        with redis_store() as url:
            yield url
    elif engine == "redis-cluster":
        from tests.redis.cluster import cluster_session

        with cluster_session() as cluster:
            yield cluster.store_url()
    else:
        raise AssertionError(f"no store for engine {engine!r}")


@pytest.fixture
def store_url(engine: str, tmp_path: Path) -> Iterator[str]:
    with fresh_store(engine, tmp_path) as url:
        yield url


OpenBackend = Callable[[], Awaitable[Backend]]


@pytest.fixture
async def open_backend(store_url: str, clock: FakeClock) -> AsyncIterator[OpenBackend]:
    """Opens another instance on the test's store (another worker, another process)."""
    opened: list[Backend] = []

    async def factory() -> Backend:
        backend = create_backend(store_url, clock=clock)
        await backend.open()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


@pytest.fixture
async def backend(open_backend: OpenBackend) -> Backend:
    return await open_backend()


MakeJob = Callable[..., NewJob]


@pytest.fixture
def make_job() -> MakeJob:
    """``make_job(task="t", tenant="a", priority=3, delay=5.0, key="k", ...)`` -> NewJob."""

    def make(
        task: str = "tasks.noop",
        *,
        queue: str = "default",
        tenant: str | None = None,
        priority: int = 5,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        max_attempts: int = 3,
        **options: Any,
    ) -> NewJob:
        return NewJob(
            id=new_job_id(),
            task=task,
            queue=queue,
            tenant=tenant,
            priority=priority,
            args_json=dumps(list(args)),
            kwargs_json=dumps(kwargs or {}),
            max_attempts=max_attempts,
            **options,
        )

    return make


class Ops:
    """Small helpers shared by the tests (a fixture, so no test imports conftest)."""

    @staticmethod
    async def claim_one(backend: Backend, queue: str = "default", **options: Any) -> ClaimedJob:
        """Claims exactly one job (fails the test if there is none)."""
        options.setdefault("worker", "w1")
        options.setdefault("lease", 30.0)
        jobs = await backend.claim([queue], 1, **options)
        assert len(jobs) == 1, "expected a claimable job"
        return jobs[0]

    @staticmethod
    async def claim_order(backend: Backend, n: int, queue: str = "default") -> list[ClaimedJob]:
        """Claims up to ``n`` jobs one call at a time, in claim order."""
        out: list[ClaimedJob] = []
        for _ in range(n):
            jobs = await backend.claim([queue], 1, worker="w1", lease=30.0)
            if not jobs:
                break
            out.extend(jobs)
        return out

    @staticmethod
    def outcome(job: ClaimedJob, kind: OutcomeKind, **fields: Any) -> Outcome:
        return Outcome(id=job.id, lease_token=job.lease_token, kind=kind, **fields)

    @staticmethod
    async def succeed(backend: Backend, job: ClaimedJob, result: Any = None) -> None:
        done = Ops.outcome(job, OutcomeKind.SUCCEEDED, result_json=dumps(result))
        assert await backend.finish([done]) == [True]


@pytest.fixture
def ops() -> type[Ops]:
    return Ops
