from __future__ import annotations

import random

import pytest

from conveyor import Backoff, Retry


def test_exponential_without_jitter() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=10.0, jitter=False)
    assert [b.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_stays_between_half_and_full() -> None:
    b = Backoff(base=4.0, factor=2.0, cap=100.0, jitter=True)
    rng = random.Random(7)
    delays = [b.delay(2, rng) for _ in range(1000)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 2.0  # it really spreads


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(cap=300.0, jitter=False).delay(10_000) == 300.0


def test_invalid_backoff() -> None:
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        Retry(delay=-1)
