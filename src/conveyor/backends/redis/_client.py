"""Making the redis-py client: one server, or a Redis Cluster (``?cluster=1``).

Both clients are created with the same settings, and the rest of the backend uses
either one the same way: every script names a key of the store's slot first, so the
cluster client sends it to the node that owns the store. Only the few commands without
a key need to be told where to go (``store_time``, and the safety checks in
``_safety.py``, which look at every node).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from conveyor.backends.redis._url import RedisOptions


def make_client(options: RedisOptions) -> Any:
    """A new, unconnected client for ``options`` (redis.asyncio.Redis or RedisCluster)."""
    settings: dict[str, Any] = {
        "decode_responses": True,
        # Never retry a command after a connection error: a script may have run before
        # the connection dropped, and a claim run twice strands jobs until their lease
        # ends. The cluster client also re-sends after a connection error unless told
        # not to; it still follows MOVED/ASK redirects, which are safe (the node that
        # answered with one ran nothing).
        "retry": Retry(NoBackoff(), 0),
        # No per-command socket timeout: on Python 3.11 redis-py enforces it with
        # asyncio.wait_for, which can swallow a task's cancellation (a worker then
        # never stops). Dead peers are found by TCP keepalive and health checks.
        "socket_timeout": None,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
    }
    if not options.cluster:
        return aioredis.Redis.from_url(options.client_url, **settings)
    if options.nodes:
        settings["startup_nodes"] = [ClusterNode(host, port) for host, port in options.nodes]
    return RedisCluster.from_url(options.client_url, **settings)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def store_time(client: Any, route: str) -> tuple[int, int]:
    """Redis ``TIME`` from the node that owns the store (``route`` is a key of its slot),
    the same clock the scripts read; other nodes' clocks may differ."""
    if is_cluster(client):
        seconds, micros = await client.time(target_nodes=client.get_node_from_key(route))
    else:
        seconds, micros = await client.time()
    return int(seconds), int(micros)
