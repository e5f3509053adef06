-- Caches kept in process memory (API keys and merchants, channel settings and routing, risk rule
-- sets, pre-payment checks, erased players) are invalidated across instances on PostgreSQL: each
-- transaction that changes cached data bumps its cache's generation here and NOTIFYs apss_cache
-- (store/caches.py). An instance that lost a notice sees the generation move on its periodic
-- check (database.cache_max_stale_s) and reloads that cache whole. SQLite (one process) never
-- writes this table.
CREATE TABLE cache_generations (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL CHECK (generation >= 0)
) STRICT, WITHOUT ROWID;
