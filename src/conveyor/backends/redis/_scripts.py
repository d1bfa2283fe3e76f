"""The Lua scripts, one per primitive, loaded as package resources.

Each ``<name>.lua`` file is prefixed with ``_lib.lua`` (shared helpers) and, where it
needs them, shared bodies (``_finish.lua``, ``_claim.lua``), and registered
with redis-py, which runs it by ``EVALSHA`` and loads it again (``SCRIPT LOAD``) after a
``NOSCRIPT`` reply, e.g. after the server restarted or was flushed. On a Redis Cluster
the script goes to the node owning the slot of its first key (always a key of the
store's slot), and redis-py sends that ``SCRIPT LOAD`` to every primary.
"""

from __future__ import annotations

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


def script_source(name: str) -> str:
    """A script as sent to Redis: the shared helpers, its includes, then ``<name>.lua``."""
    parts = [_source(part) for part in ("_lib", *_INCLUDES.get(name, ()))]
    return "\n".join([*parts, f"-- {name}.lua", _source(name)])


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
