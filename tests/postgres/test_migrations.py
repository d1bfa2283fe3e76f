"""Versioned migrations: idempotent, and equal to schema.sql (compared by catalog dump)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import sql

from conveyor.backends.postgres import _sql, migrate_on
from tests.postgres.conftest import OpenPG
from tests.services import POSTGRES_URL

# Every catalog fact a migration can change, with the schema name masked out.
CATALOG_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, coalesce(array_to_string(c.reloptions, ','), '')
        FROM pg_class c WHERE c.relnamespace = %(ns)s AND c.relname <> 'schema_migrations'
          AND c.relname NOT LIKE 'schema_migrations%%'
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               coalesce(co.collname, '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relnamespace = %(ns)s AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname <> 'schema_migrations' AND c.relkind IN ('r', 'v')
        ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, replace(indexdef, %(schema)s || '.', '') FROM pg_indexes
        WHERE schemaname = %(schema)s AND tablename <> 'schema_migrations' ORDER BY 1""",
    "constraints": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE k.connamespace = %(ns)s AND c.relname <> 'schema_migrations' ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), p.prosrc, p.provolatile,
               coalesce(array_to_string(p.proconfig, ','), '')
        FROM pg_proc p WHERE p.pronamespace = %(ns)s ORDER BY 1, 2""",
    "triggers": """
        SELECT t.tgname, replace(pg_get_triggerdef(t.oid), %(schema)s || '.', '')
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(ns)s AND NOT t.tgisinternal ORDER BY 1""",
}


def catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    ns = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    assert ns is not None, f"schema {schema} does not exist"
    params = {"ns": ns[0], "schema": schema}
    return {name: conn.execute(q, params).fetchall() for name, q in CATALOG_QUERIES.items()}


async def test_migrations_equal_the_schema_file(open_pg: OpenPG) -> None:
    backend = await open_pg()  # open() applied every migration
    reference = f"t_ref_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        try:
            ident = sql.Identifier(reference)
            with conn.transaction():
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
                conn.execute(sql.SQL("SET LOCAL search_path = {}").format(ident))
                conn.execute(_sql.schema().encode())
            migrated, from_file = catalog(conn, backend.schema), catalog(conn, reference)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
    assert migrated["relations"], "nothing was migrated"
    for part in CATALOG_QUERIES:
        assert migrated[part] == from_file[part], f"{part} differ between migrations and schema"


async def test_migrate_is_idempotent_and_recorded(open_pg: OpenPG) -> None:
    backend = await open_pg()
    assert await backend.migrate() == []  # open() already applied everything
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        assert await migrate_on(conn, backend.schema) == []
        cur = await conn.execute(
            sql.SQL("SELECT version, name FROM {}.schema_migrations ORDER BY 1").format(
                sql.Identifier(backend.schema)
            )
        )
        recorded = await cur.fetchall()
    assert recorded == [(v, name) for v, name, _ in _sql.migrations()]


async def test_migrate_before_open_creates_the_schema(pg_url: str) -> None:
    from conveyor.backends.postgres import PostgresBackend

    backend = PostgresBackend(pg_url)
    assert await backend.migrate() == [v for v, _, _ in _sql.migrations()]
    await backend.open()
    try:
        assert await backend.migrate() == []
    finally:
        await backend.close()
