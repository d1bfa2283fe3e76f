"""The plain enqueue path (a call without options): no ``Signature`` or ``EnqueueOptions``
is built for it, and every check of the general path still applies, before any I/O."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import app as app_module
from conveyor import serialize
from conveyor.backends.base import NewJob
from conveyor.serialize import PayloadTooLarge
from conveyor.workflow import MARKER


class Captured(conveyor.App):
    """An app whose inserts are captured instead of stored (nothing is connected)."""

    def __init__(self, **defaults: Any) -> None:
        super().__init__("redis://127.0.0.1:1/0", **defaults)
        self.inserted: list[NewJob] = []

    def _insert_blocking(self, new_jobs: list[NewJob]) -> list[conveyor.JobHandle]:
        self.inserted += new_jobs
        return self._handles(job.id for job in new_jobs)


@pytest.fixture
def app() -> Captured:
    return Captured(priority=4, result_ttl=60.0)


def _no_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the plain path built a Signature")

    monkeypatch.setattr(app_module, "Signature", refuse)
    monkeypatch.setattr(conveyor.Task, "s", refuse)


def test_plain_calls_build_no_signature(app: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(name="t", queue="q1", max_attempts=2)
    def t(x: int, y: int = 0) -> None: ...

    _no_signatures(monkeypatch)
    t.enqueue(1, y=2)
    app.enqueue("t", [3], {"y": 4}, tenant=None, priority=None)  # None: the defaults
    app.enqueue("elsewhere", (5,))
    app.enqueue_many([{"task": "t", "args": [6]}, {"task": "elsewhere"}])
    got = [
        (j.task, j.queue, j.priority, j.max_attempts, j.args_json, j.kwargs_json)
        for j in app.inserted
    ]
    assert got == [
        ("t", "q1", 4, 2, "[1]", '{"y":2}'),
        ("t", "q1", 4, 2, "[3]", '{"y":4}'),
        ("elsewhere", "default", 4, 3, "[5]", "{}"),
        ("t", "q1", 4, 2, "[6]", "{}"),
        ("elsewhere", "default", 4, 3, "[]", "{}"),
    ]
    assert all(j.tenant is None and j.result_ttl == 60.0 for j in app.inserted)
    assert len({j.id for j in app.inserted}) == 5


def test_plain_calls_are_validated_like_any_other(app: Captured) -> None:
    @app.task(name="t")
    def t(*args: Any) -> None: ...

    with pytest.raises(TypeError, match="unknown option"):
        app.enqueue("t", tennant=None)  # a misspelt option is refused even as None
    with pytest.raises(TypeError, match="unknown option"):
        app.enqueue_many([{"task": "t", "tennant": None}])
    with pytest.raises(TypeError, match="args must be a list"):
        app.enqueue("t", args="abc")
    with pytest.raises(TypeError, match="args is not JSON-serializable"):
        t.enqueue(object())
    with pytest.raises(TypeError, match="kwargs is not JSON-serializable"):
        app.enqueue("t", [], {"x": {1}})
    with pytest.raises(PayloadTooLarge):
        t.enqueue("x" * (2 * 1024 * 1024))
    with pytest.raises(ValueError, match="reserved"):
        t.enqueue({"$conveyor": "results"})
    with pytest.raises(ValueError, match="task name"):
        app.enqueue("")
    with pytest.raises(ValueError, match="task name"):
        app.enqueue_many([{"task": ""}])
    assert app.inserted == []  # nothing reached the store


def test_options_that_are_set_still_take_the_general_path(app: Captured) -> None:
    app.enqueue("t", tenant="org-1", priority=None)
    app.enqueue_many([{"task": "t", "args": [1], "priority": 0}])
    assert [(j.tenant, j.priority) for j in app.inserted] == [("org-1", 4), (None, 0)]


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="args is not JSON-serializable"):
        serialize.encode_arguments([loop], {})


def test_a_batch_keeps_item_order_in_its_ids_and_each_signature_s_own_id(app: Captured) -> None:
    @app.task(name="t")
    def t(*args: Any) -> None: ...

    planned = dataclasses.replace(t.s(9), job_id="00000000-0000-7000-8000-000000000001")
    items: list[Any] = [{"task": "t", "args": [i]} for i in range(5)]
    items += [t.s(5), t.options(priority=1).s(6), planned, {"task": "t", "args": [7]}]
    app.enqueue_many(iter(items))  # any iterable
    rows = app.inserted
    assert [r.args_json for r in rows] == [f"[{i}]" for i in range(7)] + ["[9]", "[7]"]
    assert rows[7].id == planned.job_id
    fresh = [r.id for i, r in enumerate(rows) if i != 7]
    assert fresh == sorted(fresh) and len(set(fresh)) == 8  # FIFO in item order


def test_a_batch_with_one_bad_item_stores_nothing(app: Captured) -> None:
    loop: list[Any] = []
    loop.append(loop)
    good = {"task": "t", "args": [1]}
    for bad, error in [
        ({"task": "t", "args": [loop]}, "args is not JSON-serializable"),
        ({"task": "t", "args": [float("nan")]}, "args is not JSON-serializable"),
        ({"task": "t", "kwargs": {"x": object()}}, "kwargs is not JSON-serializable"),
    ]:
        with pytest.raises(TypeError, match=error):
            app.enqueue_many([good, bad, good])
    # The batch's encoder is still sound after a failure: a value seen in a refused
    # item is not taken for a circular reference in the next batch.
    shared = [1, 2]
    app.enqueue_many([{"task": "t", "args": [shared]}, {"task": "t", "args": [shared]}])
    assert [r.args_json for r in app.inserted] == ["[[1,2]]", "[[1,2]]"]


def test_the_batch_encoder_writes_what_the_single_call_encoder_writes() -> None:
    encode = serialize.batch_encoder()
    for value in [["é\u2028", 1.5, -0.0, 10**30, None, True], {"a": [{"b": '"\\'}]}, []]:
        assert encode(value) == serialize.dumps(value)


def test_plain_call_builds_the_same_row_as_the_general_path(app: Captured) -> None:
    """The plain path builds its NewJob positionally (cheaper than by keyword): every
    field must land where the general path, which names them, puts it."""

    @app.task(name="t", queue="q1", max_attempts=2, timeout=9.5, priority=1)
    def t(x: int, y: int = 0) -> None: ...

    t.enqueue(1, y=2)
    t.options(priority=1).enqueue(1, y=2)  # an option (the default's value): the general path
    plain, general = app.inserted
    assert dataclasses.replace(plain, id=general.id) == general


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_ODD = st.sampled_from([{MARKER: "results"}, {1: "key"}, b"bytes", object(), 2**80, [b"x"]])
_ITEMS = st.fixed_dictionaries(
    {"task": st.sampled_from(["t", "t", "t", "elsewhere", "", 5])},
    optional={
        "args": st.lists(_ODD | _VALUES, max_size=3) | st.tuples(_VALUES) | st.just("ab"),
        "kwargs": st.none() | st.just({}) | st.dictionaries(st.text(max_size=3), _VALUES),
    },
)


def _outcome(build: Any) -> Any:
    try:
        return [dataclasses.replace(row, id="") for row in build()]
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(items=st.lists(_ITEMS, max_size=6), max_payload=st.sampled_from([40, 1024 * 1024]))
# Each way off the quick path, after an item of the same task that took the checked one.
@example(items=[{"task": "t"}, {"task": "t", "args": [{MARKER: "results"}]}], max_payload=999)
@example(items=[{"task": "t"}, {"task": "t", "args": ({MARKER: "results"},)}], max_payload=999)
@example(items=[{"task": "t"}, {"task": "t", "args": [[b"x"]]}], max_payload=999)
@example(items=[{"task": "t"}, {"task": "t", "kwargs": {"a": 1}}], max_payload=999)
@example(items=[{"task": "t"}, {"task": "t", "args": _deep(300)}], max_payload=9999)
@example(items=[{"task": "t"}, {"task": "t", "args": ["x" * 30]}], max_payload=99)  # fits
@example(items=[{"task": "t"}, {"task": "t", "args": ["x" * 120]}], max_payload=99)  # not
def test_a_batchs_quick_path_stores_and_refuses_what_the_checked_path_does(
    items: list[dict[str, Any]], max_payload: int
) -> None:
    """enqueue_many encodes the commonest item (a list of plain arguments, no keyword
    arguments, of a task met before in the batch) without its checks one by one: the
    rows, and the error for a bad item, must be those of the checked path, item by item."""
    app = Captured(max_payload=max_payload)

    @app.task(name="t", queue="q1", max_attempts=2, timeout=9.5, priority=1)
    def t(*args: Any, **kwargs: Any) -> None: ...

    def checked() -> list[NewJob]:
        return [
            app._plain_call(
                item["task"], app_module._args(item.get("args", ())), item.get("kwargs")
            )
            for item in items
        ]

    assert _outcome(lambda: app._batch_jobs(items)) == _outcome(checked)
