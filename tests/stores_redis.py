"""A fresh, private Redis store per test: a unique key prefix on the shared server.

Tests of other sessions may run on the same server at the same time, so a store is
never flushed as a whole: its own keys (everything under its prefix's hash tag) are
deleted afterwards with SCAN + UNLINK.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from tests.services import REDIS_URL, require_service


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


@contextlib.contextmanager
def redis_store() -> Iterator[str]:
    require_service("Redis", REDIS_URL)
    prefix = f"t-{uuid.uuid4().hex}"
    base = REDIS_URL.rstrip("/")
    url = f"{base}/0?prefix={prefix}" if base.count("/") == 2 else f"{base}?prefix={prefix}"
    try:
        yield url
    finally:
        delete_prefix(url.split("?", 1)[0], prefix)
