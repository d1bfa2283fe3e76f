from __future__ import annotations

import math
import sys

import pytest

from conveyor.serialize import MAX_DEPTH, TooDeep, dumps, encode_arguments, loads, too_deep


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


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_roundtrips_and_one_more_level_is_refused() -> None:
    assert loads(dumps(_nested(MAX_DEPTH))) == _nested(MAX_DEPTH)
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_DEPTH} levels"):
        encode_arguments([_nested(MAX_DEPTH)], {})  # the args list is one more level
    with pytest.raises(TooDeep):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


def test_a_forged_deep_record_is_refused_before_the_decoder_recurses() -> None:
    # Unterminated, as a forged record can be: the decoder would recurse until the
    # interpreter's limit (RecursionError) before it found the text invalid.
    for text in ("[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(TooDeep):
            loads(text)
    # Refused well clear of the stack's end: decoding runs with 300 frames to spare.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(MAX_DEPTH + 300)
    try:
        with pytest.raises(TooDeep):
            loads("[" * 100_000)
    finally:
        sys.setrecursionlimit(limit)


def test_brackets_inside_strings_do_not_count_towards_the_depth() -> None:
    text = dumps(["[" * 1000, '\\"[{' * 500, {"k[": "]" * 1000}])
    assert not too_deep(text)
    assert loads(text)[0] == "[" * 1000
    # Many brackets side by side are wide, not deep.
    assert not too_deep(dumps([[i] for i in range(5000)]))
