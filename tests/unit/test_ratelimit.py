"""Parsing rate limits, and which buckets a job draws on."""

from __future__ import annotations

import pytest

from conveyor.ratelimit import RateLimit, buckets_for


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("10/s", 10, 1.0),
        ("100/m", 100, 60.0),
        ("5/30s", 5, 30.0),
        ("1/h", 1, 3600.0),
        (" 2 / 1.5 d ", 2, 129600.0),
    ],
)
def test_parse_text(text: str, limit: int, period: float) -> None:
    assert RateLimit.parse(text) == RateLimit(limit, period)


@pytest.mark.parametrize("bad", ["", "10", "10/x", "ten/s", "0/s", (0, 1), (1, 0), (1, -1)])
def test_parse_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(bad)


def test_parse_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        RateLimit.parse(10)


def test_buckets_task_tenant_and_each_tenant() -> None:
    limit = RateLimit(1, 1.0)
    assert buckets_for("t", None, "a", {}) == []
    assert [b.name for b in buckets_for("t", limit, None, {})] == ["task:t"]
    tenants = {"a": RateLimit(5, 1.0), "*": RateLimit(2, 1.0)}
    assert [(b.name, b.limit) for b in buckets_for("t", None, "a", tenants)] == [("tenant:a", 5)]
    assert [(b.name, b.limit) for b in buckets_for("t", None, "b", tenants)] == [("tenant:b", 2)]
    assert [b.name for b in buckets_for("t", None, None, tenants)] == ["tenant:"]
