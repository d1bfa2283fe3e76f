"""Bad input is refused at enqueue, with the reason, before anything is stored."""

from __future__ import annotations

from datetime import datetime

import pytest

import conveyor


@pytest.fixture
def app(tmp_path: object) -> conveyor.App:
    return conveyor.App(f"sqlite:///{tmp_path}/v.db")


def _task(app: conveyor.App) -> conveyor.Task[..., int]:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return add


def test_arguments_that_are_not_json(app: conveyor.App) -> None:
    add = _task(app)
    with pytest.raises(TypeError, match="args is not JSON-serializable"):
        add.enqueue(object(), 1)
    with pytest.raises(TypeError, match="kwargs is not JSON-serializable"):
        app.enqueue("add", [], {"x": {1, 2}})


@pytest.mark.parametrize("priority", [-1, 10, 1.5, "1", True, False])
def test_priority_out_of_range(app: conveyor.App, priority: object) -> None:
    with pytest.raises(ValueError, match="priority must be an integer from 0"):
        _task(app).options(priority=priority).enqueue(1, 2)


def test_negative_delay(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="delay must be >= 0"):
        _task(app).options(delay=-5).enqueue(1, 2)


def test_delay_and_at_together(app: conveyor.App) -> None:
    from datetime import UTC

    with pytest.raises(ValueError, match="either delay= or at="):
        _task(app).options(delay=1, at=datetime.now(UTC)).enqueue(1, 2)


def test_naive_datetime(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _task(app).options(at=datetime(2030, 1, 1)).enqueue(1, 2)


def test_payload_over_default_limit(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="over the limit of 1048576 bytes"):
        _task(app).enqueue("x" * (1024 * 1024 + 1), 1)


def test_unknown_option(app: conveyor.App) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        _task(app).options(tenat="typo")


def test_task_options_validated_at_registration(app: conveyor.App) -> None:
    with pytest.raises(ValueError, match="priority"):
        app.task(priority=11)(lambda: None)
    with pytest.raises(ValueError, match="concurrency"):
        app.task(name="c", concurrency=0)(lambda: None)


def test_duplicate_task_name(app: conveyor.App) -> None:
    _task(app)
    with pytest.raises(ValueError, match="already registered"):
        app.task(name="add")(lambda: None)


def test_bare_decorator_names_by_module_and_function(app: conveyor.App) -> None:
    @app.task
    def hello() -> str:
        return "hi"

    assert (
        hello.name == f"{__name__}.test_bare_decorator_names_by_module_and_function.<locals>.hello"
    )
    assert hello() == "hi"  # calling a task runs it here, like the function


def test_current_job_outside_a_task() -> None:
    with pytest.raises(RuntimeError, match="outside a running task"):
        conveyor.current_job()


def test_transactional_enqueue_needs_a_store_that_supports_it(app: conveyor.App) -> None:
    _task(app)
    with pytest.raises(ValueError, match="enqueue inside your transaction"):
        app.enqueue("add", [1, 2], connection=object())
    assert app.jobs() == []  # nothing was stored
