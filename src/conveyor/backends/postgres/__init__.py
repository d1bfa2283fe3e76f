"""PostgreSQL storage (``postgresql://user@host:port/db?schema=conveyor``)."""

from __future__ import annotations

from conveyor.backends.postgres._migrate import migrate_on
from conveyor.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend", "migrate_on"]
