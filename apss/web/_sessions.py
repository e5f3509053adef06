"""Admin dashboard sessions, kept server-side in memory.

Why server-side rather than a signed cookie: logout (and a restart, or a rotated admin token)
ends a session at once, the cookie is a bare random id that says nothing, and no signing key has
to be derived or rotated. The cost, an admin logging in again after a restart, suits a
one-process system. Sessions are keyed by the SHA-256 of the cookie value, so the map never
holds a usable cookie; each carries its own CSRF token for the forms of that session."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["AdminSession", "AdminSessions", "tokens_match"]


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Constant time; an empty or missing token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class AdminSession:
    __slots__ = ("csrf", "expires_at_ms")

    def __init__(self, *, csrf: str, expires_at_ms: int) -> None:
        self.csrf = csrf
        self.expires_at_ms = expires_at_ms


class AdminSessions:
    def __init__(self, *, idle_ttl_s: int = 8 * 3600, sessions_max: int = 1000) -> None:
        assert idle_ttl_s > 0 and sessions_max > 0
        self._idle_ttl_ms = idle_ttl_s * 1000
        self._sessions_max = sessions_max
        self._by_digest: dict[str, AdminSession] = {}

    def create(self, *, now_ms: int) -> tuple[str, AdminSession]:
        """A new session: returns the cookie value (shown only here) and the session."""
        self._prune(now_ms)
        while len(self._by_digest) >= self._sessions_max:  # oldest first: dicts keep insertion order
            self._by_digest.pop(next(iter(self._by_digest)))
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(csrf=secrets.token_urlsafe(32), expires_at_ms=now_ms + self._idle_ttl_ms)
        self._by_digest[_digest(session_id)] = session
        assert len(self._by_digest) <= self._sessions_max
        return session_id, session

    def get(self, session_id: str | None, *, now_ms: int) -> AdminSession | None:
        if not session_id or len(session_id) > 128:
            return None
        session = self._by_digest.get(_digest(session_id))
        if session is None:
            return None
        if session.expires_at_ms <= now_ms:
            self._by_digest.pop(_digest(session_id), None)
            return None
        session.expires_at_ms = now_ms + self._idle_ttl_ms  # idle timeout: each use extends it
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_digest.pop(_digest(session_id), None)

    def _prune(self, now_ms: int) -> None:
        for digest in [d for d, s in self._by_digest.items() if s.expires_at_ms <= now_ms]:
            del self._by_digest[digest]
