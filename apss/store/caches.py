"""Invalidation of the in-process caches across instances (PostgreSQL only).

Several APSS instances on one PostgreSQL database each keep caches in memory (services/ops/
cache_sync.py names them). A transaction that changes cached data calls `changed(tx, cache, key)`:
on PostgreSQL it bumps the cache's row of `cache_generations` and sends
`NOTIFY apss_cache, '<cache>:<key>:<generation>'` from inside the transaction, so the notice is
delivered only if the transaction commits, and after it did; a rerun after a serialization failure
sends it once (the aborted attempt's notice is rolled back with it). Every instance LISTENs on
apss_cache (store/pg_db.py `PgDatabase.listen`) and reloads the entry; `generations` is the cheap
read of the periodic check that catches a lost notice.

On SQLite there is one process, whose caches are updated after commit by the code that made the
change: `changed` does nothing there and the table stays empty.
"""

from __future__ import annotations

from apss.store.db import Database, Tx

__all__ = ["CHANNEL", "changed", "generation_tx", "generations"]

CHANNEL = "apss_cache"  # the LISTEN/NOTIFY channel


def changed(tx: Tx, cache: str, key: str) -> int:
    """Record in `tx` that `cache`'s entry `key` changed; returns the cache's new generation (0 on
    SQLite, where nothing is recorded)."""
    assert ":" not in cache and ":" not in key, (cache, key)
    if tx.dialect != "postgresql":
        return 0
    row = tx.one(
        "INSERT INTO cache_generations (name, generation) VALUES (?, 1)"
        " ON CONFLICT (name) DO UPDATE SET generation = cache_generations.generation + 1 RETURNING generation",
        (cache,),
    )
    assert row is not None
    tx.one("SELECT pg_notify(?, ?)", (CHANNEL, f"{cache}:{key}:{row['generation']}"))
    return row["generation"]


async def generations(db: Database) -> dict[str, int]:
    """Every cache's generation (a cache never changed has none: 0)."""
    return {row["name"]: row["generation"] for row in await db.fetch_all("SELECT name, generation FROM cache_generations")}


def generation_tx(tx: Tx, cache: str) -> int:
    """`cache`'s generation as the transaction sees it (0 on SQLite, which records none)."""
    if tx.dialect != "postgresql":
        return 0
    row = tx.one("SELECT generation FROM cache_generations WHERE name = ?", (cache,))
    return 0 if row is None else row["generation"]
