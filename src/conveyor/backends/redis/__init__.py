"""The Redis backend (``redis://``, ``rediss://``): ``pip install 'conveyor[redis]'``."""

from __future__ import annotations

from conveyor.backends.redis._safety import UnsafeServerError
from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend", "UnsafeServerError"]
