"""``postgresql://`` URLs: Conveyor's own options, stripped before libpq sees the rest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_SCHEMA = "conveyor"
#: Lower-case, unquoted-identifier-safe names only: the schema also names the NOTIFY
#: channel (``conveyor_<schema>``, at most 63 bytes) and goes into ``search_path``.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
_OWN_OPTIONS = frozenset({"schema"})


@dataclass(frozen=True, slots=True)
class PostgresURL:
    conninfo: str  #: the URL minus Conveyor's options (and libpq's ``options``)
    schema: str
    #: libpq ``options`` from the URL; the backend appends its own ``-c search_path``.
    options: str = ""

    @property
    def channel(self) -> str:
        return f"conveyor_{self.schema}"


def parse(url: str) -> PostgresURL:
    """Split ``postgresql://user@host:port/db?schema=name&sslmode=...``."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    schema = DEFAULT_SCHEMA
    options = ""
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            schema = value
        elif name == "options":
            options = value
        elif name not in _OWN_OPTIONS:
            rest.append((name, value))
    if not _SCHEMA.match(schema):
        raise ValueError(
            f"invalid schema {schema!r} in {url!r}: use lower-case letters, digits and _ "
            "(at most 50 characters, not starting with a digit)"
        )
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return PostgresURL(conninfo=conninfo, schema=schema, options=options)
