"""Token buckets by key (pure: the caller passes the time). One implementation serves every
limit: messages per WebSocket connection, HTTP requests and MQTT records per device, logins
per user name."""

from __future__ import annotations


class RateLimiter:
    """``rate_per_s`` sustained, ``burst`` at once, per key. Memory is bounded by
    ``max_keys``: past it the table is cleared (every key starts again with a full burst)."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[object, tuple[float, float]] = {}

    def take(self, key: object, now_s: float) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one would be available.
        ``key`` is any hashable object (a device id, a connection)."""
        tokens, last = self._buckets.get(key, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now_s)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now_s)
        return 0.0

    def forget(self, key: object) -> None:
        self._buckets.pop(key, None)
