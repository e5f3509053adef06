"""The in-process caches kept current across instances on PostgreSQL.

Each instance keeps in memory what it reads on every request: API keys, merchants, publishable
keys, origins and per-merchant rate limits (services/merchants/keys.py, cache "merchants"),
channel settings and routing (services/payments/channels.py, "channels"), risk rule sets
(services/risk/engine.py, "risk_rules"), pre-payment checks (services/risk/precheck.py,
"prechecks") and the set of erased players (services/players/privacy.py, "privacy"). The
instance that makes a change updates its own copy after commit; the others learn of it so:

- Notices. The changing transaction calls store/caches.py `changed(tx, cache, key)` (the key is a
  merchant id): the cache's generation is bumped and `NOTIFY apss_cache` sent, both in the
  transaction, so the notice exists only once it committed. Every instance LISTENs on one
  dedicated connection (store/pg_db.py) and hands each notice to the cache's `reload(key,
  generation)`, one at a time, which reloads that merchant's entry from the database before the
  next notice is read: from the first request after a notice is handled, a rolled or revoked
  key is refused there.
- Bounded staleness. A notice sent while an instance had no LISTEN in place (its connection was
  lost, it was reconnecting) is lost; so on every (re)connect every cache is reloaded whole, and
  every `database.cache_max_stale_s` (5 s by default) the generations are read (one small
  SELECT) and any cache whose generation moved past the last one handled is reloaded whole
  (`reload(None, generation)`). A change made through APSS is therefore seen on every instance
  within cache_max_stale_s plus one reload, even when its notice is lost. (A row changed by hand
  in the database without bumping its generation is seen at the next reconnect or restart.)

All reloads run under one lock, so a slow whole reload never overwrites a newer entry. On SQLite
(one process) `start` does nothing: no listener, no periodic read, nothing per request.
Rate-limit buckets and circuit breakers stay per process (a limit is N times looser on N
instances); a merchant's configured limit reloads with the merchant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from apss.store import caches as store
from apss.store.db import Database

__all__ = ["CacheSync", "Reload", "parse_notice"]

log = logging.getLogger("apss.caches")

# reload(key, generation): key is the entry (a merchant id), or None for the whole cache.
Reload = Callable[[str | None, int], Awaitable[None]]


def parse_notice(payload: str) -> tuple[str, str, int] | None:
    """(cache, key, generation) of a notice's payload (store/caches.py `changed`), or None for
    one this version cannot read."""
    cache, _, rest = payload.partition(":")
    key, _, generation = rest.rpartition(":")
    if not cache or not key or not generation.isdigit():
        return None
    return cache, key, int(generation)


class CacheSync:
    def __init__(self, *, db: Database, max_stale_s: float) -> None:
        assert max_stale_s > 0
        self._db = db
        self._max_stale_s = max_stale_s
        self._caches: dict[str, Reload] = {}
        self._handled: dict[str, int] = {}  # cache -> the newest generation reloaded (or being reloaded)
        self._dirty: set[str] = set()  # a reload failed: reloaded whole at the next check
        self._lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._checker: asyncio.Task | None = None
        # Observability (and the tests' proof of which path ran).
        self.notices_handled = 0
        self.whole_reloads = 0  # caches reloaded whole: at (re)connect or after a generation moved
        self.stale_reloads = 0  # of those, by the periodic check (a lost notice)

    @property
    def active(self) -> bool:
        """Whether caches are synchronised here (PostgreSQL)."""
        return self._db.dialect == "postgresql"

    def register(self, cache: str, reload: Reload) -> None:
        assert cache not in self._caches and ":" not in cache, cache
        self._caches[cache] = reload

    def handled(self, cache: str) -> int:
        """The newest generation of `cache` this instance reloaded or is reloading (0 on SQLite)."""
        return self._handled.get(cache, 0)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, *, connect_wait_s: float = 10.0) -> None:
        """On PostgreSQL: LISTEN (waiting up to `connect_wait_s` for it) and start the periodic
        check. The caches were loaded before; the first connect reloads them once more, which
        covers what changed between that load and the LISTEN."""
        if not self.active:
            return
        self._db.listen(store.CHANNEL, on_connect=self._on_connect, on_notice=self._on_notice,  # type: ignore[attr-defined]
                        probe_s=self._max_stale_s)
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=connect_wait_s)
        except TimeoutError:
            log.warning("no LISTEN connection within %.0f s: caches follow other instances by the periodic check "
                        "(every %.1f s) until it connects", connect_wait_s, self._max_stale_s)
        self._checker = asyncio.create_task(self._check_forever(), name="apss-cache-check")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None

    # -- notices ---------------------------------------------------------------------------
    async def _on_connect(self) -> None:
        """Every notice sent before this LISTEN may be lost: reload every cache whole."""
        async with self._lock:
            current = await store.generations(self._db)
            for cache in self._caches:
                await self._reload_whole(cache, current.get(cache, 0))
        self._connected.set()

    async def _on_notice(self, payload: str) -> None:
        notice = parse_notice(payload)
        if notice is None or notice[0] not in self._caches:
            log.warning("a cache notice this version does not know: %r", payload[:80])
            return
        cache, key, generation = notice
        async with self._lock:
            # Marked before the reload: a risk rule set read from an older snapshot is not kept.
            self._handled[cache] = max(self._handled.get(cache, 0), generation)
            try:
                await self._caches[cache](key, generation)
            except Exception as exc:  # e.g. the database briefly unavailable: the next check reloads it whole
                log.warning("reloading %s for a notice failed (%s); the next check reloads it whole",
                            cache, type(exc).__name__)
                self._dirty.add(cache)
            self.notices_handled += 1

    # -- the periodic check ----------------------------------------------------------------
    async def check(self) -> list[str]:
        """Reload whole every cache whose generation is not the last handled (a lost notice; or a
        restored database), or whose last reload failed; returns their names."""
        async with self._lock:
            current = await store.generations(self._db)
            moved = [c for c in self._caches if current.get(c, 0) != self._handled.get(c, 0) or c in self._dirty]
            for cache in moved:
                await self._reload_whole(cache, current.get(cache, 0))
                self.stale_reloads += 1
        if moved:
            log.info("caches reloaded by the staleness check (a notice was lost): %s", ", ".join(moved))
        return moved

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self._max_stale_s)
            try:
                await self.check()
            except Exception as exc:  # the database unavailable: tried again at the next period
                log.warning("the cache staleness check failed (%s)", type(exc).__name__)

    async def _reload_whole(self, cache: str, generation: int) -> None:
        self._handled[cache] = generation  # (lower than before only after the database was restored)
        self._dirty.discard(cache)
        try:
            await self._caches[cache](None, generation)
        except BaseException:
            self._dirty.add(cache)
            raise
        self.whole_reloads += 1
