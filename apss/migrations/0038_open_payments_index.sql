-- The open payments' partial index (the janitor's queue of payments whose outcome is not final)
-- spelled with `=` terms joined by OR instead of `IN (...)`, as migrations 0032 and 0037 did for
-- the hot tables' CHECKs: SQLite evaluates an index's WHERE on every row written to the table and
-- on every status change, and an IN list of three or more values builds a temporary index each
-- time. One payment insert and one status update cost 8.1-8.5 us of CPU with the IN list, 3.1-3.9
-- us with OR terms and 2.3-3.5 us without the index (a bare in-memory table, 50,000 rows, three
-- runs). Every order writes its payment and moves it. The same rows are indexed; the one query
-- that reads through it (store/channels.py `_OPEN_DUE`) spells the same predicate, as a partial
-- index is only used when the query's WHERE contains its terms. The same text on PostgreSQL.

DROP INDEX payments_open;
CREATE INDEX payments_open ON payments (created_at_ms)
    WHERE status = 'unknown' OR status = 'requires_action' OR status = 'processing' OR status = 'canceled';
