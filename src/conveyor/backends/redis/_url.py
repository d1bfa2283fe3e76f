"""``redis://`` / ``rediss://`` URLs: Conveyor's own options and the key layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.backends.redis._spin import DEFAULT_BUDGET

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: redis-py's names for ``ssl_cert_reqs`` (it compares them case-sensitively).
_CERT_REQS = ("none", "optional", "required")


def _shown(url: str) -> str:
    """``url`` for an error message: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _flag(name: str, value: str, url: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} in Redis URL {url!r}: write {name}=1 or {name}=0")


def _spin_us(value: str, url: str) -> float:
    """``spin_us=N``: microseconds (0 to 10,000) as seconds."""
    try:
        micros = int(value)
    except ValueError:
        micros = -1
    if not 0 <= micros <= 10_000:
        raise ValueError(
            f"spin_us={value!r} in Redis URL {url!r}: write a whole number of "
            "microseconds from 0 (never poll) to 10000"
        )
    return micros / 1e6


def _seconds(name: str, value: str, url: str) -> float:
    """A positive number of seconds (``socket_timeout=2.5``)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(
            f"{name}={value!r} in Redis URL {url!r}: write a positive number of seconds"
        )
    return seconds


def _host_port(value: str, url: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"node={value!r} in Redis URL {url!r}: write node=host:port")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What a Conveyor Redis URL says, with Conveyor's options taken out.

    ``prefix`` (default ``conveyor``) namespaces every key, so several stores can share
    one server. ``allow_eviction=1`` accepts a server whose maxmemory-policy evicts keys.
    ``cluster=1`` connects with redis-py's Redis Cluster client; ``node=host:port``
    (repeatable) names more nodes to discover the cluster from, besides the URL's host.
    ``spin_us=N`` (default 200, 0 = off): microseconds a sync single-job enqueue polls
    for its reply before sleeping in the kernel (see ``_spin.py``).
    Every other query option is handed to redis-py (``ssl_cert_reqs``, ``socket_timeout``...).
    """

    client_url: str
    prefix: str
    allow_eviction: bool
    #: host:port/db, for messages (never the password).
    where: str
    cluster: bool = False
    #: Further cluster nodes to start discovery from (the URL's own host comes first).
    nodes: tuple[tuple[str, int], ...] = ()
    #: Seconds a sync single-job enqueue polls for its reply before it sleeps.
    spin: float = DEFAULT_BUDGET
    #: The URL's ``socket_timeout`` (also handed to redis-py), None when it gives none.
    socket_timeout: float | None = None

    @classmethod
    def parse(cls, url: str) -> RedisOptions:
        parts = urlsplit(url)
        shown = _shown(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"not a Redis URL: {shown!r} (write redis://host:port/db)")
        prefix, allow_eviction, cluster = "conveyor", False, False
        nodes: list[tuple[str, int]] = []
        spin = DEFAULT_BUDGET
        socket_timeout = None
        rest = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                prefix = value
            elif name == "allow_eviction":
                allow_eviction = _flag(name, value, shown)
            elif name == "cluster":
                cluster = _flag(name, value, shown)
            elif name == "node":
                nodes.append(_host_port(value, shown))
            elif name == "spin_us":
                spin = _spin_us(value, shown)
            else:
                if name == "socket_timeout":
                    socket_timeout = _seconds(name, value, shown)
                rest.append((name, _check_client_option(name, value, scheme, shown)))
        if not prefix:
            raise ValueError(f"empty prefix= in Redis URL {shown!r}")
        db = parts.path.lstrip("/") or "0"
        if cluster and db != "0":
            raise ValueError(
                f"Redis URL {shown!r} names database {db}, but a Redis Cluster only has "
                "database 0: drop the /db part or write /0"
            )
        if nodes and not cluster:
            raise ValueError(f"node= in Redis URL {shown!r} needs cluster=1 (a cluster URL)")
        client_url = urlunsplit(parts._replace(query=urlencode(rest)))
        host = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        where = f"the cluster at {host}" if cluster else f"{host}/{db}"
        return cls(
            client_url, prefix, allow_eviction, where, cluster, tuple(nodes), spin, socket_timeout
        )


def _check_client_option(name: str, value: str, scheme: str, url: str) -> str:
    """Catch the mistakes redis-py would only report at the first command, or never."""
    if name in ("read_from_replicas", "load_balancing_strategy"):
        # redis-py would take the text as is ("0" is a true string); and a replica,
        # replicated asynchronously, can answer a read of a job just enqueued or finished
        # with "no such job" or an older state.
        raise ValueError(
            f"{name}= in Redis URL {url!r} is not supported: Conveyor reads its own "
            "writes, which replicas may not have yet; every command goes to the primary"
        )
    if name.startswith("ssl_") and scheme != "rediss":
        raise ValueError(
            f"{name}= in Redis URL {url!r} only applies to TLS connections: "
            "write rediss:// to connect over TLS"
        )
    if name == "ssl_cert_reqs":
        if value.lower() not in _CERT_REQS:
            raise ValueError(
                f"ssl_cert_reqs={value!r} in Redis URL {url!r}: write one of "
                + ", ".join(_CERT_REQS)
            )
        return value.lower()
    return value


class Keys:
    """Key names. Every key of one queue starts with its queue prefix, which carries a
    hash tag; store-wide keys (jobs, dedup keys, task running counts, locks, the queue
    registry) start with the store prefix ``G``.

    This layout puts the whole store in ONE hash slot (tag ``{prefix}``): every script
    may touch any queue and the store-wide keys atomically, which task caps and dedup
    keys (both store-wide by contract) need. On Redis Cluster that means one store lives
    on one shard; spread load by giving independent apps their own prefix.
    """

    def __init__(self, prefix: str) -> None:
        self.store = f"{{{prefix}}}:"
        #: A key of the store's slot, passed as KEYS[1] so a cluster client routes there.
        self.route = self.store + "queues"

    def queue(self, name: str) -> str:
        # The length makes the prefix unambiguous whatever characters the name holds.
        return f"{self.store}q:{len(name)}:{name}:"

    def wake(self, name: str) -> str:
        return self.queue(name) + "wake"

    def job(self, job_id: str) -> str:
        return f"{self.store}j:{job_id}"

    def lock(self, name: str) -> str:
        return f"{self.store}lock:{name}"

    @property
    def outbox(self) -> str:
        """The stream of events the store produced itself (``_lib.lua`` ``outbox``)."""
        return self.store + "outbox"

    @property
    def queue_prefixes(self) -> str:
        return self.store + "qp"
