"""External completion end to end: a real worker parks the job, a thread completes it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

import conveyor
from conveyor import CompletionRefused, JobState
from conveyor.notify import Event

FAST = conveyor.Backoff(base=0.01, factor=1.0, cap=0.01, jitter=False)


@pytest.fixture
def app(store_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(store_url)
    yield app
    app.close()


@pytest.fixture
def handoffs(app: conveyor.App) -> Iterator[queue.Queue[tuple[str, str, int]]]:
    """Registers ``charge`` (hands its job to the "outside service": this queue) and
    runs a worker in a thread until the test ends."""
    out: queue.Queue[tuple[str, str, int]] = queue.Queue()

    @app.task(name="charge", max_attempts=3, backoff=FAST)
    def charge(amount: int) -> str:
        job = conveyor.current_job()
        if job.attempt == 3:
            return "charged in-process"
        out.put((job.id, job.completion_token, job.attempt))
        job.await_external(deadline=600)

    worker = conveyor.Worker(app, concurrency=2, poll_interval=0.05, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield out
    worker.stop()
    thread.join(30)


def test_a_thread_completes_the_awaiting_job(
    app: conveyor.App, handoffs: queue.Queue[tuple[str, str, int]]
) -> None:
    succeeded: list[Event] = []
    app.on("job.succeeded")(succeeded.append)
    handle = app.enqueue("charge", args=[10])
    job_id, token, _ = handoffs.get(timeout=15)
    assert job_id == handle.id
    deadline = time.monotonic() + 15
    while (info := handle.info()).state is not JobState.WAITING:  # the park lands
        assert time.monotonic() < deadline, info
        time.sleep(0.01)
    assert info.lease_expires_at is not None

    service = threading.Thread(target=app.complete_external, args=(job_id, token, {"paid": 10}))
    service.start()
    service.join(15)
    assert handle.wait(timeout=15) == {"paid": 10}
    assert [e.job_id for e in succeeded] == [job_id]
    with pytest.raises(CompletionRefused) as refused:
        app.complete_external(job_id, token, "twice")
    assert refused.value.reason == "closed"


def test_fail_external_retries_by_the_task_policy(
    app: conveyor.App, handoffs: queue.Queue[tuple[str, str, int]]
) -> None:
    handle = app.enqueue("charge", args=[5])
    job_id, token, attempt = handoffs.get(timeout=15)
    assert attempt == 1
    with pytest.raises(CompletionRefused) as refused:
        app.fail_external(job_id, "not-the-token", "declined")
    assert refused.value.reason == "unknown"
    app.fail_external(job_id, token, {"type": "Declined", "message": "try later"})
    _, token2, attempt = handoffs.get(timeout=15)  # the task ran again
    assert attempt == 2 and token2 != token
    app.fail_external(job_id, token2, "still declined")
    assert handle.wait(timeout=15) == "charged in-process"  # attempt 3
    assert [e.type for e in handle.info().errors] == ["Declined", "ExternalFailure"]


def test_a_completion_before_the_park_lands_still_applies(
    app: conveyor.App, handoffs: queue.Queue[tuple[str, str, int]]
) -> None:
    """The service may answer while the worker is still parking the job: its token then
    completes the attempt directly, and the worker's park is fenced off."""
    handles = [app.enqueue("charge", args=[i]) for i in range(5)]
    for _ in handles:
        job_id, token, _ = handoffs.get(timeout=15)
        app.complete_external(job_id, token, job_id)  # at once, parked or not
    assert [h.wait(timeout=15) for h in handles] == [h.id for h in handles]


def test_await_validates_its_deadline() -> None:
    with pytest.raises(ValueError, match="deadline"):
        conveyor.Await(deadline=0)
    with pytest.raises(TypeError, match="deadline"):
        conveyor.Await(deadline="10")  # type: ignore[arg-type]
    assert conveyor.Await(deadline=5).deadline == 5.0


def test_a_backend_a_task_opens_on_the_worker_loop_is_closed_with_it(store_url: str) -> None:
    """Async tasks that use the app's API (the webhook delivery task does) open the app's
    backend on the worker's loop; the worker closes it when it stops."""
    app = conveyor.App(store_url)
    opened: list[object] = []

    @app.task(name="uses_api")
    async def uses_api() -> int:
        backend = await app.backend()
        opened.append(backend)
        return len(await backend.stats())

    try:
        app.enqueue("uses_api")
        conveyor.Worker(app, handle_signals=False, poll_interval=0.05).run(burst=True)
        assert len(opened) == 1
        # close_async() took it out of the app and closed it (each engine drops its
        # connection, pool or client on close).
        assert opened[0] not in app._backends.values()
        handle = next(
            getattr(opened[0], name)
            for name in ("_executor", "_pool", "_client")
            if hasattr(opened[0], name)
        )
        assert handle is None
    finally:
        app.close()


def test_a_deadline_timeout_waits_out_the_tasks_backoff(app: conveyor.App) -> None:
    timeouts: list[Event] = []
    app.on("job.timeout")(timeouts.append)

    @app.task(name="slow_service", max_attempts=2, backoff=conveyor.Backoff(120, jitter=False))
    def slow_service() -> None:
        conveyor.current_job().await_external(deadline=0.2)

    worker = conveyor.Worker(
        app, poll_interval=0.05, maintenance_interval=0.05, handle_signals=False
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        handle = app.enqueue("slow_service")
        deadline = time.monotonic() + 15
        while (info := handle.info()).state is not JobState.RETRYING:
            assert time.monotonic() < deadline, info
            time.sleep(0.02)
        timed_out = info.errors[-1]
        assert timed_out.type == "ExternalTimeout" and timed_out.attempt == 1
        # Retry 1 of Backoff(base=120): two minutes after the timeout, not at once.
        assert info.run_at is not None
        assert (info.run_at - timed_out.at).total_seconds() == pytest.approx(120, abs=1)
        while not timeouts:
            assert time.monotonic() < deadline, "no job.timeout event"
            time.sleep(0.02)
        assert [e.job_id for e in timeouts] == [handle.id]
    finally:
        worker.stop()
        thread.join(30)
