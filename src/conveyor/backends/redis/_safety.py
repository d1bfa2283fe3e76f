"""Checks that the Redis server will not lose jobs behind Conveyor's back.

* ``maxmemory-policy`` other than ``noeviction`` lets Redis delete keys under memory
  pressure: jobs (or the indexes that find them) would vanish without a trace. Opening
  refuses such a server unless the URL says ``?allow_eviction=1``.
* With neither AOF nor RDB snapshots, a restart loses every job. That is a legitimate
  choice (tests, caches of work that can be recreated), so it is only a warning.

On a Redis Cluster every node is checked, replicas included: a store lives on the node
that owns its slot, and a failover or a resharding can move it to any other.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.redis")
_warned: set[str] = set()
#: Servers whose policy was found safe (noeviction) in this process.
_passed: set[str] = set()


class UnsafeServerError(ConveyorError):
    """The Redis server is configured in a way that can silently lose jobs."""


async def server_settings(client: Any, **route: Any) -> dict[str, str]:
    """maxmemory-policy, appendonly and save, from CONFIG or (where CONFIG is disabled,
    as on some managed services) from INFO. ``route`` is ``target_nodes=`` on a cluster."""
    try:
        settings: dict[str, str] = {}
        for name in ("maxmemory-policy", "appendonly", "save"):
            settings.update(await client.config_get(name, **route))
        return settings
    except ResponseError:
        info = await client.info("memory", **route)
        info.update(await client.info("persistence", **route))
        return _from_info(info)


def _from_info(info: dict[str, Any]) -> dict[str, str]:
    return {
        "maxmemory-policy": str(info.get("maxmemory_policy", "noeviction")),
        "appendonly": "yes" if int(info.get("aof_enabled", 0)) else "no",
        # INFO does not show the save schedule; assume snapshots are configured.
        "save": "unknown",
    }


async def check_server(client: Any, where: str, *, allow_eviction: bool) -> None:
    if not isinstance(client, RedisCluster):
        _check_one(await server_settings(client), where, allow_eviction=allow_eviction)
        return
    await client.initialize()  # learns the nodes; a no-op when already connected
    for node in client.get_nodes():
        settings = await server_settings(client, target_nodes=node)
        _check_one(settings, f"cluster node {node.name}", allow_eviction=allow_eviction)


def check_server_blocking(conn: Any, where: str, *, allow_eviction: bool) -> None:
    """``check_server`` over one connection of the sync enqueue's single-server client,
    in one round trip; skipped for a server that already passed in this process (the
    async backend of the same app, typically), since a far server makes each trip count."""
    if where in _passed:
        return
    names = ("maxmemory-policy", "appendonly", "save")
    conn.send_packed_command(conn.pack_commands([("CONFIG", "GET", n) for n in names]))
    settings: dict[str, str] = {}
    refused = False
    for _ in names:  # every reply is read, so that the connection stays clean
        try:
            pairs = conn.read_response()
        except ResponseError:
            refused = True
            continue
        settings.update(zip(pairs[::2], pairs[1::2], strict=True))
    if refused:  # CONFIG disabled (some managed services): INFO says enough
        info: dict[str, str] = {}
        for section in ("memory", "persistence"):
            conn.send_command("INFO", section)
            text = conn.read_response()
            info.update(line.split(":", 1) for line in text.splitlines() if ":" in line)
        settings = _from_info(info)
    _check_one(settings, where, allow_eviction=allow_eviction)


def _check_one(settings: dict[str, str], where: str, *, allow_eviction: bool) -> None:
    policy = settings.get("maxmemory-policy", "noeviction")
    if policy == "noeviction":
        _passed.add(where)
    if policy != "noeviction":
        message = (
            f"Redis at {where} has maxmemory-policy={policy}: under memory pressure it "
            "deletes keys, and jobs would vanish silently. Set maxmemory-policy noeviction "
            "(then a full server refuses new jobs with an error instead), or add "
            "?allow_eviction=1 to the URL to accept the risk."
        )
        if not allow_eviction:
            raise UnsafeServerError(message)
        if where not in _warned:
            log.warning("%s (allowed by allow_eviction=1)", message)
    no_aof = settings.get("appendonly", "no") != "yes"
    no_rdb = settings.get("save", "") in ("", '""')
    if no_aof and no_rdb and where not in _warned:
        log.warning(
            "Redis at %s has no persistence (appendonly no, no save schedule): a restart "
            "of the server loses every job. Enable AOF (appendonly yes) for durable jobs.",
            where,
        )
    _warned.add(where)
