"""Per-client limits: a token bucket per client address, and a live-connection count per client.

Both are pure bookkeeping (the caller passes the clock), bounded in memory: at most
``max_clients`` entries are kept; when full, entries that are back to a full bucket (or to zero
connections) are dropped first, then the oldest.
"""

from __future__ import annotations

import math


class TokenBuckets:
    """``rate`` requests per second with bursts of ``burst``, per key (a client address)."""

    __slots__ = ("rate", "burst", "max_clients", "buckets", "limited_total")

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self.limited_total = 0

    def allow(self, key: str, now: float) -> float:
        """Take one token for ``key``. Returns 0.0 when allowed, else seconds until one is free."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_clients:
                self._evict(now)
            self.buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        self.limited_total += 1
        return (1.0 - tokens) / self.rate

    def retry_after_header(self, wait: float) -> bytes:
        """A ``Retry-After`` value (whole seconds, at least 1) for a refused request."""
        return str(max(1, math.ceil(wait))).encode()

    def _evict(self, now: float) -> None:
        full = [k for k, (tokens, last) in self.buckets.items() if tokens + (now - last) * self.rate >= self.burst]
        for key in full:
            del self.buckets[key]
        while len(self.buckets) >= self.max_clients:
            del self.buckets[next(iter(self.buckets))]


class ClientConnections:
    """Live connections per client address, with a cap per client."""

    __slots__ = ("limit", "counts", "refused_total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.refused_total = 0

    def claim(self, key: str) -> bool:
        """Count one more connection from ``key``; False (and nothing counted) beyond the limit."""
        count = self.counts.get(key, 0)
        if count >= self.limit:
            self.refused_total += 1
            return False
        self.counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Exactly once per successful ``claim``."""
        count = self.counts.get(key, 0) - 1
        if count <= 0:
            self.counts.pop(key, None)
        else:
            self.counts[key] = count
