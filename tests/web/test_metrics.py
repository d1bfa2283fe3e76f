"""/metrics counts every event exactly: real workers (in-process and in subprocesses)
count what they do, write it to the store, and a scrape over HTTP sums it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import metrics
from conveyor.app import App
from conveyor.backends import create_backend
from conveyor.metrics import Counts
from conveyor.worker import Worker
from tests.contract.conftest import ENGINES, FakeClock, fresh_store
from tests.web.conftest import Running
from tests.web.metrics_tasks import make_app
from tests.web.test_external import handed_off, wait_for_state

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(served: Running) -> Samples:
    response = served.client(served.admin).get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when the series is absent, as a counter that never counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def added(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def tasks_app(served_any: Running) -> Iterator[App]:
    app = make_app(served_any.store_url)
    yield app
    app.close()


def burst(app: App, maintenance_interval: float = 1.0, name: str | None = None) -> None:
    Worker(
        app,
        name=name,
        concurrency=8,
        poll_interval=0.05,
        maintenance_interval=maintenance_interval,
        handle_signals=False,
    ).run(burst=True)


def records(url: str) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        backend = create_backend(url)
        await backend.open()
        try:
            return await backend.list_records(metrics.KIND)
        finally:
            await backend.close()

    return asyncio.run(read())


def test_every_outcome_and_attempt_is_counted(served_any: Running, tasks_app: App) -> None:
    served = served_any
    for i in range(200):
        tasks_app.enqueue("ok", tenant="org-7" if i % 2 else "org-8")
    for _ in range(50):
        tasks_app.enqueue("second-time", tenant="org-7")  # a retry, then success
        tasks_app.enqueue("hopeless", tenant="org-7")  # a retry, then dead
    burst(tasks_app)
    m = scrape(served)

    def attempts(task: str, outcome: str) -> float:
        return value(m, "conveyor_attempts_total", queue="default", task=task, outcome=outcome)

    assert attempts("ok", "succeeded") == 200
    assert attempts("second-time", "retry") == 50
    assert attempts("second-time", "succeeded") == 50
    assert attempts("hopeless", "retry") == 50
    assert attempts("hopeless", "dead") == 50
    assert added(m, "conveyor_attempts_total") == 400

    def finished(tenant: str, state: str) -> float:
        return value(m, "conveyor_jobs_finished_total", queue="default", tenant=tenant, state=state)

    assert finished("org-7", "succeeded") == 150
    assert finished("org-8", "succeeded") == 100
    assert finished("org-7", "dead") == 50
    assert finished("org-8", "dead") == 0

    # Every started attempt is in the wait histogram once, and in the run histogram once.
    wait = "conveyor_job_wait_seconds_count"
    assert value(m, wait, queue="default", attempt="first") == 300
    assert value(m, wait, queue="default", attempt="retry") == 100
    assert added(m, "conveyor_job_run_seconds_count") == 400
    assert value(m, "conveyor_job_run_seconds_count", queue="default", task="hopeless") == 100
    inf = value(m, "conveyor_job_run_seconds_bucket", queue="default", task="ok", le="+Inf")
    assert inf == 200
    assert value(m, "conveyor_job_wait_seconds_sum", queue="default", attempt="first") > 0
    # The store agrees.
    assert value(m, "conveyor_jobs", queue="default", tenant="org-7", state="dead") == 50


def test_two_worker_processes_add_up(served_any: Running, tasks_app: App) -> None:
    served = served_any
    code = (
        "import sys\n"
        "from conveyor.worker import Worker\n"
        "from tests.web.metrics_tasks import make_app\n"
        "Worker(make_app(sys.argv[1]), name=sys.argv[2], concurrency=2, poll_interval=0.05)"
        ".run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, served.store_url, name], cwd=ROOT, env=env)
        for name in ("worker-a", "worker-b")
    ]
    try:
        admin = served.client(served.admin)
        deadline = time.monotonic() + 30
        while 'conveyor_workers{status="alive"} 2.0' not in admin.get("/metrics").text:
            assert time.monotonic() < deadline, "the two workers did not start"
            assert all(p.poll() is None for p in procs)
            time.sleep(0.1)
        for _ in range(80):
            tasks_app.enqueue("nap", [0.02])
        while added(scrape(served), "conveyor_jobs", state="succeeded") < 80:
            assert time.monotonic() < deadline + 60, "the jobs did not finish"
            time.sleep(0.1)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # graceful: each writes its final counts
        codes = [p.wait(30) for p in procs]
    assert codes == [0, 0]
    by_worker = {key: metrics.Counts.from_json(text)[0] for key, text in records(served.store_url)}
    assert sorted(k.split("#")[0] for k in by_worker) == ["worker-a", "worker-b"]
    each = [c.counter("attempts", ("default", "nap", "succeeded")) for c in by_worker.values()]
    assert all(n > 0 for n in each) and sum(each) == 80
    m = scrape(served)
    assert (
        value(m, "conveyor_attempts_total", queue="default", task="nap", outcome="succeeded") == 80
    )
    assert value(m, "conveyor_job_wait_seconds_count", queue="default", attempt="first") == 80


def test_a_new_worker_does_not_lower_the_counters(served_any: Running, tasks_app: App) -> None:
    served = served_any
    for _ in range(10):
        tasks_app.enqueue("ok")
    burst(tasks_app, name="steady")
    labels = {"queue": "default", "task": "ok", "outcome": "succeeded"}
    assert value(scrape(served), "conveyor_attempts_total", **labels) == 10
    for _ in range(5):
        tasks_app.enqueue("ok")
    # Restarted under the same name: it writes a record of its own, the first one stays.
    burst(tasks_app, name="steady")
    assert value(scrape(served), "conveyor_attempts_total", **labels) == 15
    assert len(records(served.store_url)) == 2


def test_lease_expiries_are_counted(served_any: Running, tasks_app: App) -> None:
    served = served_any
    tasks_app.enqueue("ok")  # retried after the reaper takes it back
    tasks_app.enqueue("ok", max_attempts=1)  # dead when the reaper takes it back

    async def abandon() -> None:
        """A worker claims both jobs and vanishes without a word."""
        backend = create_backend(served.store_url)
        await backend.open()
        try:
            claimed = await backend.claim(["default"], 2, worker="ghost", lease=0.3)
            assert len(claimed) == 2
        finally:
            await backend.close()

    asyncio.run(abandon())
    burst(tasks_app, maintenance_interval=0.1)
    m = scrape(served)
    assert value(m, "conveyor_lease_expiries_total", outcome="requeued") == 1
    assert value(m, "conveyor_lease_expiries_total", outcome="dead") == 1
    # The reaped attempts were the ghost's: this worker ran only the requeued one.
    assert added(m, "conveyor_attempts_total") == 1
    assert value(m, "conveyor_job_wait_seconds_count", queue="default", attempt="retry") == 1


def test_external_completions_and_timeouts_are_counted(served: Running, tmp_path: Path) -> None:
    w = Worker(
        served.app,
        concurrency=2,
        poll_interval=0.05,
        maintenance_interval=0.1,
        handle_signals=False,
    )
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        paid, token = handed_off(served, tmp_path / "paid")
        declined, token2 = handed_off(served, tmp_path / "declined")
        retried, token3 = handed_off(served, tmp_path / "retried")  # max_attempts=1: dead
        outside = served.client()
        assert outside.post(f"/jobs/{paid}/complete", json={"token": token}).status_code == 200
        body = {"token": token2, "retry": False}
        assert outside.post(f"/jobs/{declined}/fail", json=body).status_code == 200
        answer = outside.post(f"/jobs/{retried}/fail", json={"token": token3, "retry": True})
        assert answer.json()["state"] == "dead"
        # A refused completion counts nothing.
        assert outside.post(f"/jobs/{paid}/complete", json={"token": token}).status_code == 409
        # The server counts in memory: the scrape sees its completions at once.
        m = scrape(served)
        labels = {"queue": "default", "task": "payments.charge"}
        assert value(m, "conveyor_external_completions_total", **labels, outcome="succeeded") == 1
        assert value(m, "conveyor_external_completions_total", **labels, outcome="dead") == 2
        finished = "conveyor_jobs_finished_total"
        assert value(m, finished, queue="default", tenant="org-7", state="succeeded") == 1
        assert value(m, finished, queue="default", tenant="org-7", state="dead") == 2

        late = handed_off(served, tmp_path / "late", deadline=0.3)[0]
        wait_for_state(served, late, "dead")  # timed out, no attempts left
    finally:
        w.stop()
        thread.join(30)
    m = scrape(served)  # the worker wrote its final counts when it stopped
    assert value(m, "conveyor_attempts_total", **labels, outcome="parked") == 4
    assert value(m, "conveyor_external_timeouts_total", outcome="dead") == 1
    assert added(m, "conveyor_external_timeouts_total") == 1


def test_a_killed_worker_keeps_what_it_wrote(served: Running) -> None:
    """SIGKILL: the counts the worker wrote (every 5 s) stay; only later ones are lost."""
    app = make_app(served.store_url)
    code = (
        "import sys\n"
        "from conveyor.worker import Worker\n"
        "from tests.web.metrics_tasks import make_app\n"
        "Worker(make_app(sys.argv[1]), poll_interval=0.05).run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, served.store_url], cwd=ROOT, env=env)
    labels = {"queue": "default", "task": "ok", "outcome": "succeeded"}
    try:
        for _ in range(20):
            app.enqueue("ok")
        deadline = time.monotonic() + 30
        while value(scrape(served), "conveyor_attempts_total", **labels) < 20:
            assert time.monotonic() < deadline, "the worker's counts never arrived"
            assert proc.poll() is None
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(15)
    assert value(scrape(served), "conveyor_attempts_total", **labels) == 20
    for _ in range(5):
        app.enqueue("ok")
    burst(app)
    assert value(scrape(served), "conveyor_attempts_total", **labels) == 25
    app.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_fold_stale_keeps_the_sums_and_deletes_old_records(engine: str, tmp_path: Path) -> None:
    with fresh_store(engine, tmp_path) as url:
        fold_on(url)


def fold_on(url: str) -> None:
    clock = FakeClock()
    week = 7 * 86400.0

    async def run() -> tuple[int, int, list[str], Counts, Counts]:
        backend = create_backend(url, clock=clock)
        await backend.open()
        try:
            old, new = Counts(), Counts()
            old.inc("attempts", ("q", "t", "succeeded"), 10)
            old.observe("job_wait_seconds", ("q", "first"), 0.1)
            new.inc("attempts", ("q", "t", "succeeded"), 1)
            await backend.put_record(metrics.KIND, "old", old.to_json(clock.now))
            clock.advance(3600)  # a live worker rewrites hourly: never folded this young
            assert await metrics.fold_stale(backend, "server-1", 60.0) == 0
            clock.advance(week + 1)
            await backend.put_record(metrics.KIND, "new", new.to_json(clock.now))
            before = metrics.total(await backend.list_records(metrics.KIND))
            first = await metrics.fold_stale(backend, "server-1", week)
            again = await metrics.fold_stale(backend, "server-1", week)
            listed = await backend.list_records(metrics.KIND)
            after = metrics.total(listed)
            return first, again, [k for k, _ in listed], before, after
        finally:
            await backend.close()

    first, again, keys, before, after = asyncio.run(run())
    assert (first, again) == (1, 0)
    assert keys == ["new", metrics.RETIRED_KEY]
    assert before.counter("attempts", ("q", "t", "succeeded")) == 11
    assert after.counter("attempts", ("q", "t", "succeeded")) == 11
    assert after.histograms["job_wait_seconds"][("q", "first")].count == 1


def test_thousands_of_jobs_a_second_are_all_counted(served: Running) -> None:
    """What the old sampler (the newest 500 finished jobs every 2 s) could not count."""
    app = make_app(served.store_url)
    n = 3000
    try:
        app.enqueue_many({"task": "ok", "tenant": f"t{i % 50}"} for i in range(n))
        burst(app)
    finally:
        app.close()
    m = scrape(served)
    assert value(m, "conveyor_attempts_total", queue="default", task="ok", outcome="succeeded") == n
    assert added(m, "conveyor_jobs_finished_total", state="succeeded") == n
    assert (
        value(m, "conveyor_jobs_finished_total", queue="default", tenant="t7", state="succeeded")
        == n / 50
    )
    assert value(m, "conveyor_job_wait_seconds_count", queue="default", attempt="first") == n
