"""The per-key rate limit: a token bucket per merchant, `api.requests_per_s_max` sustained and
`api.burst_max` at once (0 disables it)."""

from __future__ import annotations

import time

from apss.errors import RateLimited

__all__ = ["RateLimiter"]


class _Bucket:
    __slots__ = ("tokens", "updated_s")

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens
        self.updated_s = time.monotonic()


class RateLimiter:
    """A token bucket per API key hash: `rate_per_s` sustained, `burst` at once; 0 disables."""

    def __init__(self, *, rate_per_s: int, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, who: str) -> None:
        if self._rate == 0:
            return
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = _Bucket(self._burst)
        now_s = time.monotonic()
        bucket.tokens = min(self._burst, bucket.tokens + (now_s - bucket.updated_s) * self._rate)
        bucket.updated_s = now_s
        if bucket.tokens < 1:
            raise RateLimited("Too many requests; slow down and retry.")
        bucket.tokens -= 1
