"""The Lua scripts, one per primitive, loaded as package resources.

Each ``<name>.lua`` file is prefixed with the ``_lib.lua`` helpers it uses and, where it
needs them, shared bodies (``_finish.lua``, ``_claim.lua``), and registered
with redis-py, which runs it by ``EVALSHA`` and loads it again (``SCRIPT LOAD``) after a
``NOSCRIPT`` reply, e.g. after the server restarted or was flushed. On a Redis Cluster
the script goes to the node owning the slot of its first key (always a key of the
store's slot), and redis-py sends that ``SCRIPT LOAD`` to every primary.

On one Redis server of version 7 or later, the same scripts run as **functions** of one
library instead (``FUNCTION LOAD``, ``FCALL``): the library defines the helpers once,
when it is loaded, where a script defines every helper it uses again on each call (a
single enqueue spent about 30,000 of its 216,000 instructions on that). The library's
name carries a digest of its source, so servers shared by several versions of Conveyor
hold one library per version. A server without functions (6.2, or one whose ACL denies
``FUNCTION``) and a Redis Cluster (whose every primary would need the library) keep
``EVALSHA``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Protocol

from redis.exceptions import OutOfMemoryError, ResponseError

_PACKAGE = "conveyor.backends.redis"


# Cached: the files do not change while a process runs, and every backend (and every
# sync producer's connection) opened builds the library from them: 2 ms a time.
@functools.cache
def _source(name: str) -> str:
    return resources.files(_PACKAGE).joinpath(f"{name}.lua").read_text(encoding="utf-8")


#: Scripts built on shared bodies beyond ``_lib.lua`` (which every script gets).
_INCLUDES = {
    "finish": ("_finish",),
    "claim": ("_claim",),
    "finish_claim": ("_finish", "_claim"),
}

#: A top-level definition in ``_lib.lua``: ``local function f(``, ``local X =``, the
#: forward declaration ``local f`` and its later ``f = function(``.
_DEFINITION = re.compile(r"^(?:local\s+(?:function\s+)?)?([A-Za-z_]\w*)\s*(?:\(|=|$)")
_NAME = re.compile(r"[A-Za-z_]\w*")
#: Lua's words that may start a line at column 0 without defining anything.
_KEYWORDS = {"do", "else", "elseif", "end", "for", "if", "repeat", "return", "until", "while"}


def _chunks(lib: str) -> list[tuple[str, str]]:
    """``_lib.lua`` cut into (defined name, text) at each top-level definition; each
    chunk carries the comment lines above its definition. The file's header (before
    the first definition) is left out: it is only comments."""
    chunks: list[tuple[str, str]] = []
    pending: list[str] = []  # comment lines waiting for the definition they describe
    for line in lib.splitlines():
        match = _DEFINITION.match(line) if line[:1].isalpha() else None
        if match is not None and match.group(1) not in _KEYWORDS:
            chunks.append((match.group(1), "\n".join([*pending, line])))
            pending = []
        elif chunks and not line.startswith("--"):
            name, text = chunks[-1]
            chunks[-1] = (name, f"{text}\n{line}")
        elif line.startswith("--"):
            pending.append(line)
    return chunks


def _needed(chunks: list[tuple[str, str]], body: str) -> set[str]:
    """The helpers ``body`` uses, and those they use in turn."""
    defined = {name for name, _ in chunks}
    texts: dict[str, list[str]] = {}
    for name, text in chunks:
        texts.setdefault(name, []).append(text)
    needed: set[str] = set()
    todo = [_code(body)]
    while todo:
        for name in set(_NAME.findall(todo.pop())) & defined - needed:
            needed.add(name)
            todo.extend(_code(text) for text in texts[name])
    return needed


def _code(text: str) -> str:
    """``text`` without its whole-line comments, where helper names appear in prose."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


@functools.cache
def script_source(name: str) -> str:
    """A script as sent to Redis: the shared helpers it uses, its includes, then
    ``<name>.lua``.

    Only the helpers a script uses are sent: Redis runs the whole script on every
    call, and defining all of ``_lib.lua``'s functions anew each time cost a single
    enqueue about 29,000 of its 231,000 instructions."""
    body = "\n".join(
        [*(_source(part) for part in _INCLUDES.get(name, ())), f"-- {name}.lua", _source(name)]
    )
    chunks = _chunks(_source("_lib"))
    needed = _needed(chunks, body)
    helpers = [text for defined, text in chunks if defined in needed]
    return "\n".join([*helpers, body])


#: Scripts that only read: their functions are flagged ``no-writes``, so that they run
#: while the server is out of memory (stats and listings are wanted most then), as
#: scripts that do not write do.
_READ_ONLY = ("stats", "query", "depth", "probe")


@dataclass(frozen=True)
class Library:
    """All scripts as one function library: (name, source)."""

    name: str
    source: str

    @classmethod
    def build(cls, names: list[str]) -> Library:
        parts = [_source(part) for part in ("_lib", "_finish", "_claim")]
        body = "\n".join(parts)
        digest = hashlib.sha1(
            "\0".join([body, *names, *(_source(n) for n in names)]).encode()
        ).hexdigest()[:12]
        name = f"conveyor_{digest}"
        for script in names:
            flags = "{ 'no-writes' }" if script in _READ_ONLY else "{}"
            # KEYS and ARGV as the callback's parameters: the body reads them as a script
            # does. INT_TEXT is a cache per call (see _lib.lua): emptied on entry.
            body += (
                f"\n-- {script}.lua\nredis.register_function{{ function_name = "
                f"'{name}_{script}', flags = {flags}, callback = function(KEYS, ARGV)\n"
                f"INT_TEXT = {{}}\n{_source(script)}\nend }}"
            )
        return cls(name, f"#!lua name={name}\n{body}\n")

    def function(self, script: str) -> str:
        return f"{self.name}_{script}"


def function_missing(exc: ResponseError) -> bool:
    """Is ``exc`` the server's answer to a call of a function it does not have (a
    restarted server without persistence, or ``FUNCTION FLUSH``)?"""
    return "function not found" in str(exc).lower()


def load_refused(exc: ResponseError) -> bool:
    """The server's refusal of ``FUNCTION LOAD``: False if it has the library already
    (the same digest: the same source), True where it cannot load it (before 7.0, an
    ACL that denies ``FUNCTION``, or a server out of memory, which refuses every write
    command: scripts then, so that what only reads still works); others are raised."""
    text = str(exc).lower()
    if "already exists" in text:
        return False
    if "unknown command" in text or "noperm" in text or isinstance(exc, OutOfMemoryError):
        return True
    raise exc


async def load_library(client: Any, library: Library) -> bool:
    """Load ``library`` unless the server has it; False where it cannot run functions."""
    try:
        await client.function_load(library.source)
    except ResponseError as exc:
        return not load_refused(exc)
    return True


class FunctionScript:
    """One script run as a function of the library: called like redis-py's
    ``AsyncScript`` (``await script(keys=..., args=...)``)."""

    def __init__(self, client: Any, library: Library, script: str) -> None:
        self.client = client
        self.library = library
        self.function = library.function(script)

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self.client.fcall(self.function, len(keys), *keys, *args)
        except ResponseError as exc:
            if not function_missing(exc):
                raise
        await load_library(self.client, self.library)
        return await self.client.fcall(self.function, len(keys), *keys, *args)


class Script(Protocol):
    """A script by ``EVALSHA`` (redis-py's ``AsyncScript``) or a ``FunctionScript``."""

    def __call__(self, keys: list[Any], args: list[Any]) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class Scripts:
    enqueue: Script
    claim: Script
    heartbeat: Script
    finish: Script
    finish_claim: Script
    progress: Script
    reap: Script
    promote: Script
    purge: Script
    try_lock: Script
    unlock: Script
    cancel: Script
    replay: Script
    set_tenant: Script
    set_queue: Script
    stats: Script
    query: Script
    probe: Script
    rate: Script
    park: Script
    complete: Script
    expire: Script
    depth: Script

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def register(cls, client: Any) -> Scripts:
        """As scripts, run by ``EVALSHA``."""
        return cls(**{name: client.register_script(script_source(name)) for name in cls.names()})

    @classmethod
    async def load(cls, client: Any, *, cluster: bool) -> Scripts:
        """As functions where the server has them (see the module's docstring), else as
        scripts."""
        if not cluster:
            library = Library.build(cls.names())
            if await load_library(client, library):
                return cls(**{n: FunctionScript(client, library, n) for n in cls.names()})
        return cls.register(client)
