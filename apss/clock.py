"""Time comes from an injectable clock so tests can move it. All times are UTC."""

from __future__ import annotations

import functools
import threading
import time
from datetime import datetime, timezone
from typing import Protocol

__all__ = ["Clock", "SystemClock", "TestClock", "format_rfc3339", "parse_rfc3339"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class TestClock:
    """A clock that only moves when a test moves it (thread-safe: the writer thread reads it)."""

    __test__ = False  # not a pytest class

    def __init__(self, start_ms: int | None = None) -> None:
        self._now_ms = start_ms if start_ms is not None else SystemClock().now_ms()
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def advance(self, *, seconds: float) -> None:
        assert seconds >= 0, "time never runs backwards"
        with self._lock:
            self._now_ms += int(seconds * 1000)

    def advance_to(self, ms: int) -> None:
        """Move to `ms` (the test-clock mode steps its jobs' due times this way)."""
        with self._lock:
            assert ms >= self._now_ms, "time never runs backwards"
            self._now_ms = ms


def format_rfc3339(ms: int) -> str:
    """`2026-11-25T15:04:05Z` (seconds precision, as API.md shows)."""
    assert ms >= 0
    return _format_second(ms // 1000)


@functools.lru_cache(maxsize=8192)
def _format_second(second: int) -> str:
    # Cached: a request renders the same few seconds (created_at, expires_at...) again and again,
    # and formatting one costs about 50 times the cache lookup.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def parse_rfc3339(text: str) -> int:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)
