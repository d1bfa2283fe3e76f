"""``redis://`` / ``rediss://`` URLs: Conveyor's own options and the key layout."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What a Conveyor Redis URL says, with Conveyor's options taken out.

    ``prefix`` (default ``conveyor``) namespaces every key, so several stores can share
    one server. ``allow_eviction=1`` accepts a server whose maxmemory-policy evicts keys.
    Every other query option is handed to redis-py (``ssl_cert_reqs``, ``socket_timeout``...).
    """

    client_url: str
    prefix: str
    allow_eviction: bool
    #: host:port/db, for messages (never the password).
    where: str

    @classmethod
    def parse(cls, url: str) -> RedisOptions:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("redis", "rediss"):
            raise ValueError(f"not a Redis URL: {url!r} (write redis://host:port/db)")
        prefix, allow_eviction = "conveyor", False
        rest = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                prefix = value
            elif name == "allow_eviction":
                allow_eviction = value.lower() in _TRUE
            else:
                rest.append((name, value))
        if not prefix:
            raise ValueError(f"empty prefix= in Redis URL {url!r}")
        client_url = urlunsplit(parts._replace(query=urlencode(rest)))
        db = parts.path.lstrip("/") or "0"
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
        return cls(client_url, prefix, allow_eviction, where)


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
    def queue_prefixes(self) -> str:
        return self.store + "qp"
