"""Workflows through the App and an in-process Worker, on every engine: chains, batches
(map/group with a merge step), unique_for windows and periodic jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import conveyor
from conveyor import BatchFailed, JobFailed, JobState
from conveyor.scheduler import Scheduler, tick_key
from tests.contract.conftest import FakeClock, OpenBackend


@pytest.fixture
def app(store_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(store_url)
    yield app
    app.close()


def run(app: conveyor.App) -> None:
    conveyor.Worker(app, concurrency=4, handle_signals=False).run(burst=True)


def test_chain_passes_each_result_to_the_next_step(app: conveyor.App) -> None:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    last = conveyor.chain(add.s(1, 2), double.s(), add.s(10))
    assert last.info().state is JobState.BLOCKED
    run(app)
    assert last.wait(timeout=5) == 16  # add(double(add(1, 2)), 10)


def test_a_failed_step_cancels_the_rest_of_the_chain(app: conveyor.App) -> None:
    @app.task(name="boom", max_attempts=1)
    def boom() -> None:
        raise RuntimeError("no")

    @app.task(name="never")
    def never(x: Any) -> None:
        raise AssertionError("must not run")

    last = conveyor.chain(boom.s(), never.s(), never.s())
    run(app)
    with pytest.raises(JobFailed):
        last.wait(timeout=5)
    job = last.info()
    assert job.state is JobState.CANCELLED and job.error is not None
    assert job.error.type == "DependencyFailed"


def test_after_waits_for_handles_and_policy_always(app: conveyor.App) -> None:
    @app.task(name="ok")
    def ok() -> str:
        return "ok"

    @app.task(name="bad", max_attempts=1)
    def bad() -> None:
        raise conveyor.Fail("broken")

    @app.task(name="report")
    def report() -> str:
        return "reported"

    first, broken = ok.enqueue(), bad.enqueue()
    strict = report.options(after=[first, broken]).enqueue()
    lenient = report.options(after=[first, broken], after_policy="always").enqueue()
    run(app)
    assert lenient.wait(timeout=5) == "reported"
    assert strict.info().state is JobState.CANCELLED


def test_map_merges_once_with_results_in_input_order(app: conveyor.App) -> None:
    @app.task(name="square")
    def square(chunk: list[int]) -> list[int]:
        return [x * x for x in chunk]

    @app.task(name="flatten")
    def flatten(results: list[list[int]]) -> list[int]:
        return [x for chunk in results for x in chunk]

    batch = app.map(square, range(23), chunk_size=5, then=flatten, tenant="org-1")
    assert len(batch.jobs) == 5
    progress = batch.progress()
    assert (progress.total, progress.done, progress.merge_state) == (5, 0, JobState.BLOCKED)
    run(app)
    assert batch.wait(timeout=5) == [x * x for x in range(23)]
    done = batch.progress()
    assert (done.done, done.failed, done.merge_state) == (5, 0, JobState.SUCCEEDED)
    assert batch.merge is not None and batch.merge.info().tenant == "org-1"
    assert app.batch(batch.id).wait(timeout=1) == [x * x for x in range(23)]
    assert len(app.jobs(task="flatten")) == 1


def test_failed_chunk_fails_the_batch_and_skips_the_merge(app: conveyor.App) -> None:
    @app.task(name="chunk", max_attempts=1)
    def chunk(items: list[int]) -> int:
        if 3 in items:
            raise ValueError("bad item 3")
        return sum(items)

    @app.task(name="merge")
    def merge(results: list[int]) -> int:
        raise AssertionError("must not run")

    batch = app.map(chunk, [1, 2, 3, 4], chunk_size=2, then=merge)
    run(app)
    with pytest.raises(BatchFailed) as caught:
        batch.wait(timeout=5)
    assert [j.id for j in caught.value.failures] == [batch.jobs[1].id]
    assert "bad item 3" in str(caught.value)
    assert batch.progress().failed == 1
    assert batch.merge is not None and batch.merge.info().state is JobState.CANCELLED


def test_allow_failures_gives_the_merge_none_and_the_error(app: conveyor.App) -> None:
    @app.task(name="chunk", max_attempts=1)
    def chunk(items: list[int]) -> int:
        if 3 in items:
            raise ValueError("bad item 3")
        return sum(items)

    @app.task(name="merge")
    def merge(results: list[int | None], errors: list[dict[str, Any] | None]) -> dict[str, Any]:
        return {"results": results, "errors": [e and (e["type"], e["message"]) for e in errors]}

    batch = app.map(chunk, [1, 2, 3, 4], chunk_size=2, then=merge, allow_failures=True)
    run(app)
    merged = batch.wait(timeout=5)
    assert merged["results"] == [3, None]
    assert merged["errors"][0] is None
    assert merged["errors"][1][0] == "ValueError" and "bad item 3" in merged["errors"][1][1]


def test_group_of_different_jobs_with_a_merge(app: conveyor.App) -> None:
    @app.task(name="upper")
    def upper(s: str) -> str:
        return s.upper()

    @app.task(name="length")
    def length(s: str) -> int:
        return len(s)

    @app.task(name="pair")
    def pair(results: list[Any], label: str) -> dict[str, Any]:
        return {label: results}

    batch = app.group([upper.s("ab"), length.s("abc")], then=pair.s("out"))
    run(app)
    assert batch.wait(timeout=5) == {"out": ["AB", 3]}
    plain = app.group([upper.s("x"), length.s("yz")])
    run(app)
    assert plain.wait(timeout=5) == ["X", 2]


def test_arguments_that_look_like_a_placeholder_are_refused(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="reserved"):
        app.enqueue("t", args=[{"$conveyor": "results", "of": []}])


def test_unique_for_returns_the_first_job_after_it_finished(app: conveyor.App) -> None:
    @app.task(name="report")
    def report() -> str:
        return "done"

    first = report.options(key="daily", unique_for=3600).enqueue()
    run(app)
    assert first.wait(timeout=5) == "done"
    assert report.options(key="daily", unique_for=3600).enqueue() == first
    with pytest.raises(ValueError, match="needs key"):
        report.options(unique_for=10).enqueue()


async def test_unique_for_is_race_free_under_concurrent_enqueues(
    open_backend: OpenBackend, store_url: str
) -> None:
    app = conveyor.App(store_url)
    try:
        handles = await asyncio.gather(
            *(app.enqueue_async("t", key="once", unique_for=60) for _ in range(50))
        )
        assert len({h.id for h in handles}) == 1
    finally:
        await app.close_async()


async def test_periodic_ticks_are_enqueued_once_by_many_schedulers(
    store_url: str, clock: FakeClock, open_backend: OpenBackend
) -> None:
    app = conveyor.App(store_url, clock=clock)

    @app.periodic("* * * * *", tz="UTC")
    def minutely() -> None: ...

    @app.periodic(every=timedelta(seconds=10), name="tensec")
    def tensec() -> None: ...

    try:
        backends = [await open_backend() for _ in range(3)]
        schedulers = [Scheduler(app) for _ in backends]
        seen: set[str] = set()
        for _ in range(30):  # 30 passes, 7 s apart: 3.5 minutes
            await asyncio.gather(*(s.run_due(b) for s, b in zip(schedulers, backends, strict=True)))
            clock.advance(7)
        jobs = await backends[0].query(limit=1000)
        seen = {j.key or "" for j in jobs}
        assert len(seen) == len(jobs)  # one job per tick
        ten = sorted(j.key or "" for j in jobs if j.task == "tensec")
        start = int(clock.now) - 30 * 7
        expected = {
            tick_key(app.schedules["tensec"], t)
            for t in range(start, int(clock.now), 1)
            if t % 10 == 0 and t > start - start % 10 - 1
        }
        assert set(ten) == expected
        assert sum(j.task.endswith("minutely") for j in jobs) == 4  # the due one + 3 more
    finally:
        await app.close_async()


async def test_missed_ticks_run_once_not_one_by_one(
    store_url: str, clock: FakeClock, open_backend: OpenBackend
) -> None:
    app = conveyor.App(store_url, clock=clock)

    @app.periodic(every=timedelta(seconds=60), name="each-minute")
    def each_minute() -> None: ...

    @app.periodic(every=timedelta(seconds=60), name="skipper", missed="skip")
    def skipper() -> None: ...

    try:
        backend = await open_backend()
        scheduler = Scheduler(app)
        await scheduler.run_due(backend)
        scheduler.lost_lock()  # everything went down ...
        clock.advance(3600)  # ... for an hour
        await scheduler.run_due(backend)
        jobs = await backend.query(task="each-minute", limit=100)
        assert len(jobs) == 2  # the tick before the outage and the latest one
        assert await backend.query(task="skipper", limit=100) == []
    finally:
        await app.close_async()


def test_periodic_validates_its_schedule(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="bad cron"):
        app.periodic("not a cron")(lambda: None)
    with pytest.raises(ValueError, match="time zone"):
        app.periodic("* * * * *", tz="Mars/Olympus")(lambda: None)
    with pytest.raises(ValueError, match="not both"):
        app.periodic("* * * * *", every=timedelta(minutes=1))(lambda: None)
    with pytest.raises(ValueError, match="themselves"):
        app.periodic("* * * * *", key="k")
    with pytest.raises(ValueError, match="priority"):
        app.periodic("* * * * *", name="urgent", priority=42)(lambda: None)
    assert "urgent" not in app.schedules and "urgent" not in app.tasks
    with pytest.raises(TypeError, match="JSON"):
        app.periodic("* * * * *", name="odd", args=[object()])(lambda: None)


def test_task_and_tenant_rate_limits_defer_jobs_to_their_slot(
    store_url: str, clock: FakeClock
) -> None:
    app = conveyor.App(store_url, clock=clock)
    try:

        @app.task(name="limited", rate_limit="2/10s")
        def limited(n: int) -> int:
            return n

        @app.task(name="free")
        def free(n: int) -> int:
            return n

        app.tenant_rate_limit("slow-org", (1, 60.0))
        handles = [limited.enqueue(i) for i in range(5)]
        tenant_jobs = [free.options(tenant="slow-org").enqueue(i) for i in range(2)]
        others = [free.options(tenant="fast-org").enqueue(i) for i in range(3)]
        run(app)

        def states(hs: list[conveyor.JobHandle]) -> list[str]:
            return sorted(h.info().state.value for h in hs)

        assert states(handles) == ["scheduled"] * 3 + ["succeeded"] * 2
        assert all(h.info().attempt == 0 for h in handles if h.info().state.value == "scheduled")
        assert states(tenant_jobs) == ["scheduled", "succeeded"]
        assert states(others) == ["succeeded"] * 3
        clock.advance(5)  # one more start of "limited" every 5 s
        run(app)
        assert states(handles) == ["scheduled"] * 2 + ["succeeded"] * 3
        clock.advance(60)
        run(app)
        assert states(handles) == ["succeeded"] * 5
        assert states(tenant_jobs) == ["succeeded"] * 2
        with pytest.raises(ValueError, match="N/unit"):
            app.task(name="bad", rate_limit="fast")(lambda: None)
    finally:
        app.close()
