"""Configuration in one typed place, with the documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from conveyor.serialize import DEFAULT_MAX_PAYLOAD

DEFAULT_URL = "sqlite:///conveyor.db"
URL_ENV = "CONVEYOR_URL"
ACCEPTED_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}
_URL_HELP = (
    "accepted URLs: sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user@host:port/db, redis://host:port/db, rediss://host:port/db"
)


def resolve_url(url: str | None) -> str:
    """The URL to use: the one given, else ``$CONVEYOR_URL``, else ``sqlite:///conveyor.db``."""
    if url is not None:
        return url
    return os.environ.get(URL_ENV) or DEFAULT_URL


def parse_url(url: str) -> str:
    """Validate ``url`` and return its engine name, or raise ``ValueError`` saying why."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"invalid storage URL {url!r}: {_URL_HELP}")
    scheme = urlsplit(url).scheme.lower()
    engine = ACCEPTED_SCHEMES.get(scheme)
    if engine is None:
        raise ValueError(f"unsupported storage URL scheme {scheme!r} in {url!r}: {_URL_HELP}")
    if engine == "sqlite":
        sqlite_path(url)  # validates
    return engine


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL (three slashes: relative, four: absolute)."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise ValueError(f"invalid SQLite URL {url!r}: write sqlite:///path/to/file.db")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ValueError(
            f"invalid SQLite URL {url!r}: give a file path (workers in other processes "
            "must reach the same database, so :memory: is not supported)"
        )
    return path


@dataclass(frozen=True, slots=True)
class Defaults:
    """Per-app defaults for tasks that do not set their own (documented in docs/)."""

    queue: str = "default"
    priority: int = 5
    max_attempts: int = 3
    #: Seconds a succeeded or cancelled job's record (and result) is kept.
    result_ttl: float | None = 7 * 86400.0
    timeout: float | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD
