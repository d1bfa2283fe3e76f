"""Access to the real PostgreSQL and Redis services the tests use.

On a laptop without them, their tests skip with a loud message; in CI
(``CONVEYOR_REQUIRE_SERVICES=1``) a missing service fails the test instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")


def services_required() -> bool:
    return os.environ.get("CONVEYOR_REQUIRE_SERVICES", "") not in ("", "0", "false")


def require_service(name: str, url: str) -> None:
    """Fail (CI) or skip loudly (laptop) unless ``url``'s host:port accepts connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, f"{url} names no port"
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
        if services_required():
            pytest.fail(f"{message}; CONVEYOR_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(f"!!! SKIPPED: {message}. Start {name} to run these tests. !!!")
