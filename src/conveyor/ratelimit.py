"""Rate limits: at most N job starts per period, per task or per tenant, cluster-wide.

The store keeps each limit's state (``Backend.take_rate``), so every worker of the
cluster draws on the same budget. A job over its limit is not run and not failed: the
store reserves its slot and puts it back to ``scheduled`` until then (no attempt is
used), so a backlog drains at the limit's pace, each job claimed at most twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.backends.base import RateBucket

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*$")
#: ``app.tenant_rate_limit("*", ...)``: every tenant separately, unless it has its own.
EACH_TENANT = "*"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` job starts per ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"a rate limit needs a whole number of jobs >= 1, got {self.limit!r}")
        if not (isinstance(self.period, (int, float)) and math.isfinite(self.period)):
            raise ValueError(
                f"a rate limit's period must be a number of seconds, not {self.period!r}"
            )
        if self.period <= 0:
            raise ValueError(f"a rate limit's period must be > 0 seconds, got {self.period!r}")

    @classmethod
    def parse(cls, value: Any) -> RateLimit:
        """``"10/s"``, ``"100/m"``, ``"5/30s"``, ``(10, 1.0)`` or a ``RateLimit``."""
        if isinstance(value, RateLimit):
            return value
        if isinstance(value, str):
            found = _TEXT.match(value)
            if found is None:
                raise ValueError(
                    f"rate limit {value!r}: write it as N/unit (10/s, 100/m, 1000/h, 5/30s)"
                )
            count, scale, unit = found.groups()
            return cls(int(count), (float(scale) if scale else 1.0) * _UNITS[unit])
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], float(value[1]))
        raise TypeError(f"a rate limit is 'N/unit' or (N, seconds), not {value!r}")


def buckets_for(
    task: str,
    task_limit: RateLimit | None,
    tenant: str | None,
    tenant_limits: Mapping[str | None, RateLimit],
) -> list[RateBucket]:
    """The buckets a job of ``task`` for ``tenant`` draws on (none: no limit applies)."""
    out: list[RateBucket] = []
    if task_limit is not None:
        out.append(RateBucket(f"task:{task}", task_limit.limit, task_limit.period))
    if tenant_limits:
        limit = tenant_limits.get(tenant) or tenant_limits.get(EACH_TENANT)
        if limit is not None:
            out.append(RateBucket(f"tenant:{tenant or ''}", limit.limit, limit.period))
    return out
