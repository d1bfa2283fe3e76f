"""``conveyor.Sandbox``: validated, frozen, and attached to a task by ``app.task``."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor.sandbox import BASE_ENV


def test_defaults_are_limited() -> None:
    sandbox = conveyor.Sandbox()
    assert sandbox.cpu_seconds and sandbox.memory_mb and sandbox.wall_seconds
    assert sandbox.max_processes and sandbox.network is False
    assert sandbox.retry_on_limit is False


@pytest.mark.parametrize(
    "options",
    [
        {"cpu_seconds": 0},
        {"cpu_seconds": 1.5},
        {"cpu_seconds": True},
        {"memory_mb": -1},
        {"max_processes": 0},
        {"wall_seconds": 0},
        {"wall_seconds": float("inf")},
        {"wall_seconds": "10"},
        {"env": {"A=B": "x"}},
        {"env": {"": "x"}},
        {"env": {"A": 1}},
        {"env": {"A": "nul\0"}},
    ],
)
def test_bad_values_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Sandbox"):
        conveyor.Sandbox(**options)


@pytest.mark.parametrize(
    "options", [{"network": "no"}, {"retry_on_limit": 1}, {"env": [("A", "b")]}]
)
def test_wrong_types_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="Sandbox"):
        conveyor.Sandbox(**options)


def test_none_means_no_limit_of_that_kind() -> None:
    sandbox = conveyor.Sandbox(
        cpu_seconds=None, memory_mb=None, wall_seconds=None, max_processes=None
    )
    assert sandbox.cpu_seconds is None and sandbox.wall_seconds is None


def test_it_is_frozen_and_its_env_cannot_change_later() -> None:
    given = {"TOKEN": "abc"}
    sandbox = conveyor.Sandbox(env=given)
    given["TOKEN"] = "changed"
    assert sandbox.env["TOKEN"] == "abc"
    with pytest.raises(TypeError):
        sandbox.env["TOKEN"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        sandbox.cpu_seconds = 5  # type: ignore[misc]


def test_environment_is_the_base_plus_env() -> None:
    assert conveyor.Sandbox().environment() == dict(BASE_ENV)
    env = conveyor.Sandbox(env={"PATH": "/opt/bin", "X": "1"}).environment()
    assert env == {"PATH": "/opt/bin", "LANG": "C.UTF-8", "X": "1"}


def test_app_task_attaches_the_sandbox(tmp_path: Any) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'c.db'}")
    sandbox = conveyor.Sandbox(cpu_seconds=5)

    @app.task(name="boxed", sandbox=sandbox)
    def boxed() -> None: ...

    @app.task
    def plain() -> None: ...

    assert boxed.sandbox is sandbox and app.tasks["boxed"].sandbox is sandbox
    assert plain.sandbox is None
    with pytest.raises(TypeError, match=r"conveyor\.Sandbox"):
        app.task(name="bad", sandbox={"cpu_seconds": 1})(lambda: None)  # type: ignore[call-overload]
