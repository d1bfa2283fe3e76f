"""Fixtures of the fault suite.

Every scenario runs once per engine that ships (``available_engines()``, as in the
contract suite) and gets a private store from ``fresh_store``. ``CONVEYOR_CHAOS_ENGINES``
(comma-separated) narrows the list, e.g. to run only SQLite while a backend is being
written. ``CONVEYOR_CHAOS=full`` (``make chaos``) runs the long forms: more iterations,
a longer soak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Cluster
from tests.contract.conftest import ENGINES, fresh_store

_only = [e for e in os.environ.get("CONVEYOR_CHAOS_ENGINES", "").split(",") if e]
CHAOS_ENGINES = [e for e in ENGINES if not _only or e in _only]
FULL = os.environ.get("CONVEYOR_CHAOS", "") == "full"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(params=CHAOS_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(engine: str, tmp_path: Path) -> Iterator[str]:
    with fresh_store(engine, tmp_path) as url:
        yield url


@pytest.fixture
def cluster(engine: str, store_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, store_url, engine)
    try:
        yield c
    finally:
        c.cleanup()
