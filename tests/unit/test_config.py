from __future__ import annotations

import pytest

import conveyor
from conveyor.config import parse_url, resolve_url, sqlite_path
from conveyor.errors import BackendUnavailable


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("sqlite:///conveyor.db", "sqlite"),
        ("sqlite:////tmp/x.db", "sqlite"),
        ("postgresql://root@127.0.0.1/test", "postgresql"),
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://h/1", "redis"),
    ],
)
def test_accepted_urls(url: str, engine: str) -> None:
    assert parse_url(url) == engine


@pytest.mark.parametrize("url", ["mysql://x", "conveyor.db", "", "http://x", "sqlite:///"])
def test_invalid_urls_name_the_accepted_schemes(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///|SQLite URL"):
        conveyor.App(url)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///a/b.db") == "a/b.db"
    assert sqlite_path("sqlite:////abs/b.db?synchronous=full") == "/abs/b.db"
    with pytest.raises(ValueError, match="memory"):
        sqlite_path("sqlite:///:memory:")


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert conveyor.App().url == "sqlite:///from-env.db"
    monkeypatch.delenv("CONVEYOR_URL")
    assert resolve_url(None) == "sqlite:///conveyor.db"


async def test_an_engine_missing_from_the_installation_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor import backends

    monkeypatch.setitem(backends._ENGINES, "redis", ("conveyor.backends.absent", "X", "redis"))
    app = conveyor.App("redis://127.0.0.1:6379/0")
    with pytest.raises(BackendUnavailable, match="not available"):
        await app.backend()


def test_finished_jobs_are_kept_seven_days_by_default(tmp_path: object) -> None:
    # The retention the PostgreSQL issue asks for (purge keeps tables bounded).
    from conveyor.config import Defaults

    assert Defaults().result_ttl == 7 * 86400
    app = conveyor.App(f"sqlite:///{tmp_path}/x.db")
    assert app.defaults.result_ttl == 7 * 86400
