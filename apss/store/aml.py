"""AML and KYC: thresholds per merchant, AML cases with their hits and moves, player KYC,
minors' limit presets and monthly spend, KYC holds of paid orders, merchant KYC."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "append_hit",
    "case_events",
    "case_hits",
    "fetch_case",
    "fetch_player_kyc",
    "fetch_settings",
    "get_case_tx",
    "get_player_kyc_tx",
    "get_preset_tx",
    "held_orders_tx",
    "insert_case",
    "insert_case_event",
    "insert_hold",
    "insert_spend",
    "list_cases",
    "list_presets",
    "merchant_kyc_tx",
    "month_spend_tx",
    "open_case_tx",
    "set_case_status",
    "set_hold_status",
    "settings_tx",
    "upsert_player_kyc",
    "upsert_preset",
    "upsert_settings",
]

_SETTINGS = ("daily_threshold", "rolling_30d_threshold", "structuring_threshold", "structuring_count",
             "structuring_window_h", "structuring_margin_bps", "kyc_payment_threshold", "kyc_30d_threshold")


# -- settings ----------------------------------------------------------------------------------
def settings_tx(tx: Tx, *, merchant_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM aml_settings WHERE merchant_id = ?", (merchant_id,))


async def fetch_settings(db: Database, *, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM aml_settings WHERE merchant_id = ?", (merchant_id,))


def upsert_settings(tx: Tx, row: dict) -> None:
    assert set(row) == {"merchant_id", "updated_at_ms", *_SETTINGS}, set(row)
    columns = ", ".join(("merchant_id", *_SETTINGS, "updated_at_ms"))
    values = ", ".join(f":{c}" for c in ("merchant_id", *_SETTINGS, "updated_at_ms"))
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*_SETTINGS, "updated_at_ms"))
    tx.execute(f"INSERT INTO aml_settings ({columns}) VALUES ({values}) ON CONFLICT (merchant_id) DO UPDATE SET {updates}",
               row)


# -- cases -------------------------------------------------------------------------------------
def open_case_tx(tx: Tx, *, merchant_id: str, player_id: str, kind: str) -> sqlite3.Row | None:
    """The player's case of this kind that is still open or under investigation (at most one:
    the partial unique index aml_cases_one_open)."""
    return tx.one("SELECT * FROM aml_cases WHERE merchant_id = ? AND player_id = ? AND kind = ?"
                  " AND status IN ('open', 'investigating')", (merchant_id, player_id, kind))


def insert_case(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO aml_cases (id, merchant_id, player_id, kind, status, currency, hits, amount_total, note,"
               " created_at_ms, updated_at_ms) VALUES (:id, :merchant_id, :player_id, :kind, 'open', :currency, 0, 0,"
               " NULL, :created_at_ms, :created_at_ms)", row)
    tx.execute("INSERT INTO aml_case_events (case_id, seq, from_status, to_status, note, created_at_ms)"
               " VALUES (?, 1, NULL, 'open', NULL, ?)", (row["id"], row["created_at_ms"]))


def append_hit(tx: Tx, *, case_id: str, order_id: str, payment_id: str, amount: int, observed: int, threshold: int,
               now_ms: int) -> int:
    """Add a hit to the case; returns its number (1 for the hit that opened it)."""
    seq = tx.one("UPDATE aml_cases SET hits = hits + 1, amount_total = amount_total + ?, updated_at_ms = ? WHERE id = ?"
                 " RETURNING hits", (amount, now_ms, case_id))["hits"]
    tx.execute("INSERT INTO aml_case_hits (case_id, seq, order_id, payment_id, amount, observed, threshold, created_at_ms)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (case_id, seq, order_id, payment_id, amount, observed, threshold, now_ms))
    return seq


def get_case_tx(tx: Tx, *, merchant_id: str, case_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM aml_cases WHERE id = ? AND merchant_id = ?", (case_id, merchant_id))


async def fetch_case(db: Database, *, merchant_id: str, case_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM aml_cases WHERE id = ? AND merchant_id = ?", (case_id, merchant_id))


def set_case_status(tx: Tx, *, case_id: str, from_status: str, to_status: str, note: str | None, now_ms: int) -> bool:
    """The guarded move (`WHERE status = :from`) and its event; False when the case had moved."""
    moved = tx.execute("UPDATE aml_cases SET status = ?, note = coalesce(?, note), updated_at_ms = ?"
                       " WHERE id = ? AND status = ?", (to_status, note, now_ms, case_id, from_status)).rowcount == 1
    if moved:
        tx.execute("INSERT INTO aml_case_events (case_id, seq, from_status, to_status, note, created_at_ms)"
                   " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM aml_case_events WHERE case_id = ?",
                   (case_id, from_status, to_status, note, now_ms, case_id))
    return moved


def insert_case_event(tx: Tx, *, case_id: str, status: str, note: str, now_ms: int) -> None:
    """A note without a move (from = to)."""
    tx.execute("INSERT INTO aml_case_events (case_id, seq, from_status, to_status, note, created_at_ms)"
               " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM aml_case_events WHERE case_id = ?",
               (case_id, status, status, note, now_ms, case_id))
    tx.execute("UPDATE aml_cases SET note = ?, updated_at_ms = ? WHERE id = ?", (note, now_ms, case_id))


async def list_cases(db: Database, *, merchant_id: str, after_id: str | None, limit: int, status: str | None,
                     player_id: str | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM aml_cases WHERE merchant_id = ? AND (? IS NULL OR id < ?) AND (? IS NULL OR status = ?)"
        " AND (? IS NULL OR player_id = ?) ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, status, status, player_id, player_id, limit))


async def case_hits(db: Database, *, case_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM aml_case_hits WHERE case_id = ? ORDER BY seq", (case_id,))


async def case_events(db: Database, *, case_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM aml_case_events WHERE case_id = ? ORDER BY seq", (case_id,))


# -- player KYC --------------------------------------------------------------------------------
def upsert_player_kyc(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO player_kyc (merchant_id, player_id, status, birth_date_sealed, age, jurisdiction, updated_at_ms)"
               " VALUES (:merchant_id, :player_id, :status, :birth_date_sealed, :age, :jurisdiction, :updated_at_ms)"
               " ON CONFLICT (merchant_id, player_id) DO UPDATE SET status = excluded.status,"
               " birth_date_sealed = excluded.birth_date_sealed, age = excluded.age, jurisdiction = excluded.jurisdiction,"
               " updated_at_ms = excluded.updated_at_ms", row)


def get_player_kyc_tx(tx: Tx, *, merchant_id: str, player_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM player_kyc WHERE merchant_id = ? AND player_id = ?", (merchant_id, player_id))


async def fetch_player_kyc(db: Database, *, merchant_id: str, player_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM player_kyc WHERE merchant_id = ? AND player_id = ?", (merchant_id, player_id))


# -- minors' limits ----------------------------------------------------------------------------
def upsert_preset(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO minor_limit_presets (merchant_id, jurisdiction, timezone, bands, updated_at_ms)"
               " VALUES (:merchant_id, :jurisdiction, :timezone, :bands, :updated_at_ms)"
               " ON CONFLICT (merchant_id, jurisdiction) DO UPDATE SET timezone = excluded.timezone,"
               " bands = excluded.bands, updated_at_ms = excluded.updated_at_ms", row)


def get_preset_tx(tx: Tx, *, merchant_id: str, jurisdiction: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM minor_limit_presets WHERE merchant_id = ? AND jurisdiction = ?", (merchant_id, jurisdiction))


async def list_presets(db: Database, *, merchant_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT * FROM minor_limit_presets WHERE merchant_id = ? ORDER BY jurisdiction",
                              (merchant_id,))


def insert_spend(tx: Tx, row: dict) -> None:
    tx.execute("INSERT INTO minor_spend (order_id, merchant_id, player_id, month, currency, amount, created_at_ms)"
               " VALUES (:order_id, :merchant_id, :player_id, :month, :currency, :amount, :created_at_ms)", row)


def month_spend_tx(tx: Tx, *, merchant_id: str, player_id: str, month: str, currency: str,
                   statuses: tuple[str, ...]) -> int:
    """What the player's orders of `month` in `statuses` (pending and paid ones) count, in `currency`."""
    marks = ", ".join("?" for _ in statuses)
    row = tx.one(f"SELECT coalesce(sum(s.amount), 0) AS total FROM minor_spend s JOIN orders o ON o.id = s.order_id"
                 f" WHERE s.merchant_id = ? AND s.player_id = ? AND s.month = ? AND s.currency = ? AND o.status IN ({marks})",
                 (merchant_id, player_id, month, currency, *statuses))
    return row["total"]


# -- KYC holds ---------------------------------------------------------------------------------
def insert_hold(tx: Tx, *, order_id: str, merchant_id: str, player_id: str, risk_hold: bool, now_ms: int) -> None:
    tx.execute("INSERT INTO kyc_holds (order_id, merchant_id, player_id, status, risk_hold, created_at_ms, updated_at_ms)"
               " VALUES (?, ?, ?, 'held', ?, ?, ?)", (order_id, merchant_id, player_id, int(risk_hold), now_ms, now_ms))


def held_orders_tx(tx: Tx, *, merchant_id: str, player_id: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM kyc_holds WHERE merchant_id = ? AND player_id = ? AND status = 'held' ORDER BY order_id",
                  (merchant_id, player_id))


def set_hold_status(tx: Tx, *, order_id: str, status: str, now_ms: int) -> bool:
    return tx.execute("UPDATE kyc_holds SET status = ?, updated_at_ms = ? WHERE order_id = ? AND status = 'held'",
                      (status, now_ms, order_id)).rowcount == 1


# -- merchant KYC ------------------------------------------------------------------------------
def merchant_kyc_tx(tx: Tx, *, merchant_id: str) -> str | None:
    row = tx.one("SELECT kyc_status FROM merchants WHERE id = ?", (merchant_id,))
    return row["kyc_status"] if row else None
