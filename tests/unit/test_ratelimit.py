"""The one token bucket behind every rate limit."""

from __future__ import annotations

import pytest

from fieldlink.core.ratelimit import RateLimiter


def test_burst_then_rate_with_a_retry_hint() -> None:
    limiter = RateLimiter(rate_per_s=10, burst=3)
    assert [limiter.take("d", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("d", 0.0) == pytest.approx(0.1)  # one token every 0.1 s
    assert limiter.take("d", 0.1) == 0.0
    assert limiter.take("other", 0.1) == 0.0  # keys are independent


def test_memory_is_bounded_and_keys_can_be_forgotten() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=2)
    assert limiter.take("a", 0.0) == 0.0 and limiter.take("b", 0.0) == 0.0
    assert limiter.take("c", 0.0) == 0.0  # clears the table instead of growing
    assert limiter.take("a", 0.0) == 0.0  # a starts again with a full burst
    limiter.forget("a")
    assert limiter.take("a", 0.0) == 0.0


def test_a_limit_needs_a_rate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
