"""How the Lua scripts are assembled: each gets the ``_lib.lua`` helpers it uses, and
those only (Redis runs the whole script on every call, definitions included)."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

import redis
from conveyor.backends.redis._scripts import Scripts, _chunks, _needed, _source, script_source
from tests.services import REDIS_URL, require_service

NAMES = [f.name for f in fields(Scripts)]


def defined(source: str) -> list[str]:
    """The names a script defines at its top level, in order."""
    return re.findall(r"^(?:local\s+(?:function\s+)?)?([A-Za-z_]\w*)\s*(?:\(|=|$)", source, re.M)


def test_every_helper_of_the_library_is_found() -> None:
    names = [name for name, _ in _chunks(_source("_lib"))]
    for helper in ("int_text", "fmt", "clock", "make_ready", "promote_queue", "wake", "outbox"):
        assert helper in names
    # The forward declaration and its assignment are both kept, in order.
    assert names.count("settle_dependents") == 2
    assert "".join(text + "\n" for _, text in _chunks(_source("_lib"))).count("local function") == (
        _source("_lib").count("\nlocal function")
    )


def test_a_script_gets_the_helpers_it_uses_and_what_they_use() -> None:
    probe = script_source("probe")
    assert {"clock", "any_ready", "fmt", "int_text"} <= set(defined(probe))
    for unused in ("make_ready", "promote_queue", "settle_dependents", "outbox"):
        assert unused not in defined(probe)
    enqueue = defined(script_source("enqueue"))
    # Used by enqueue.lua directly (lane_key) and through link_dependencies.
    assert {"lane_key", "len_text", "link_dependencies", "settle_dependents"} <= set(enqueue)
    assert "promote_queue" not in enqueue and "count_many" not in enqueue


def test_a_name_in_a_comment_brings_no_helper() -> None:
    chunks = _chunks(_source("_lib"))
    assert _needed(chunks, "-- make_ready and promote_queue\nreturn 1") == set()
    assert "make_ready" in _needed(chunks, "make_ready(G, QP, id, '', 't', '5', 0)")


@pytest.mark.parametrize("name", NAMES)
def test_every_script_compiles_and_uses_no_undefined_helper(name: str) -> None:
    """A helper a script calls but did not get would be a global: Redis refuses those
    when the line runs, so look for calls of library names the script lacks."""
    source = script_source(name)
    have = set(defined(source))
    library = {n for n, _ in _chunks(_source("_lib"))}
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("--"))
    called = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", code))
    assert called & library <= have
    require_service("Redis", REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.script_load(source)  # compiles (a syntax error would raise)
    finally:
        client.close()
