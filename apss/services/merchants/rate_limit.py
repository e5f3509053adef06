"""The per-key rate limit: a token bucket per merchant, `api.requests_per_s_max` sustained and
`api.burst_max` at once (0 disables it), unless the admin gave the merchant its own (PATCH
/v1/merchants/{id} `rate_limit`, e.g. for a flash sale through one game-server key); and the
admin token's guard against guessing: the 6th failed admin authentication from one address
within 60 s locks that address out for 60 s."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque

from apss.errors import AdminAuthThrottled, RateLimited

__all__ = ["AdminThrottle", "RateLimiter"]

log = logging.getLogger("apss.auth")


class _Bucket:
    __slots__ = ("tokens", "updated_s")

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens
        self.updated_s = time.monotonic()


class RateLimiter:
    """A token bucket per merchant: `rate_per_s` sustained, `burst` at once, or the merchant's own
    pair set with `set_limit`; a rate of 0 disables it."""

    def __init__(self, *, rate_per_s: int, burst: int) -> None:
        assert rate_per_s >= 0 and burst >= 1
        self.default = (rate_per_s, burst)
        self._own: dict[str, tuple[int, int]] = {}
        self._buckets: dict[str, _Bucket] = {}

    def limit_of(self, who: str) -> tuple[int, int]:
        """(requests per second, burst) that apply to `who`."""
        return self._own.get(who, self.default)

    def has_own(self, who: str) -> bool:
        return who in self._own

    def set_limit(self, who: str, limit: tuple[int, int] | None) -> None:
        """Give `who` its own limit, or None: back to the default. Takes effect on the next request."""
        if limit is None:
            self._own.pop(who, None)
        else:
            assert limit[0] >= 0 and limit[1] >= 1, limit
            self._own[who] = limit
        self._buckets.pop(who, None)  # a fresh bucket, full at the new burst

    def take(self, who: str) -> None:
        rate, burst = self._own.get(who, self.default)
        if rate == 0:
            return
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = _Bucket(burst)
        now_s = time.monotonic()
        bucket.tokens = min(burst, bucket.tokens + (now_s - bucket.updated_s) * rate)
        bucket.updated_s = now_s
        if bucket.tokens < 1:
            raise RateLimited("Too many requests; slow down and retry.")
        bucket.tokens -= 1


class AdminThrottle:
    """Failed admin authentications per client address, on the injected clock. `failures_max`
    failures within `window_ms` are allowed; the next attempt (any, a right token too) is refused
    with AdminAuthThrottled for `lockout_ms`. At most `addresses_max` addresses are tracked (the
    least recently seen is forgotten first), so a flood of addresses cannot grow memory."""

    def __init__(self, *, failures_max: int = 5, window_ms: int = 60_000, lockout_ms: int = 60_000,
                 addresses_max: int = 10_000) -> None:
        assert failures_max >= 1 and window_ms > 0 and lockout_ms > 0 and addresses_max >= 1
        self._failures_max = failures_max
        self._window_ms = window_ms
        self._lockout_ms = lockout_ms
        self._addresses_max = addresses_max
        self._failures: OrderedDict[str, deque[int]] = OrderedDict()
        self._locked_until_ms: dict[str, int] = {}

    def check(self, address: str, *, now_ms: int) -> None:
        """Before an attempt is judged: raises AdminAuthThrottled while `address` is locked out,
        and locks it out when it already failed `failures_max` times in the window."""
        until_ms = self._locked_until_ms.get(address)
        if until_ms is not None and now_ms < until_ms:
            raise AdminAuthThrottled("Too many failed admin authentications from this address; retry later.",
                                     retry_after_s=max(1, -(-(until_ms - now_ms) // 1000)))
        if until_ms is not None:
            del self._locked_until_ms[address]
        recent = self._recent(address, now_ms=now_ms)
        if len(recent) >= self._failures_max:
            self._locked_until_ms[address] = now_ms + self._lockout_ms
            self._failures.pop(address, None)
            # The address only: the token tried is never logged.
            log.warning("admin authentication locked for %d s after %d failures within %d s from %s",
                        self._lockout_ms // 1000, len(recent), self._window_ms // 1000, address)
            raise AdminAuthThrottled("Too many failed admin authentications from this address; retry later.",
                                     retry_after_s=self._lockout_ms // 1000)

    def failed(self, address: str, *, now_ms: int) -> None:
        recent = self._recent(address, now_ms=now_ms)
        recent.append(now_ms)
        self._failures[address] = recent
        self._failures.move_to_end(address)
        while len(self._failures) > self._addresses_max:
            self._failures.popitem(last=False)
        while len(self._locked_until_ms) > self._addresses_max:
            self._locked_until_ms.pop(next(iter(self._locked_until_ms)))
        assert len(recent) <= self._failures_max

    def _recent(self, address: str, *, now_ms: int) -> deque[int]:
        recent = self._failures.get(address) or deque()
        while recent and recent[0] <= now_ms - self._window_ms:
            recent.popleft()
        return recent
