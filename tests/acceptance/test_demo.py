"""``conveyor demo`` (what ``make demo`` runs) finishes, quickly, and shows fairness."""

from __future__ import annotations

import time

import pytest

from .conftest import Conveyor


@pytest.mark.timeout(120)
def test_demo_runs_to_completion_in_under_a_minute(cv: Conveyor) -> None:
    db = cv.path / "demo" / "demo.db"
    started = time.monotonic()
    done = cv.run("demo", "--db", str(db), timeout=90)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the demo took {elapsed:.0f} s"
    assert "Summary" in done.stdout and "Fair" in done.stdout

    rows = {s["tenant"]: s for s in cv.json("--url", f"sqlite:///{db}", "stats")}
    assert rows["acme"]["succeeded"] == 2000
    assert rows["globex"]["succeeded"] == rows["initech"]["succeeded"] == 7
    assert rows["ops"]["dead"] == 1
    assert sum(s["queued"] + s["running"] + s["retrying"] for s in rows.values()) == 0
