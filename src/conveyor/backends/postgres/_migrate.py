"""Applying the versioned migrations in ``migrations/`` to a store's schema."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from conveyor.backends.postgres import _sql

Conn = psycopg.AsyncConnection[Any]


async def migrate_on(conn: Conn, schema: str) -> list[int]:
    """Apply the pending migrations to ``schema`` on ``conn`` in one transaction.

    An advisory lock per schema serializes processes that open a fresh store at the same
    time; the later ones find every migration recorded and change nothing.
    """
    ident = sql.Identifier(schema)
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            [f"conveyor:{schema}:migrate"],
        )
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                "version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        cur = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(ident))
        done = {row[0] for row in await cur.fetchall()}
        known = _sql.migrations()
        newest = max(v for v, _, _ in known)
        if done and max(done) > newest:
            raise RuntimeError(
                f"schema {schema!r} was migrated by a newer Conveyor (version {max(done)}, "
                f"this version knows up to {newest}); upgrade conveyor"
            )
        pending = [m for m in known if m[0] not in done]
        if pending:
            await conn.execute(sql.SQL("SET LOCAL search_path = {}").format(ident))
            for version, name, text in pending:
                await conn.execute(text.encode())  # no parameters: may hold many statements
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)"
                    ).format(ident),
                    [version, name],
                )
                applied_now.append(version)
    return applied_now
