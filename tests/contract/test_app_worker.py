"""The App and an in-process Worker over a real store: what a user sees end to end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor import JobFailed, JobState

FAST = conveyor.Backoff(base=0.01, factor=1.0, cap=0.01, jitter=False)


@pytest.fixture
def app(store_url: str) -> Iterator[conveyor.App]:
    app = conveyor.App(store_url)
    yield app
    app.close()


def run(app: conveyor.App, **kwargs: object) -> conveyor.Worker:
    kwargs.setdefault("concurrency", 4)
    worker = conveyor.Worker(app, handle_signals=False, **kwargs)  # type: ignore[arg-type]
    worker.run(burst=True)
    return worker


def test_sync_and_async_tasks_succeed_with_results(app: conveyor.App) -> None:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="mul")
    async def mul(x: int, y: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"product": x * y}

    h1, h2 = add.enqueue(1, 2), mul.enqueue(3, y=4)
    assert isinstance(h1.id, str) and h1.id != h2.id
    assert h1.info().state is JobState.QUEUED
    run(app)
    assert h1.wait(timeout=5) == 3
    assert h2.wait(timeout=5) == {"product": 12}
    job = h2.info()
    assert job.state is JobState.SUCCEEDED
    assert job.attempt == 1 and job.kwargs == {"y": 4} and job.args == [3]
    assert job.started_at is not None and job.finished_at is not None


def test_enqueue_by_name_and_many(app: conveyor.App) -> None:
    @app.task(name="echo")
    def echo(v: object) -> object:
        return v

    handles = app.enqueue_many(
        [echo.s(1), {"task": "echo", "args": [2], "tenant": "t"}, echo.options(priority=0).s(3)]
    )
    by_name = app.enqueue("echo", args=[4], tenant="org-7")
    run(app)
    assert [h.wait(timeout=5) for h in handles] == [1, 2, 3]
    assert by_name.info().tenant == "org-7"
    assert handles[2].info().priority == 0


def test_retry_then_success_and_error_history(app: conveyor.App) -> None:
    calls: list[int] = []

    @app.task(name="flaky", max_attempts=3, backoff=FAST)
    def flaky() -> str:
        job = conveyor.current_job()
        calls.append(job.attempt)
        if job.attempt < 3:
            raise RuntimeError(f"boom {job.attempt}")
        return "ok"

    h = flaky.enqueue()
    run(app)
    assert h.wait(timeout=5) == "ok"
    job = h.info()
    assert calls == [1, 2, 3] and job.attempt == 3
    assert [e.message for e in job.errors] == ["boom 1", "boom 2"]
    assert job.errors[0].type == "RuntimeError" and "Traceback" in (job.errors[0].traceback or "")


def test_explicit_retry_and_fail(app: conveyor.App) -> None:
    @app.task(name="retry_once")
    def retry_once() -> str:
        if conveyor.current_job().attempt == 1:
            raise conveyor.Retry(delay=0)
        return "second"

    @app.task(name="give_up", max_attempts=5)
    def give_up() -> None:
        raise conveyor.Fail("bad input, do not retry")

    h1, h2 = retry_once.enqueue(), give_up.enqueue()
    run(app)
    assert h1.wait(timeout=5) == "second"
    with pytest.raises(JobFailed, match="bad input"):
        h2.wait(timeout=5)
    job = h2.info()
    assert job.state is JobState.DEAD and job.attempt == 1


def test_out_of_attempts_goes_dead_then_replay(app: conveyor.App, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"

    @app.task(name="fragile", max_attempts=2, backoff=FAST)
    def fragile() -> str:
        if not flag.exists():
            raise ValueError("not yet")
        return "fixed"

    h = fragile.enqueue()
    run(app)
    job = h.info()
    assert job.state is JobState.DEAD and job.attempt == 2
    assert "no attempts left" in job.errors[-1].message
    assert [j.id for j in app.jobs(state="dead")] == [h.id]
    flag.touch()
    assert app.replay(h.id) is True
    run(app)
    assert h.wait(timeout=5) == "fixed"
    assert len(h.info().errors) == 2  # history is kept across a replay


def test_unknown_task_goes_dead_and_others_carry_on(app: conveyor.App) -> None:
    @app.task(name="fine")
    def fine() -> int:
        return 1

    ghost = app.enqueue("no.such.task")
    ok = fine.enqueue()
    run(app)
    job = ghost.info()
    assert job.state is JobState.DEAD
    assert job.errors[-1].message == "unknown task 'no.such.task'"
    assert ok.wait(timeout=5) == 1


def test_result_that_is_not_json_fails_the_attempt(app: conveyor.App) -> None:
    @app.task(name="bad_result", max_attempts=1)
    def bad_result() -> object:
        return object()

    h = bad_result.enqueue()
    run(app)
    job = h.info()
    assert job.state is JobState.DEAD
    assert "result is not JSON-serializable" in job.errors[-1].message


def test_async_timeout_cancels_the_task(app: conveyor.App) -> None:
    finished = threading.Event()

    @app.task(name="slow_async", timeout=0.05, max_attempts=1)
    async def slow_async() -> None:
        await asyncio.sleep(5)
        finished.set()

    h = slow_async.enqueue()
    started = time.monotonic()
    run(app)
    assert time.monotonic() - started < 4
    job = h.info()
    assert job.state is JobState.DEAD
    assert (
        job.errors[-1].type == "TimeoutError" and "timed out after 0.05 s" in job.errors[-1].message
    )
    assert not finished.is_set()


def test_sync_timeout_in_process_fails_the_attempt(app: conveyor.App) -> None:
    release = threading.Event()

    @app.task(name="slow_sync", timeout=0.1, max_attempts=1)
    def slow_sync() -> None:
        release.wait(10)

    h = slow_sync.enqueue()
    run(app)
    release.set()
    job = h.info()
    assert job.state is JobState.DEAD and job.errors[-1].type == "TimeoutError"


def test_progress_is_recorded(app: conveyor.App) -> None:
    @app.task(name="steps")
    async def steps(n: int) -> int:
        job = conveyor.current_job()
        for i in range(1, n + 1):
            job.progress(i / n, f"step {i}/{n}")
            await asyncio.sleep(0.01)
        return n

    h = steps.enqueue(3)
    run(app)
    job = h.info()
    assert job.progress == 1.0 and job.progress_message == "step 3/3"


def test_progress_validation() -> None:
    ctx = conveyor.JobContext(
        id="x",
        task="t",
        queue="q",
        tenant=None,
        priority=5,
        attempt=1,
        max_attempts=1,
        enqueued_at=None,
        _sink=lambda f, m: None,  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="between 0 and 1"):
        ctx.progress(1.5)


def test_current_job_knows_its_job(app: conveyor.App) -> None:
    @app.task(name="whoami")
    def whoami() -> dict[str, object]:
        job = conveyor.current_job()
        return {"id": job.id, "attempt": job.attempt, "tenant": job.tenant}

    h = whoami.options(tenant="org-7").enqueue()
    run(app)
    assert h.wait(timeout=5) == {"id": h.id, "attempt": 1, "tenant": "org-7"}


def test_cancel_a_queued_job(app: conveyor.App) -> None:
    @app.task(name="never")
    def never() -> None:
        raise AssertionError("cancelled jobs must not run")

    h = never.enqueue()
    assert app.cancel(h.id) is JobState.CANCELLED
    run(app)
    with pytest.raises(JobFailed, match="cancelled"):
        h.wait(timeout=1)


def test_cancel_a_running_async_job(app: conveyor.App) -> None:
    started = threading.Event()

    @app.task(name="long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(30)

    h = long.enqueue()
    # A short lease makes the heartbeat (which carries cancel requests) come often; at
    # 0.3 s one stalled commit on a busy CI machine could lose the lease instead.
    worker = conveyor.Worker(app, lease=1.0, handle_signals=False)
    thread = threading.Thread(target=worker.run, kwargs={"burst": True})
    thread.start()
    assert started.wait(5)
    assert app.cancel(h.id) is JobState.RUNNING  # requested; the worker acts on it
    thread.join(10)
    assert not thread.is_alive()
    assert h.info().state is JobState.CANCELLED


def test_graceful_stop_releases_unfinished_jobs(app: conveyor.App) -> None:
    started = threading.Event()

    @app.task(name="sleepy")
    async def sleepy() -> None:
        started.set()
        await asyncio.sleep(30)

    h = sleepy.enqueue()
    worker = conveyor.Worker(app, grace=0.1, handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(5)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    job = h.info()
    assert job.state is JobState.QUEUED and job.attempt == 0  # no attempt burned


def test_dedup_key_returns_the_active_job(app: conveyor.App) -> None:
    @app.task(name="once")
    def once() -> int:
        return 1

    a = once.options(key="k1").enqueue()
    b = once.options(key="k1").enqueue()
    assert a == b
    run(app)
    c = once.options(key="k1").enqueue()  # the first finished: a new job is accepted
    assert c != a


def test_fairness_through_the_worker(app: conveyor.App) -> None:
    order: list[str] = []

    @app.task(name="record")
    def record(tenant: str) -> None:
        order.append(tenant)

    app.enqueue_many([record.options(tenant="flood").s("flood") for _ in range(50)])
    app.enqueue_many([record.options(tenant="small").s("small") for _ in range(2)])
    run(app, concurrency=1)
    assert len(order) == 52
    last_small = max(i for i, t in enumerate(order) if t == "small")
    assert last_small <= 4, order[:10]


def test_priority_beats_fairness_and_fifo(app: conveyor.App) -> None:
    order: list[int] = []

    @app.task(name="p")
    def p(n: int) -> None:
        order.append(n)

    for n in range(3):
        p.options(priority=9).enqueue(n)
    p.options(priority=0).enqueue(100)
    run(app, concurrency=1)
    assert order == [100, 0, 1, 2]


def test_delayed_job_waits(app: conveyor.App) -> None:
    @app.task(name="later")
    def later() -> str:
        return "now"

    h = later.options(delay=3600).enqueue()
    assert h.info().state is JobState.SCHEDULED
    run(app)  # burst does not wait for scheduled jobs
    assert h.info().state is JobState.SCHEDULED


def test_wait_times_out(app: conveyor.App) -> None:
    @app.task(name="idle")
    def idle() -> None: ...

    h = idle.enqueue()
    with pytest.raises(TimeoutError):
        h.wait(timeout=0.05)


def test_job_not_found(app: conveyor.App) -> None:
    with pytest.raises(conveyor.JobNotFound):
        app.job("0190a000-0000-7000-8000-000000000000").info()


async def test_async_api(app: conveyor.App) -> None:
    @app.task(name="aadd")
    async def aadd(x: int, y: int) -> int:
        return x + y

    h = await aadd.enqueue_async(2, 3)
    worker = conveyor.Worker(app, handle_signals=False)
    await worker.run_async(burst=True)
    assert await h.wait_async(timeout=5) == 5
    await app.close_async()


def test_sync_api_works_after_fork(app: conveyor.App) -> None:
    import os

    @app.task(name="forked")
    def forked() -> None: ...

    forked.enqueue()  # starts the background loop in the parent
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's (absent) loop thread
        try:
            forked.enqueue()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(app.jobs(task="forked")) == 2


def test_at_datetime_schedules_the_job(app: conveyor.App) -> None:
    from datetime import UTC, datetime, timedelta

    @app.task(name="at_task")
    def at_task() -> str:
        return "ran"

    future = at_task.options(at=datetime.now(UTC) + timedelta(hours=1)).enqueue()
    past = at_task.options(at=datetime.now(UTC) - timedelta(seconds=1)).enqueue()
    job = future.info()
    assert job.state is JobState.SCHEDULED and job.run_at is not None
    assert job.run_at > datetime.now(UTC) + timedelta(minutes=59)
    run(app)
    assert past.wait(timeout=5) == "ran"
    assert future.info().state is JobState.SCHEDULED


def test_tenant_max_running_and_weight_through_the_app(app: conveyor.App) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    @app.task(name="capped_by_tenant")
    def capped_by_tenant() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    app.set_tenant("org-7", weight=2.0, max_running=2)
    app.enqueue_many([capped_by_tenant.options(tenant="org-7").s() for _ in range(12)])
    run(app, concurrency=8)
    assert peak == 2
    stats = {(s.queue, s.tenant): s for s in app.stats()}
    assert stats[("default", "org-7")].succeeded == 12
    assert stats[("default", "org-7")].weight == 2.0
    assert stats[("default", "org-7")].max_running == 2
    with pytest.raises(ValueError, match="weight must be > 0"):
        app.set_tenant("org-7", weight=0)


def test_worker_that_cannot_renew_stops_the_job_itself(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats fail (the store is unreachable for them): before the lease can expire
    and another worker take over, the worker stops the job on its own."""
    from conveyor.worker import loop

    real_create = loop.create_backend

    def create_with_failing_heartbeats(url: str, **kwargs: object) -> object:
        backend = real_create(url, **kwargs)  # type: ignore[arg-type]

        async def heartbeat(*_a: object, **_k: object) -> object:
            raise ConnectionError("store unreachable (injected)")

        backend.heartbeat = heartbeat  # type: ignore[method-assign]
        return backend

    monkeypatch.setattr(loop, "create_backend", create_with_failing_heartbeats)
    started, stopped = threading.Event(), threading.Event()

    @app.task(name="long_job")
    async def long_job() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    h = long_job.enqueue()
    worker = conveyor.Worker(app, lease=3.0, handle_signals=False, maintenance_interval=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert started.wait(5)
        t0 = time.monotonic()
        assert stopped.wait(5), "the job kept running without a lease"
        # The guarantee itself, not a speed target: stopped before its 3 s lease ran out.
        assert time.monotonic() - t0 < 3.0
    finally:
        worker.stop()
        thread.join(10)
    # Its outcome was dropped: the job is still ours on paper until the reaper takes it.
    assert h.info().state is JobState.RUNNING


def test_a_script_that_never_calls_close_exits_cleanly(store_url: str, tmp_path: Path) -> None:
    """The sync API's connections are closed at exit, not abandoned mid-flight."""
    import subprocess
    import sys

    script = tmp_path / "producer.py"
    script.write_text(
        "import sys, conveyor\n"
        "app = conveyor.App(sys.argv[1])\n"
        "app.enqueue('some.task', [1])\n"
        "print('enqueued')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), store_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "enqueued"
    for noise in ("Traceback", "Exception ignored", "Task was destroyed"):
        assert noise not in done.stderr, done.stderr


def _running(app: conveyor.App) -> int:
    return sum(s.running for s in app.stats() if s.queue == "default")


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def prefetch_any_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefetch whenever the queue is deep: on a loaded machine even a no-op attempt can
    take longer than the real threshold (it is measured in wall-clock time)."""
    from conveyor.worker import loop

    monkeypatch.setattr(loop, "_PREFETCH_MAX_RUN", 5.0)
    monkeypatch.setattr(loop, "_PREFETCH_MAX_WAIT", 5.0)


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.usefixtures("prefetch_any_run_time")
def test_prefetched_jobs_are_released_at_stop(app: conveyor.App, prefetch: int) -> None:
    """Short jobs from a deep queue make the worker claim ahead of its free slots; jobs
    it holds but has not started go back to the queue at once when it stops, without
    an attempt burned. Without prefetch it holds no more jobs than it has slots."""
    started: list[int] = []

    @app.task(name="quick")
    async def quick() -> None:
        return None

    @app.task(name="sleepy_n")
    async def sleepy_n(n: int) -> None:
        started.append(n)
        await asyncio.sleep(30)

    app.enqueue_many([quick.s() for _ in range(60)])  # fast attempts: the queue is deep
    sleepers = [sleepy_n.enqueue(n) for n in range(6)]
    worker = conveyor.Worker(app, concurrency=1, prefetch=prefetch, grace=0.1, handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert _wait_for(lambda: started)
        # One runs; with prefetch, `prefetch` more are claimed (leased) and buffered.
        assert _wait_for(lambda: _running(app) == 1 + prefetch)
        time.sleep(0.2)
        assert _running(app) == 1 + prefetch and started == [0]
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    for h in sleepers:
        job = h.info()
        assert job.state is JobState.QUEUED and job.attempt == 0, job


@pytest.mark.usefixtures("prefetch_any_run_time")
def test_prefetched_jobs_keep_their_lease_while_they_wait(app: conveyor.App) -> None:
    """A buffered job waits for a slot longer than its lease: heartbeats renew it, so
    the reaper never hands it to anyone else, and it runs once."""
    runs: list[str] = []

    @app.task(name="quick_rec")
    async def quick_rec(n: int) -> None:
        runs.append(f"q{n}")

    @app.task(name="slow_rec")
    async def slow_rec() -> None:
        runs.append("slow")
        await asyncio.sleep(3.0)  # two and a half leases long

    app.enqueue_many([quick_rec.s(n) for n in range(60)])
    slow = slow_rec.enqueue()
    after = [quick_rec.enqueue(n) for n in range(100, 102)]
    worker = conveyor.Worker(
        app,
        concurrency=1,
        prefetch=2,
        # Renewed every 0.4 s: a shorter lease failed in CI when a PostgreSQL commit
        # stalled on a busy disk for longer than the lease's margin.
        lease=1.2,
        handle_signals=False,
        maintenance_interval=0.1,
    )
    thread = threading.Thread(target=worker.run, kwargs={"burst": True})
    thread.start()
    try:
        assert _wait_for(lambda: "slow" in runs)
        assert _wait_for(lambda: _running(app) == 3)  # the slow one and two buffered
    finally:
        thread.join(20)
    assert not thread.is_alive()
    for h in [slow, *after]:
        job = h.info()
        assert job.state is JobState.SUCCEEDED and job.attempt == 1, job
    assert runs.count("slow") == 1 and runs[-2:] == ["q100", "q101"]


def test_slow_jobs_are_not_prefetched(app: conveyor.App) -> None:
    """Jobs that take longer than a few milliseconds are never claimed ahead of a free
    slot, however deep the queue: another worker may be idle and could run them."""
    peak_held = 0

    @app.task(name="tenth")
    async def tenth() -> None:
        nonlocal peak_held
        await asyncio.sleep(0.02)
        # Running in the store = started here plus claimed ahead (prefetched).
        backend = await app.backend()
        stats = await backend.stats()
        peak_held = max(peak_held, sum(s.running for s in stats if s.queue == "default"))

    app.enqueue_many([tenth.s() for _ in range(15)])
    run(app, concurrency=1, prefetch=5)
    assert peak_held == 1
