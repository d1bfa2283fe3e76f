"""How the Lua scripts are assembled and loaded: as scripts, each gets the ``_lib.lua``
helpers it uses, and those only (Redis runs the whole script on every call, definitions
included); on Redis 7, all are functions of one library, loaded again when the server
lost it, and a server without functions runs the scripts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import Any

import pytest

import conveyor
import redis
from conveyor.backends.redis._scripts import (
    FunctionScript,
    Library,
    Scripts,
    _chunks,
    _needed,
    _source,
    script_source,
)
from conveyor.backends.redis.backend import RedisBackend
from tests.redis.conftest import StartRedis
from tests.redis.jobs import job
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


def test_the_library_registers_every_script_as_a_function() -> None:
    require_service("Redis", REDIS_URL)
    library = Library.build(NAMES)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.function_load(library.source, replace=True)
        (listed,) = client.function_list(library=library.name)
        entry = dict(zip(listed[::2], listed[1::2], strict=True))  # RESP2: flat pairs
        functions = {}
        for flat in entry["functions"]:
            function = dict(zip(flat[::2], flat[1::2], strict=True))
            functions[function["name"]] = function["flags"]
        assert set(functions) == {library.function(n) for n in NAMES}
        assert functions[library.function("stats")] == ["no-writes"]
        assert functions[library.function("enqueue")] == []
    finally:
        client.close()
    # Another source, another library: versions sharing a server do not collide.
    assert Library.build(NAMES[:-1]).name != library.name


@contextlib.asynccontextmanager
async def clients(url: str) -> AsyncIterator[tuple[Any, RedisBackend, redis.Redis]]:
    """(a sync enqueue of a no-op task, an open backend, an admin client) on ``url``."""
    app = conveyor.App(url)

    @app.task(name="t.noop")
    def noop() -> None: ...

    backend = RedisBackend(url)
    await backend.open()
    admin = redis.Redis.from_url(url)
    try:
        yield noop.enqueue, backend, admin
    finally:
        admin.close()
        await backend.close()
        app.close()


async def test_a_server_that_lost_the_library_gets_it_again(private_redis: StartRedis) -> None:
    """A restarted server without persistence (here: FUNCTION FLUSH) answers "function
    not found": the async calls, the worker's claim path and the sync enqueue load the
    library again and carry on."""
    async with clients(private_redis([]).url) as (enqueue, backend, admin):
        assert isinstance(backend._s.enqueue, FunctionScript)
        enqueue()  # the sync path is open, with its function
        for _ in range(2):
            admin.function_flush()
            enqueue()
            admin.function_flush()
            await backend.enqueue([job()])
            admin.function_flush()
            _, claimed = await backend.finish_and_claim([], ["default"], 10, worker="w", lease=30)
            assert claimed
        admin.function_flush()
        assert sum(s.running for s in await backend.stats()) == 5  # a read-only function


async def test_a_server_without_functions_runs_the_scripts(private_redis: StartRedis) -> None:
    """Redis 6.2 has no FUNCTION (nor do servers whose ACL denies it): scripts by
    EVALSHA, on the async and the sync path alike."""
    server = private_redis(["--rename-command", "FUNCTION", ""])
    async with clients(server.url) as (enqueue, backend, admin):
        assert not isinstance(backend._s.enqueue, FunctionScript)
        handle = enqueue()
        await backend.enqueue([job()])
        _, claimed = await backend.finish_and_claim([], ["default"], 10, worker="w", lease=30)
        assert len(claimed) == 2 and handle.id in {c.id for c in claimed}
        assert admin.info("commandstats").get("cmdstat_fcall") is None
        admin.script_flush()  # NOSCRIPT: loaded again
        enqueue()
        await backend.enqueue([job()])
