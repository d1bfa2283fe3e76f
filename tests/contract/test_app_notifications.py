"""Notifications for jobs the store cancels itself, end to end on every engine: a real
worker's maintenance loop drains the outbox and calls the ``app.on`` listeners, once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import conveyor
from conveyor import BatchFailed, JobFailed, JobState, metrics
from conveyor.backends import create_backend
from conveyor.notify import Event

#: How long a test keeps watching after the expected events arrived, to catch a second
#: announcement (about 10 maintenance passes at MAINTENANCE).
SETTLE = 0.5
MAINTENANCE = 0.05


@pytest.fixture
def app(store_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(store_url)
    yield app
    app.close()


class Heard:
    """Every event the listeners got, by name (listeners run on the worker's thread)."""

    def __init__(self, app: conveyor.App, *names: str) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        for name in names:
            app.on(name)(self._add)

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, name: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.name == name]

    def wait_for(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"events so far: {self.events}"
            time.sleep(0.02)
        time.sleep(SETTLE)  # anything announced twice shows up by now


@pytest.fixture
def worker(app: conveyor.App) -> Iterator[conveyor.Worker]:
    """A worker in a thread, running maintenance often; tasks are registered first."""
    worker = conveyor.Worker(
        app,
        concurrency=4,
        lease=1.5,
        poll_interval=0.05,
        maintenance_interval=MAINTENANCE,
        handle_signals=False,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    started = False

    def start() -> None:
        nonlocal started
        started = True
        thread.start()

    worker.start_in_thread = start  # type: ignore[attr-defined]
    yield worker
    if started:
        worker.stop()
        thread.join(30)


def test_a_failed_batch_announces_batch_finished_once_with_the_chunk_error(
    app: conveyor.App, worker: Any
) -> None:
    heard = Heard(app, "batch.finished", "job.cancelled", "job.dead")

    @app.task(name="chunk", max_attempts=1)
    def chunk(items: list[int]) -> int:
        if 3 in items:
            raise ValueError("bad item 3")
        return sum(items)

    @app.task(name="merge")
    def merge(results: list[int]) -> int:
        raise AssertionError("must not run")

    batch = app.map(chunk, [1, 2, 3, 4], chunk_size=2, then=merge)
    worker.start_in_thread()
    with pytest.raises(BatchFailed):
        batch.wait(timeout=15)
    heard.wait_for(lambda: bool(heard.of("batch.finished")))
    (finished,) = heard.of("batch.finished")
    assert finished.job_id == batch.id
    assert finished.error is not None and finished.error["type"] == "DependencyFailed"
    assert batch.jobs[1].id in finished.error["message"]
    (failure,) = finished.error["failures"]
    assert (failure["job"], failure["state"], failure["type"]) == (
        batch.jobs[1].id,
        "dead",
        "ValueError",
    )
    assert failure["message"].startswith("bad item 3")
    assert [e.job_id for e in heard.of("job.cancelled")] == [batch.id]  # the merge job
    assert [e.job_id for e in heard.of("job.dead")] == [batch.jobs[1].id]  # by its worker


def test_a_dead_step_announces_each_cancelled_step_of_the_chain_once(
    app: conveyor.App, worker: Any
) -> None:
    heard = Heard(app, "job.cancelled")

    @app.task(name="boom", max_attempts=1)
    def boom() -> None:
        raise RuntimeError("no")

    @app.task(name="never")
    def never(x: Any) -> None:
        raise AssertionError("must not run")

    a = boom.enqueue()
    b = never.options(after=[a]).enqueue(1)
    c = never.options(after=[b]).enqueue(2)
    worker.start_in_thread()
    with pytest.raises(JobFailed):
        c.wait(timeout=15)
    heard.wait_for(lambda: len(heard.of("job.cancelled")) >= 2)
    cancelled = heard.of("job.cancelled")
    assert sorted(e.job_id for e in cancelled) == sorted([b.id, c.id])
    assert all(e.error is not None and e.error["type"] == "DependencyFailed" for e in cancelled)


def test_cancel_of_a_queued_job_is_announced_once(app: conveyor.App, worker: Any) -> None:
    heard = Heard(app, "job.cancelled")
    # A queue the worker does not serve: the job stays queued until cancelled.
    handle = app.enqueue("elsewhere.task", queue="nobody-serves-this")
    worker.start_in_thread()
    app.cancel(handle.id)
    assert handle.info().state is JobState.CANCELLED
    heard.wait_for(lambda: bool(heard.of("job.cancelled")))
    ((event),) = heard.of("job.cancelled")
    assert (event.job_id, event.queue, event.task) == (
        handle.id,
        "nobody-serves-this",
        "elsewhere.task",
    )


def test_a_cancel_the_worker_honours_is_announced_once(app: conveyor.App, worker: Any) -> None:
    heard = Heard(app, "job.cancelled")
    started = threading.Event()

    @app.task(name="long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    handle = long.enqueue()
    worker.start_in_thread()
    assert started.wait(15)
    app.cancel(handle.id)  # a request: the worker learns of it from its heartbeat
    heard.wait_for(lambda: bool(heard.of("job.cancelled")))
    assert [e.job_id for e in heard.of("job.cancelled")] == [handle.id]
    assert handle.info().state is JobState.CANCELLED


def test_cancelling_a_waiting_batch_announces_batch_finished_once(
    app: conveyor.App, worker: Any
) -> None:
    heard = Heard(app, "batch.finished", "job.cancelled")

    @app.task(name="piece")
    def piece(items: list[int]) -> int:
        return sum(items)

    @app.task(name="gather")
    def gather(results: list[int]) -> int:
        return sum(results)

    # The pieces wait in a queue nobody serves, so the merge job stays blocked.
    batch = app.map(piece, [1, 2], chunk_size=1, then=gather, queue="nobody-serves-this")
    worker.start_in_thread()
    app.cancel(batch.id)
    heard.wait_for(lambda: bool(heard.of("batch.finished")))
    (finished,) = heard.of("batch.finished")
    assert finished.job_id == batch.id
    assert finished.error is not None and finished.error["type"] == "Cancelled"
    assert finished.error["failures"] == []
    assert [e.job_id for e in heard.of("job.cancelled")] == [batch.id]


def _quiet_worker(app: conveyor.App) -> conveyor.Worker:
    """A worker whose heartbeat (every lease/3 = 10 s) never comes during a test: a
    cancel request reaches the store only, as one that came after the last heartbeat."""
    return conveyor.Worker(
        app,
        concurrency=2,
        lease=30.0,
        grace=0.0,
        poll_interval=0.05,
        maintenance_interval=MAINTENANCE,
        handle_signals=False,
    )


def _attempts(worker: conveyor.Worker, task: str, outcome: str) -> int:
    counts = metrics.Counts.from_json(worker.counts.to_json(0.0))[0]
    return counts.counter("attempts", ("default", task, outcome))


def test_a_job_whose_worker_was_lost_while_a_cancel_was_pending_is_announced_once(
    app: conveyor.App, worker: Any, store_url: str
) -> None:
    """The reaper cancels it; the lost worker never will announce it: the outbox does."""
    heard = Heard(app, "job.cancelled", "job.retrying", "job.dead")

    @app.task(name="orphan")
    def orphan() -> None:
        raise AssertionError("must not run again")

    handle = orphan.enqueue()

    async def claim_and_vanish() -> None:  # a worker that claims, then is SIGKILLed
        lost = create_backend(store_url)
        await lost.open()
        try:
            assert [j.id for j in await lost.claim(["default"], 1, worker="lost", lease=0.5)]
        finally:
            await lost.close()

    asyncio.run(claim_and_vanish())
    assert app.cancel(handle.id) is JobState.RUNNING  # a request only: nobody hears it
    worker.start_in_thread()
    heard.wait_for(lambda: bool(heard.of("job.cancelled")))
    assert [(e.name, e.job_id) for e in heard.events] == [("job.cancelled", handle.id)]
    (event,) = heard.events
    assert event.error is not None and event.error["type"] == "WorkerLost"
    assert handle.info().state is JobState.CANCELLED


def test_a_task_that_raises_after_its_cancel_was_requested_is_announced_cancelled_once(
    app: conveyor.App,
) -> None:
    """The store turns the retry into cancelled; the worker must say so, not
    job.retrying (and count the attempt as cancelled)."""
    heard = Heard(app, "job.cancelled", "job.retrying", "job.dead")
    started, requested = threading.Event(), threading.Event()

    @app.task(name="flaky", max_attempts=3)
    def flaky() -> None:
        started.set()
        requested.wait(15)
        raise ValueError("failed after the cancel request")

    handle = flaky.enqueue()
    worker = _quiet_worker(app)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(15)
        assert app.cancel(handle.id) is JobState.RUNNING
        requested.set()
        heard.wait_for(lambda: bool(heard.events))
    finally:
        requested.set()
        worker.stop()
        thread.join(30)
    assert [(e.name, e.job_id) for e in heard.events] == [("job.cancelled", handle.id)]
    (event,) = heard.events
    assert event.error is not None and event.error["type"] == "ValueError"
    assert handle.info().state is JobState.CANCELLED
    assert _attempts(worker, "flaky", "cancelled") == 1
    assert _attempts(worker, "flaky", "retry") == 0


def test_a_job_released_at_shutdown_while_a_cancel_was_pending_is_announced_once(
    app: conveyor.App,
) -> None:
    """Graceful stop gives the attempt back; the store cancels it instead (the cancel
    request came after the last heartbeat), and the worker announces that."""
    heard = Heard(app, "job.cancelled", "job.retrying", "job.dead")
    started, release = threading.Event(), threading.Event()

    @app.task(name="slow")
    def slow() -> None:
        started.set()
        release.wait(15)

    handle = slow.enqueue()
    worker = _quiet_worker(app)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(15)
        assert app.cancel(handle.id) is JobState.RUNNING
        worker.stop()  # grace 0: the attempt is released at once
        thread.join(30)
        assert not thread.is_alive()
    finally:
        release.set()
        worker.stop()
    assert [(e.name, e.job_id) for e in heard.events] == [("job.cancelled", handle.id)]
    assert handle.info().state is JobState.CANCELLED
    assert _attempts(worker, "slow", "cancelled") == 1


def test_a_task_that_raises_once_it_sees_its_cancel_request_is_announced_cancelled_once(
    app: conveyor.App, worker: Any
) -> None:
    """The heartbeat told the worker first: the attempt's outcome is its cancel,
    whatever the task raised on the way out."""
    heard = Heard(app, "job.cancelled", "job.retrying", "job.dead")
    started = threading.Event()

    @app.task(name="polite", max_attempts=3)
    def polite() -> None:
        started.set()
        ctx = conveyor.current_job()
        deadline = time.monotonic() + 15
        while not ctx.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError("stopping: cancel requested")

    handle = polite.enqueue()
    worker.start_in_thread()
    assert started.wait(15)
    app.cancel(handle.id)
    heard.wait_for(lambda: bool(heard.events))
    assert [(e.name, e.job_id) for e in heard.events] == [("job.cancelled", handle.id)]
    assert handle.info().state is JobState.CANCELLED


def test_a_job_parked_after_its_cancel_was_requested_is_announced_cancelled_once(
    app: conveyor.App,
) -> None:
    """``Await`` hands the job over; the store cancels it instead, and the worker says so."""
    heard = Heard(app, "job.cancelled", "job.retrying", "job.dead", "job.timeout")
    started, requested = threading.Event(), threading.Event()

    @app.task(name="hand_over")
    def hand_over() -> None:
        started.set()
        requested.wait(15)
        raise conveyor.Await(deadline=60)

    handle = hand_over.enqueue()
    worker = _quiet_worker(app)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(15)
        assert app.cancel(handle.id) is JobState.RUNNING
        requested.set()
        heard.wait_for(lambda: bool(heard.events))
    finally:
        requested.set()
        worker.stop()
        thread.join(30)
    assert [(e.name, e.job_id) for e in heard.events] == [("job.cancelled", handle.id)]
    assert handle.info().state is JobState.CANCELLED
    assert _attempts(worker, "hand_over", "cancelled") == 1
    assert _attempts(worker, "hand_over", "parked") == 0
