"""Fresh private PostgreSQL stores for tests: one schema per store, dropped afterwards.

Other test sessions may share the server, so isolation is by schema (and by NOTIFY
channel, which the backend derives from the schema).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

from tests.services import POSTGRES_URL, require_service


def _admin_execute(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def postgres_store() -> Iterator[str]:
    """The URL of a fresh schema ``t_<hex>`` on the test server; dropped afterwards."""
    require_service("PostgreSQL", POSTGRES_URL)
    schema = f"t_{secrets.token_hex(6)}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}schema={schema}"
    finally:
        _admin_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
