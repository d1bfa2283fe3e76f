from __future__ import annotations

import math

import pytest

from conveyor.serialize import dumps, encode_arguments, loads


def test_roundtrip() -> None:
    value = {"a": [1, 2.5, "x", None, True], "ü": {"nested": []}}
    assert loads(dumps(value)) == value


@pytest.mark.parametrize("bad", [object(), {1, 2}, b"bytes", math.nan, math.inf])
def test_not_json_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_arguments([bad], {})


def test_args_must_be_a_sequence() -> None:
    with pytest.raises(TypeError, match="args must be a list"):
        encode_arguments("abc", {})
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        encode_arguments([], [("a", 1)])


def test_payload_over_the_limit_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="over the limit of 1000 bytes"):
        encode_arguments(["x" * 2000], {}, max_payload=1000)


def test_deeply_nested_is_refused_not_crashing() -> None:
    deep: list[object] = []
    cur = deep
    for _ in range(100_000):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_arguments(deep, {})


def test_payload_limit_counts_utf8_bytes_not_characters() -> None:
    encode_arguments(["é" * 490], {}, max_payload=1000)  # 980 bytes of text + quotes
    with pytest.raises(ValueError, match="over the limit of 1000 bytes"):
        encode_arguments(["é" * 600], {}, max_payload=1000)  # 600 characters, 1200 bytes
