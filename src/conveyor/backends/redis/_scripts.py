"""The Lua scripts, one per primitive, loaded as package resources.

Each ``<name>.lua`` file is prefixed with the ``_lib.lua`` helpers it uses and, where it
needs them, shared bodies (``_finish.lua``, ``_claim.lua``), and registered
with redis-py, which runs it by ``EVALSHA`` and loads it again (``SCRIPT LOAD``) after a
``NOSCRIPT`` reply, e.g. after the server restarted or was flushed. On a Redis Cluster
the script goes to the node owning the slot of its first key (always a key of the
store's slot), and redis-py sends that ``SCRIPT LOAD`` to every primary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

_PACKAGE = "conveyor.backends.redis"


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


@dataclass(frozen=True, slots=True)
class Scripts:
    enqueue: AsyncScript
    claim: AsyncScript
    heartbeat: AsyncScript
    finish: AsyncScript
    finish_claim: AsyncScript
    progress: AsyncScript
    reap: AsyncScript
    promote: AsyncScript
    purge: AsyncScript
    try_lock: AsyncScript
    unlock: AsyncScript
    cancel: AsyncScript
    replay: AsyncScript
    set_tenant: AsyncScript
    set_queue: AsyncScript
    stats: AsyncScript
    query: AsyncScript
    probe: AsyncScript
    rate: AsyncScript
    park: AsyncScript
    complete: AsyncScript
    expire: AsyncScript
    depth: AsyncScript

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(**{f.name: client.register_script(script_source(f.name)) for f in fields(cls)})
