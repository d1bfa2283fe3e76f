"""50 producers enqueue with one dedup key at the same moment: one job, run once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.chaos.chaos_tasks import make_app
from tests.chaos.enqueue_once import connect
from tests.chaos.harness import Cluster

PRODUCERS = 50


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unique_for", [None, 60.0], ids=["active", "window"])
def test_concurrent_enqueues_with_one_key_from_threads_and_processes_make_one_job(
    cluster: Cluster, tmp_path: Path, unique_for: float | None
) -> None:
    window = {} if unique_for is None else {"unique_for": unique_for}
    key = "the-one"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.enqueue_once",
                cluster.url,
                str(cluster.history),
                key,
                str(go),
                *([] if unique_for is None else [str(unique_for)]),
            ],
            env=cluster.env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(PRODUCERS // 2)
    ]
    # Threads each with their own App: one App's sync calls share one loop, and would
    # queue behind each other instead of racing.
    apps = [make_app(cluster.url, cluster.history) for _ in range(PRODUCERS - len(procs))]
    thread_ids: list[str] = []
    barrier = threading.Barrier(len(apps) + 1, timeout=60)

    def produce(app_index: int) -> None:
        app = apps[app_index]
        connect(app)  # connected before the race
        barrier.wait()
        job_id = app.enqueue("chaos.work", args=[0], key=key, **window).id
        cluster.recorder.record("enqueued", id=job_id, key=key)
        thread_ids.append(job_id)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(len(apps))]
    try:
        for t in threads:
            t.start()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()  # the processes go...
        barrier.wait()  # ...and so do the threads
        for t in threads:
            t.join(timeout=60)
        process_ids = [p.communicate(timeout=60)[0].split()[-1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for app in apps:
            app.close()

    ids = set(thread_ids) | set(process_ids)
    assert len(thread_ids) + len(process_ids) == PRODUCERS
    assert len(ids) == 1, ids
    assert len(cluster.store()) == 1
    cluster.drain("-c", "2", "--lease", "2", timeout=30)
    report = cluster.check()
    assert report.ok and report.executions == 1, report.details()
