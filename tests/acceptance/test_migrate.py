"""``conveyor migrate``: creates the schema once, then reports it up to date."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import Conveyor


def test_migrate_creates_the_schema_then_is_a_no_op(cv: Conveyor) -> None:
    first = cv.run("migrate")
    assert first.stdout.strip() in ("schema is up to date", "applied migration(s) 1")
    assert Path(cv.url.removeprefix("sqlite:///")).exists()
    assert cv.run("migrate").stdout.strip() == "schema is up to date"
    assert cv.json("stats") == []  # an empty, usable store


def test_migrate_with_a_bad_url_is_a_clear_error(cv: Conveyor) -> None:
    done = cv.run("--url", "mysql://x/y", "migrate", check=False)
    assert done.returncode == 2
    assert "accepted URLs" in done.stderr and "Traceback" not in done.stderr
