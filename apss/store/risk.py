"""Risk control: rule sets, list entries, velocity counters, decisions, an order's risk facts."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable

from apss.store.db import Database, Tx

__all__ = [
    "add_distinct",
    "bump_counters",
    "categories_tx",
    "counter_sums_tx",
    "delete_list_item",
    "delete_precheck",
    "distinct_counts_tx",
    "fetch_facts",
    "fetch_precheck",
    "first_seen_tx",
    "get_facts_tx",
    "get_list_item",
    "get_rules",
    "has_decision_tx",
    "hash_key_tx",
    "insert_decision",
    "insert_facts",
    "insert_hash_key",
    "insert_list_item",
    "list_decisions",
    "list_in_review",
    "list_items",
    "list_values_tx",
    "marks_seen_tx",
    "prune_counters",
    "prune_day_counters",
    "replace_rules",
    "rules_tx",
    "see_marks",
    "see_player",
    "set_facts_flags",
    "upsert_precheck",
    "window_sum_tx",
]

GRAINS_S = (60, 3600)
DAY_GRAIN_S = 86_400  # day buckets: only the AML counters (30-day window) keep them, for 31 days


# -- rules -------------------------------------------------------------------------------------
def replace_rules(tx: Tx, *, merchant_id: str, rules: list[tuple[str, str, bool]], now_ms: int) -> None:
    tx.execute("DELETE FROM risk_rules WHERE merchant_id = ?", (merchant_id,))
    tx.executemany("INSERT INTO risk_rules (merchant_id, position, name, rule, enabled) VALUES (?, ?, ?, ?, ?)",
                   [(merchant_id, i, name, rule, int(enabled)) for i, (name, rule, enabled) in enumerate(rules)])
    tx.execute("INSERT INTO risk_rule_sets (merchant_id, updated_at_ms) VALUES (?, ?)"
               " ON CONFLICT (merchant_id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms", (merchant_id, now_ms))


def rules_tx(tx: Tx, *, merchant_id: str) -> list[sqlite3.Row] | None:
    """The merchant's rules in order, or None when it never set any (the defaults apply)."""
    if tx.one("SELECT 1 FROM risk_rule_sets WHERE merchant_id = ?", (merchant_id,)) is None:
        return None
    return tx.all("SELECT * FROM risk_rules WHERE merchant_id = ? ORDER BY position", (merchant_id,))


async def get_rules(db: Database, *, merchant_id: str) -> list[sqlite3.Row] | None:
    if await db.fetch_one("SELECT 1 FROM risk_rule_sets WHERE merchant_id = ?", (merchant_id,)) is None:
        return None
    return await db.fetch_all("SELECT * FROM risk_rules WHERE merchant_id = ? ORDER BY position", (merchant_id,))


# -- lists -------------------------------------------------------------------------------------
def insert_list_item(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO risk_list_items (id, merchant_id, list, value, display, reason, created_by, expires_at_ms,"
               " created_at_ms) VALUES (:id, :merchant_id, :list, :value, :display, :reason, :created_by, :expires_at_ms,"
               " :created_at_ms)", row)


def delete_list_item(tx: Tx, *, merchant_id: str, list_name: str, item_id: str) -> sqlite3.Row | None:
    row = tx.one("SELECT * FROM risk_list_items WHERE id = ? AND merchant_id = ? AND list = ?",
                 (item_id, merchant_id, list_name))
    if row is not None:
        tx.execute("DELETE FROM risk_list_items WHERE id = ?", (item_id,))
    return row


async def get_list_item(db: Database, *, merchant_id: str, item_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM risk_list_items WHERE id = ? AND merchant_id = ?", (item_id, merchant_id))


async def list_items(db: Database, *, merchant_id: str, list_name: str, after_id: str | None, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM risk_list_items WHERE merchant_id = ? AND list = ? AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, list_name, after_id, after_id, limit))


def list_values_tx(tx: Tx, *, merchant_id: str, list_names: Iterable[str], now_ms: int) -> list[sqlite3.Row]:
    """The unexpired values of the named lists (list, value)."""
    names = sorted(set(list_names))
    if not names:
        return []
    marks = ", ".join("?" for _ in names)
    return tx.all(f"SELECT list, value FROM risk_list_items WHERE merchant_id = ? AND list IN ({marks})"
                  " AND (expires_at_ms IS NULL OR expires_at_ms > ?)", (merchant_id, *names, now_ms))


# -- the hash key --------------------------------------------------------------------------------
def hash_key_tx(tx: Tx) -> str | None:
    row = tx.one("SELECT value FROM settings WHERE name = 'risk_hash_key'")
    return row["value"] if row else None


def insert_hash_key(tx: Tx, *, sealed: str) -> None:
    tx.execute("INSERT INTO settings (name, value) VALUES ('risk_hash_key', ?)", (sealed,))


# -- counters ----------------------------------------------------------------------------------
def bump_counters(tx: Tx, *, merchant_id: str, increments: list[tuple[str, str, int]], now_s: int,
                  grains_s: tuple[int, ...] = GRAINS_S) -> None:
    """Add to each (dimension, key) counter in its minute and hour bucket (and, for the AML
    counters, `DAY_GRAIN_S` buckets for their 30-day window)."""
    assert set(grains_s) <= {*GRAINS_S, DAY_GRAIN_S}, grains_s
    rows = [(merchant_id, dimension, key, grain, now_s // grain, amount)
            for dimension, key, amount in increments for grain in grains_s]
    tx.executemany("INSERT INTO risk_counters (merchant_id, dimension, key, grain_s, bucket, value) VALUES (?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (merchant_id, dimension, key, grain_s, bucket) DO UPDATE SET value = risk_counters.value + excluded.value",
                   rows)


def add_distinct(tx: Tx, *, merchant_id: str, members: list[tuple[str, str, str]], now_s: int) -> None:
    rows = [(merchant_id, dimension, key, grain, now_s // grain, member)
            for dimension, key, member in members for grain in GRAINS_S]
    tx.executemany("INSERT OR IGNORE INTO risk_distinct (merchant_id, dimension, key, grain_s, bucket, member)"
                   " VALUES (?, ?, ?, ?, ?, ?)", rows)


def _window_sql(table: str, value: str, keys: int, dialect: str) -> str:
    # Minute buckets give the last hour; hour buckets the last day and week (to the hour). All the
    # (dimension, key) pairs of one order in one statement, each an index range on the primary key.
    # The pairs are a VALUES table joined on the primary key's prefix: one index seek per pair
    # (SQLite's CROSS JOIN keeps that order; PostgreSQL's planner needs no hint and takes no ON there).
    join = "CROSS JOIN" if dialect == "sqlite" else "JOIN"
    pairs = ", ".join(f"(?{5 + 2 * i}, ?{6 + 2 * i})" for i in range(keys))
    return (f"SELECT c.dimension, c.key, "
            f"{value.format(cond='c.grain_s = 60 AND c.bucket >= ?1')} AS h1, "
            f"{value.format(cond='c.grain_s = 3600 AND c.bucket >= ?2')} AS d1, "
            f"{value.format(cond='c.grain_s = 3600 AND c.bucket >= ?3')} AS w1 "
            f"FROM (VALUES {pairs}) AS k {join} {table} AS c ON c.merchant_id = ?4 AND c.dimension = k.column1"
            f" AND c.key = k.column2 AND ((c.grain_s = 60 AND c.bucket >= ?1) OR (c.grain_s = 3600 AND c.bucket >= ?3))"
            f" GROUP BY c.dimension, c.key")


_SUM = "coalesce(sum(CASE WHEN {cond} THEN c.value END), 0)"
_DISTINCT = "count(DISTINCT CASE WHEN {cond} THEN c.member END)"


@functools.lru_cache(maxsize=64)
def _window_statement(table: str, keys: int, dialect: str) -> str:
    return _window_sql(table, _SUM if table == "risk_counters" else _DISTINCT, keys, dialect)


def _windows(now_s: int) -> tuple[int, int, int]:
    # The current bucket counts whole: the hour window is 60 minute buckets, the day 24 hour buckets.
    return now_s // 60 - 59, now_s // 3600 - 23, now_s // 3600 - 167


def _window_counts_tx(tx: Tx, table: str, *, merchant_id: str, keys: list[tuple[str, str]],
                      now_s: int) -> dict[tuple[str, str], tuple[int, int, int]]:
    out = dict.fromkeys(keys, (0, 0, 0))
    if not keys:
        return out
    unique = list(dict.fromkeys(keys))
    params = (*_windows(now_s), merchant_id, *(part for pair in unique for part in pair))
    for row in tx.all(_window_statement(table, len(unique), tx.dialect), params):
        out[(row["dimension"], row["key"])] = (row["h1"], row["d1"], row["w1"])
    return out


def counter_sums_tx(tx: Tx, *, merchant_id: str, keys: list[tuple[str, str]], now_s: int) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(dimension, key) -> (last hour, last day, last week)."""
    return _window_counts_tx(tx, "risk_counters", merchant_id=merchant_id, keys=keys, now_s=now_s)


def distinct_counts_tx(tx: Tx, *, merchant_id: str, keys: list[tuple[str, str]], now_s: int) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(dimension, key) -> distinct members in (last hour, last day, last week)."""
    return _window_counts_tx(tx, "risk_distinct", merchant_id=merchant_id, keys=keys, now_s=now_s)


def window_sum_tx(tx: Tx, *, merchant_id: str, dimension: str, key: str, grain_s: int, buckets: int,
                  now_s: int) -> int:
    """The sum of a counter over its last `buckets` buckets of `grain_s` (the current one whole)."""
    assert grain_s in (*GRAINS_S, DAY_GRAIN_S) and buckets >= 1, (grain_s, buckets)
    row = tx.one("SELECT coalesce(sum(value), 0) AS total FROM risk_counters WHERE merchant_id = ? AND dimension = ?"
                 " AND key = ? AND grain_s = ? AND bucket >= ?",
                 (merchant_id, dimension, key, grain_s, now_s // grain_s - (buckets - 1)))
    return row["total"]


def prune_day_counters(tx: Tx, *, before_s: int) -> int:
    """Delete the day buckets wholly older than `before_s` (kept 31 days, for the 30-day window)."""
    return tx.execute("DELETE FROM risk_counters WHERE grain_s = ? AND bucket < ?",
                      (DAY_GRAIN_S, before_s // DAY_GRAIN_S)).rowcount


def prune_counters(tx: Tx, *, before_s: int) -> int:
    """Delete the buckets wholly older than `before_s` (the retention job, once an hour: at most
    an hour of buckets each time)."""
    removed = 0
    for table in ("risk_counters", "risk_distinct"):
        for grain in GRAINS_S:
            removed += tx.execute(f"DELETE FROM {table} WHERE grain_s = ? AND bucket < ?", (grain, before_s // grain)).rowcount
    return removed


def see_player(tx: Tx, *, merchant_id: str, player_id: str, now_ms: int) -> None:
    tx.execute("INSERT OR IGNORE INTO risk_players (merchant_id, player_id, first_seen_ms) VALUES (?, ?, ?)",
               (merchant_id, player_id, now_ms))


def first_seen_tx(tx: Tx, *, merchant_id: str, player_id: str) -> int | None:
    row = tx.one("SELECT first_seen_ms FROM risk_players WHERE merchant_id = ? AND player_id = ?", (merchant_id, player_id))
    return row["first_seen_ms"] if row else None


_DAY_MS = 86_400_000


MARKS_COUNTED_MAX = 100  # player_devices_seen / player_ips_seen stop counting here (a bounded index range)


def marks_seen_tx(tx: Tx, *, merchant_id: str, player_id: str, device: str | None, ip: str | None,
                  country: str | None) -> sqlite3.Row:
    """(device_first_seen_ms, ip_first_seen_ms, country_seen, any_country, devices_seen, ips_seen):
    when the player was first seen with this device's and this IP's mark (NULL: never), whether
    with this IP country's mark and with any IP country (1 or NULL), and how many devices and IPs
    the player was seen with (each capped at MARKS_COUNTED_MAX): primary-key seeks and two bounded
    range scans of the player's own marks."""
    return tx.one(
        "SELECT (SELECT first_seen_ms FROM risk_player_marks WHERE merchant_id = ?1 AND player_id = ?2 AND kind = 'device'"
        " AND mark = ?3) AS device_first_seen_ms, (SELECT first_seen_ms FROM risk_player_marks WHERE merchant_id = ?1"
        " AND player_id = ?2 AND kind = 'ip' AND mark = ?5) AS ip_first_seen_ms, (SELECT 1 FROM risk_player_marks"
        " WHERE merchant_id = ?1 AND player_id = ?2"
        " AND kind = 'ip_country' AND mark = ?4) AS country_seen, (SELECT 1 FROM risk_player_marks WHERE"
        " merchant_id = ?1 AND player_id = ?2 AND kind = 'ip_country' LIMIT 1) AS any_country,"
        " (SELECT count(*) FROM (SELECT 1 FROM risk_player_marks WHERE merchant_id = ?1 AND player_id = ?2"
        f" AND kind = 'device' LIMIT {MARKS_COUNTED_MAX}) AS d) AS devices_seen,"
        " (SELECT count(*) FROM (SELECT 1 FROM risk_player_marks WHERE merchant_id = ?1 AND player_id = ?2"
        f" AND kind = 'ip' LIMIT {MARKS_COUNTED_MAX}) AS i) AS ips_seen",
        (merchant_id, player_id, device, country, ip))


def see_marks(tx: Tx, *, merchant_id: str, player_id: str, marks: list[tuple[str, str]], now_ms: int) -> None:
    """The player seen with each (kind, mark) now (first_seen_ms set once); last_seen_ms moves at
    most once a day (an index entry moved per mark and day, not per order)."""
    assert all(kind in ("device", "ip", "ip_country") for kind, _ in marks)
    tx.executemany("INSERT INTO risk_player_marks (merchant_id, player_id, kind, mark, first_seen_ms, last_seen_ms)"
                   " VALUES (?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (merchant_id, player_id, kind, mark) DO UPDATE SET last_seen_ms = excluded.last_seen_ms"
                   f" WHERE excluded.last_seen_ms >= risk_player_marks.last_seen_ms + {_DAY_MS}",
                   [(merchant_id, player_id, kind, mark, now_ms, now_ms) for kind, mark in marks])


# -- an order's facts and decisions ----------------------------------------------------------------
def insert_facts(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO risk_order_facts (order_id, merchant_id, ip_sealed, device_id_sealed, email_hash, email_domain,"
               " billing_country, three_ds, hold, new_device, new_ip_country, device_age_s, ip_age_s, player_devices_seen,"
               " player_ips_seen) VALUES (:order_id, :merchant_id, :ip_sealed, :device_id_sealed, :email_hash, :email_domain,"
               " :billing_country, :three_ds, :hold, :new_device, :new_ip_country, :device_age_s, :ip_age_s,"
               " :player_devices_seen, :player_ips_seen)", row)


def get_facts_tx(tx: Tx, *, order_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM risk_order_facts WHERE order_id = ?", (order_id,))


def set_facts_flags(tx: Tx, *, order_id: str, hold: bool) -> None:
    tx.execute("UPDATE risk_order_facts SET hold = ? WHERE order_id = ?", (int(hold), order_id))


def insert_decision(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO risk_decisions (order_id, merchant_id, stage, score, action, rules_fired, attributes, created_at_ms)"
               " VALUES (:order_id, :merchant_id, :stage, :score, :action, :rules_fired, :attributes, :created_at_ms)", row)


async def list_decisions(db: Database, *, order_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM risk_decisions WHERE order_id = ? ORDER BY seq DESC", (order_id,))


def has_decision_tx(tx: Tx, *, order_id: str) -> bool:
    return tx.one("SELECT 1 FROM risk_decisions WHERE order_id = ? LIMIT 1", (order_id,)) is not None


async def fetch_facts(db: Database, *, order_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM risk_order_facts WHERE order_id = ?", (order_id,))


def categories_tx(tx: Tx, *, product_ids: list[str]) -> list[str]:
    marks = ", ".join("?" for _ in product_ids)
    rows = tx.all(f"SELECT DISTINCT category FROM products WHERE id IN ({marks}) ORDER BY category", tuple(product_ids))
    return [row["category"] for row in rows]


async def list_in_review(db: Database, *, merchant_id: str, after_id: str | None, limit: int) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT id FROM orders WHERE merchant_id = ? AND status = 'in_review' AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, limit))


def upsert_precheck(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO risk_prechecks (merchant_id, url, secret_sealed, timeout_ms, on_timeout, updated_at_ms)"
               " VALUES (:merchant_id, :url, :secret_sealed, :timeout_ms, :on_timeout, :updated_at_ms)"
               " ON CONFLICT (merchant_id) DO UPDATE SET url = excluded.url, secret_sealed = excluded.secret_sealed,"
               " timeout_ms = excluded.timeout_ms, on_timeout = excluded.on_timeout, updated_at_ms = excluded.updated_at_ms",
               row)


def delete_precheck(tx: Tx, *, merchant_id: str) -> bool:
    return tx.execute("DELETE FROM risk_prechecks WHERE merchant_id = ?", (merchant_id,)).rowcount == 1


async def fetch_precheck(db: Database, *, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM risk_prechecks WHERE merchant_id = ?", (merchant_id,))
