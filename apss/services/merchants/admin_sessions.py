"""Admin dashboard sessions, stored in the database so that a restart does not log the admin out.

The cookie carries a random token; the database holds only its SHA-256 (long random strings need
no slow hash), so a copy of the database gives no usable cookie. The session's CSRF token is
derived from the cookie's token (SHA-256 under another prefix), so it is neither stored nor
guessable from the row. Sessions expire after `idle_ttl_s` without use; each use extends one (at
most one write per `touch_interval_s`, so browsing does not write on every page). An expired
session is refused and deleted; `prune` (a scheduler job) and every login delete the rest."""

from __future__ import annotations

import hashlib
import re
import secrets

import msgspec

from apss.clock import Clock
from apss.store import admin_sessions as store
from apss.store.db import Database, Tx

__all__ = ["AdminSession", "AdminSessions", "token_digest"]

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_PRUNE_BATCH_MAX = 10_000


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _csrf_of(token: str) -> str:
    return hashlib.sha256(b"apss-admin-csrf:" + token.encode()).hexdigest()


class AdminSession(msgspec.Struct, frozen=True, kw_only=True):
    token_sha256: str
    csrf: str  # the forms' token of this session
    merchant_id: str | None  # the merchant the admin looked at last
    expires_at_ms: int


class AdminSessions:
    def __init__(self, *, db: Database, clock: Clock, idle_ttl_s: int = 8 * 3600, sessions_max: int = 1000,
                 touch_interval_s: int = 60) -> None:
        assert idle_ttl_s > 0 and sessions_max > 0 and 0 <= touch_interval_s < idle_ttl_s
        self._db = db
        self._clock = clock
        self._idle_ttl_ms = idle_ttl_s * 1000
        self._sessions_max = sessions_max
        self._touch_interval_ms = touch_interval_s * 1000

    async def create(self) -> tuple[str, AdminSession]:
        """A new session: returns the cookie's token (only here, never stored) and the session."""
        token = secrets.token_urlsafe(32)
        digest = token_digest(token)
        now_ms = self._clock.now_ms()
        expires_at_ms = now_ms + self._idle_ttl_ms

        def transaction(tx: Tx) -> None:
            store.delete_expired(tx, now_ms=now_ms, limit=_PRUNE_BATCH_MAX)
            over = store.count_sessions_tx(tx) - self._sessions_max + 1
            if over > 0:
                store.delete_oldest(tx, count=over)
            store.insert_session(tx, token_sha256=digest, now_ms=now_ms, expires_at_ms=expires_at_ms)
            assert store.count_sessions_tx(tx) <= self._sessions_max

        await self._db.write(transaction)
        assert _TOKEN_RE.match(token)
        return token, AdminSession(token_sha256=digest, csrf=_csrf_of(token), merchant_id=None, expires_at_ms=expires_at_ms)

    async def get(self, token: str | None) -> AdminSession | None:
        """The session of a cookie's token; None when unknown or expired (an expired one is deleted)."""
        if not token or not _TOKEN_RE.match(token):
            return None
        digest = token_digest(token)
        row = await store.fetch_session(self._db, token_sha256=digest)
        if row is None:
            return None
        now_ms = self._clock.now_ms()
        if row["expires_at_ms"] <= now_ms:
            await self._db.write(lambda tx: store.delete_session(tx, token_sha256=digest))
            return None
        expires_at_ms = row["expires_at_ms"]
        if now_ms + self._idle_ttl_ms - expires_at_ms >= self._touch_interval_ms:  # idle timeout: use extends it
            expires_at_ms = now_ms + self._idle_ttl_ms
            extended = await self._db.write(lambda tx: store.touch_session(
                tx, token_sha256=digest, now_ms=now_ms, expires_at_ms=expires_at_ms))
            if not extended:  # logged out meanwhile
                return None
        return AdminSession(token_sha256=digest, csrf=_csrf_of(token), merchant_id=row["merchant_id"],
                            expires_at_ms=expires_at_ms)

    async def remember_merchant(self, session: AdminSession, merchant_id: str) -> None:
        if session.merchant_id == merchant_id:
            return
        now_ms = self._clock.now_ms()
        await self._db.write(lambda tx: store.set_merchant(tx, token_sha256=session.token_sha256,
                                                           merchant_id=merchant_id, now_ms=now_ms))

    async def drop(self, token: str | None) -> None:
        if token and _TOKEN_RE.match(token):
            digest = token_digest(token)
            await self._db.write(lambda tx: store.delete_session(tx, token_sha256=digest))

    async def prune(self) -> int:
        """Delete expired sessions (a scheduler job); returns how many."""
        now_ms = self._clock.now_ms()
        return await self._db.write(lambda tx: store.delete_expired(tx, now_ms=now_ms, limit=_PRUNE_BATCH_MAX))
