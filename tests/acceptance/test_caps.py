"""A task's ``concurrency`` cap holds across worker processes sharing one store."""

from __future__ import annotations

import pytest

from .conftest import Conveyor


@pytest.mark.timeout(90)
def test_capped_task_never_runs_above_its_cap_across_processes(cv: Conveyor) -> None:
    ids = cv.produce("capped", 12, seconds=0.4)
    # Three worker processes under two separate `conveyor worker` commands, one slot
    # each: the cap can only be reached by two processes at once, and only the shared
    # store keeps the third from going over it.
    first = cv.start_worker("-p", "2", "-c", "1", "--burst", "--lease", "5")
    second = cv.start_worker("-p", "1", "-c", "1", "--burst", "--lease", "5")
    assert first.wait(timeout=60) == 0, cv.worker_logs()
    assert second.wait(timeout=60) == 0, cv.worker_logs()

    assert {cv.job(i)["state"] for i in ids} == {"succeeded"}
    runs = [(float(start), float(end), pid) for start, end, pid in cv.executions("capped.log")]
    assert len(runs) == 12
    events = sorted([(start, 1) for start, _, _ in runs] + [(end, -1) for _, end, _ in runs])
    running = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        running += step
        peak = max(peak, running)
    assert peak <= 2, f"{peak} capped jobs ran at once"
    assert peak == 2, "the cap was never reached: the test proves nothing"
    assert len({pid for _, _, pid in runs}) >= 2
