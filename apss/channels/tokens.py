"""Bearer tokens of the providers' OAuth endpoints (PayPal, PIX PSPs, Google), kept per set of
credentials until shortly before they expire, and forgotten on a 401 so the next call asks again.
Tokens are secrets: the cache is never logged or repr'd."""

from __future__ import annotations

from collections.abc import Callable, Hashable

__all__ = ["AccessTokens"]


class AccessTokens:
    def __init__(self, *, now_s: Callable[[], float], margin_s: int, entries_max: int = 256) -> None:
        self._now_s = now_s
        self._margin_s = margin_s  # a token is taken again this long before the provider says it expires
        self._entries_max = entries_max
        self._tokens: dict[Hashable, tuple[str, float]] = {}  # key -> (token, expires at)

    def __repr__(self) -> str:
        return f"AccessTokens({len(self._tokens)} kept)"

    def get(self, key: Hashable) -> str | None:
        kept = self._tokens.get(key)
        return kept[0] if kept is not None and kept[1] > self._now_s() else None

    def put(self, key: Hashable, token: str, *, expires_in_s: int) -> None:
        if key not in self._tokens and len(self._tokens) >= self._entries_max:
            self._tokens.pop(next(iter(self._tokens)))  # the oldest
        self._tokens[key] = (token, self._now_s() + max(0, expires_in_s - self._margin_s))

    def forget(self, key: Hashable) -> None:
        self._tokens.pop(key, None)
