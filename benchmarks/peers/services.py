"""The servers under the peers: one Redis DB and a few Postgres databases, all private.

The harness refuses a Redis DB that already holds keys (someone else's), so emptying it
between phases (FLUSHDB) only ever removes what this run wrote; the Postgres databases
are created with a name unique to this run and dropped at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, cast
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost"}


def require_loopback(url: str) -> None:
    """Benchmarks send load: only to this machine."""
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        if ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing a non-loopback server: {url}")


@dataclass
class Services:
    redis_url: str  # redis://127.0.0.1:6379/11
    pg_url: str  # postgresql://root@127.0.0.1:5432 (no database)
    pg_admin_db: str
    pg_prefix: str = field(default_factory=lambda: f"peerbench_{os.getpid()}")
    redis_ok: bool = False
    pg_ok: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    pg_databases: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "PEERBENCH_REDIS_URL": self.redis_url,
            "PEERBENCH_PG_URL": self.pg_url,
            "PEERBENCH_PG_PREFIX": self.pg_prefix,
        }

    def open_redis(self) -> str | None:
        """Check the private DB is reachable and empty; None when fine, else why not."""
        import redis

        require_loopback(self.redis_url)
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
        try:
            server = cast("dict[str, Any]", client.info("server"))  # sync client: a dict
            self.versions["redis-server"] = str(server["redis_version"])
            if client.dbsize():
                return f"{self.redis_url} is not empty; pick a free DB number with --redis-url"
        except redis.RedisError as exc:
            return f"Redis unreachable at {self.redis_url}: {exc}"
        finally:
            client.close()
        self.redis_ok = True
        return None

    def open_postgres(self, peers: list[str]) -> str | None:
        """Create one private database per PostgreSQL system."""
        import psycopg

        require_loopback(self.pg_url)
        try:
            with psycopg.connect(
                f"{self.pg_url}/{self.pg_admin_db}", autocommit=True, connect_timeout=3
            ) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                self.versions["postgresql"] = str(row[0]) if row else "?"
                for peer in peers:
                    name = f"{self.pg_prefix}_{peer}"
                    conn.execute(f'CREATE DATABASE "{name}"')
                    self.pg_databases.append(name)
        except psycopg.Error as exc:
            return f"PostgreSQL unreachable at {self.pg_url}: {exc}"
        self.pg_ok = True
        return None

    def cleanup(self) -> None:
        """Drop what this run created (and only that)."""
        if self.redis_ok:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            try:
                client.flushdb()
            finally:
                client.close()
        if self.pg_databases:
            import psycopg

            with psycopg.connect(f"{self.pg_url}/{self.pg_admin_db}", autocommit=True) as conn:
                for name in self.pg_databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.pg_databases.clear()
