"""Workflows through the real CLI: a batch that survives a killed worker, and a periodic
job that three workers enqueue exactly once per tick."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time

import pytest

from .conftest import Conveyor

WF_APP = "wf_app:app"
WF_MODULE = """
import os
import sys
import time
from pathlib import Path

import conveyor

app = conveyor.App()
HERE = Path(__file__).parent


def log(name, *fields):
    with open(HERE / name, "a") as f:
        f.write(" ".join(str(x) for x in fields) + "\\n")


@app.task(name="square_chunk", max_attempts=5)
def square_chunk(items):
    # The second half of the chunks waits for the test's go-ahead, so the worker is
    # surely killed while some chunks are done and others are in flight.
    deadline = time.monotonic() + 60
    while items[0] >= 500 and not (HERE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [x * x for x in items]


@app.task(name="merge_squares")
def merge_squares(results):
    job = conveyor.current_job()
    log("merge.log", "start", job.id, job.attempt, os.getpid())
    merged = [x for chunk in results for x in chunk]
    log("merge.log", "end", job.id, job.attempt, os.getpid())
    return merged


@app.periodic("* * * * * *", tz="UTC", name="heartbeat")
def heartbeat():
    log("ticks.log", conveyor.current_job().id)


if __name__ == "__main__" and sys.argv[1] == "map":
    batch = app.map(square_chunk, range(1000), chunk_size=50, then=merge_squares)
    print(batch.id)
"""


@pytest.fixture
def wf(cv: Conveyor) -> Conveyor:
    (cv.path / "wf_app.py").write_text(WF_MODULE)
    return cv


@pytest.mark.timeout(150)
def test_map_merges_exactly_once_in_order_while_a_worker_is_killed(wf: Conveyor) -> None:
    produced = subprocess.run(
        [sys.executable, "wf_app.py", "map"],
        cwd=wf.path,
        env=wf.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    batch_id = produced.stdout.strip()
    assert wf.job(batch_id)["state"] == "blocked"
    supervisor = wf.start_worker("-p", "2", "-c", "2", "--lease", "2", app=WF_APP)
    wf.worker_pids(supervisor, 2)

    def mid_flight() -> bool:
        counts = collections.Counter(j["state"] for j in wf.jobs("--task", "square_chunk"))
        return counts["succeeded"] == 10 and counts["running"] == 4

    wf.wait_for(mid_flight, timeout=60, what="some chunks done and some in flight")
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(timeout=10)
    assert wf.job(batch_id)["state"] == "blocked"
    (wf.path / "go").touch()

    wf.run("worker", WF_APP, "--burst", "-c", "4", "--lease", "2", timeout=90)
    merge = wf.job(batch_id)
    assert merge["state"] == "succeeded", merge
    assert merge["result"] == [x * x for x in range(1000)]
    chunks = wf.jobs("--task", "square_chunk")
    assert len(chunks) == 20 and {c["state"] for c in chunks} == {"succeeded"}
    taken_over = [c for c in chunks if c["attempt"] == 2]
    assert len(taken_over) == 4, "the four chunks in flight are taken over after the kill"
    assert all("worker lost" in c["errors"][0]["message"] for c in taken_over)
    runs = [line.split() for line in (wf.path / "merge.log").read_text().splitlines()]
    assert [r[0] for r in runs] == ["start", "end"]  # the merge ran once, to its end


@pytest.mark.timeout(90)
def test_three_workers_enqueue_each_every_second_tick_exactly_once(wf: Conveyor) -> None:
    listed = wf.run("periodic", WF_APP).stdout
    assert "heartbeat" in listed and "* * * * * *" in listed
    schedules = wf.json("periodic", WF_APP)
    assert schedules[0]["name"] == "heartbeat" and schedules[0]["next_run"]

    workers = [wf.start_worker("-p", "1", "-c", "2", app=WF_APP) for _ in range(3)]
    wf.wait_for(lambda: wf.jobs("--task", "heartbeat"), 30, "the first tick")
    time.sleep(10)  # ten seconds of ticks, however slowly the workers started
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(timeout=30) == 0

    jobs = wf.jobs("--task", "heartbeat")
    ticks = sorted(int(j["key"].rsplit(":", 1)[1]) for j in jobs)
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert len(ticks) >= 10, ticks
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "a tick was skipped"
    ran = (wf.path / "ticks.log").read_text().split()
    assert len(ran) == len(set(ran))
