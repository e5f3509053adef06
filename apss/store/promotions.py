"""Promotions and what orders redeemed of them (order_promotions: held -> taken | released).

A promotion's `redemptions` and `units_used` move with its orders' holds in the same statement
batch; CHECK constraints bound them by `redemptions_max` and `units_max`, and callers check
first inside the writer (check-then-write is atomic there) and assert the UPDATE took.
"""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "automatic_promotions_tx",
    "code_taken",
    "get_promotion",
    "get_promotion_tx",
    "hold",
    "insert_promotion",
    "list_promotions",
    "order_promotion_ids_tx",
    "player_redemptions_tx",
    "promotion_by_code_tx",
    "release_holds",
    "released_fit_again",
    "retake_released",
    "take_holds",
    "update_promotion",
]


def insert_promotion(tx: Tx, row: dict) -> None:
    tx.execute(
        "INSERT INTO promotions (id, merchant_id, name, code, code_key, percent_off_bps, amount_off, product_ids,"
        " categories, starts_at_ms, ends_at_ms, redemptions_max, redemptions_per_player_max, units_max, stackable,"
        " active, created_at_ms, updated_at_ms) VALUES (:id, :merchant_id, :name, :code, :code_key, :percent_off_bps,"
        " :amount_off, :product_ids, :categories, :starts_at_ms, :ends_at_ms, :redemptions_max,"
        " :redemptions_per_player_max, :units_max, :stackable, :active, :created_at_ms, :created_at_ms)",
        row,
    )


def code_taken(tx: Tx, *, merchant_id: str, code_key: str) -> bool:
    return tx.one("SELECT 1 FROM promotions WHERE merchant_id = ? AND code_key = ?", (merchant_id, code_key)) is not None


def get_promotion_tx(tx: Tx, *, merchant_id: str, promotion_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM promotions WHERE id = ? AND merchant_id = ?", (promotion_id, merchant_id))


async def get_promotion(db: Database, *, merchant_id: str, promotion_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM promotions WHERE id = ? AND merchant_id = ?", (promotion_id, merchant_id))


async def list_promotions(db: Database, *, merchant_id: str, after_id: str | None, limit: int,
                          active: bool | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM promotions WHERE merchant_id = ? AND (? IS NULL OR id < ?) AND (? IS NULL OR active = ?)"
        " ORDER BY id DESC LIMIT ?",
        (merchant_id, after_id, after_id, active, active, limit),
    )


def update_promotion(tx: Tx, *, promotion_id: str, fields: dict, now_ms: int) -> None:
    assert fields and set(fields) <= {"active", "ends_at_ms"}, set(fields)
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    cursor = tx.execute(f"UPDATE promotions SET {assignments}, updated_at_ms = :now WHERE id = :id",
                        {**fields, "now": now_ms, "id": promotion_id})
    assert cursor.rowcount == 1


def _in_window(prefix: str = "") -> str:
    return (f" AND {prefix}active = 1 AND ({prefix}starts_at_ms IS NULL OR {prefix}starts_at_ms <= :now)"
            f" AND ({prefix}ends_at_ms IS NULL OR {prefix}ends_at_ms > :now)")


def promotion_by_code_tx(tx: Tx, *, merchant_id: str, code_key: str, now_ms: int) -> sqlite3.Row | None:
    """The active promotion with this code now, or None."""
    return tx.one(f"SELECT * FROM promotions WHERE merchant_id = :m AND code_key = :code{_in_window()}",
                  {"m": merchant_id, "code": code_key, "now": now_ms})


def automatic_promotions_tx(tx: Tx, *, merchant_id: str, now_ms: int, limit: int) -> list[sqlite3.Row]:
    """Active promotions without a code, in force now, oldest first; at most `limit`."""
    return tx.all(f"SELECT * FROM promotions WHERE merchant_id = :m AND code_key IS NULL{_in_window()}"
                  " ORDER BY id LIMIT :limit", {"m": merchant_id, "now": now_ms, "limit": limit})


def player_redemptions_tx(tx: Tx, *, promotion_id: str, player_id: str) -> int:
    """Orders of this player holding or having taken the promotion."""
    row = tx.one("SELECT count(*) AS n FROM order_promotions WHERE promotion_id = ? AND player_id = ? AND state <> 'released'",
                 (promotion_id, player_id))
    return row["n"]


def hold(tx: Tx, *, order_id: str, position: int, promotion_id: str, player_id: str, discount: int, units: int,
         now_ms: int) -> None:
    """The order redeems the promotion: one more redemption and `units` more units, held."""
    cursor = tx.execute(
        "UPDATE promotions SET redemptions = redemptions + 1, units_used = units_used + :units WHERE id = :id"
        " AND (redemptions_max IS NULL OR redemptions < redemptions_max)"
        " AND (units_max IS NULL OR units_used + :units <= units_max)",
        {"units": units, "id": promotion_id},
    )
    assert cursor.rowcount == 1, "checked first: the promotion had room"
    tx.execute("INSERT INTO order_promotions (order_id, position, promotion_id, player_id, discount, units, state,"
               " created_at_ms) VALUES (?, ?, ?, ?, ?, ?, 'held', ?)",
               (order_id, position, promotion_id, player_id, discount, units, now_ms))


def release_holds(tx: Tx, *, order_id: str) -> None:
    """held -> released (expiry, cancel, failed payment): the redemptions and units are free again."""
    for row in tx.all("SELECT promotion_id, units FROM order_promotions WHERE order_id = ? AND state = 'held'", (order_id,)):
        cursor = tx.execute("UPDATE promotions SET redemptions = redemptions - 1, units_used = units_used - ?"
                            " WHERE id = ? AND redemptions >= 1 AND units_used >= ?",
                            (row["units"], row["promotion_id"], row["units"]))
        assert cursor.rowcount == 1, "released a redemption that was not held"
    tx.execute("UPDATE order_promotions SET state = 'released' WHERE order_id = ? AND state = 'held'", (order_id,))


def take_holds(tx: Tx, *, order_id: str) -> None:
    """held -> taken (the order is paid): kept for good, a refund does not give it back."""
    tx.execute("UPDATE order_promotions SET state = 'taken' WHERE order_id = ? AND state = 'held'", (order_id,))


def released_fit_again(tx: Tx, *, order_id: str) -> bool:
    """Could the released redemptions of this order be taken again (a late payment)?"""
    row = tx.one(
        "SELECT count(*) AS n FROM order_promotions op JOIN promotions p ON p.id = op.promotion_id"
        " WHERE op.order_id = ? AND op.state = 'released' AND ((p.redemptions_max IS NOT NULL AND"
        " p.redemptions >= p.redemptions_max) OR (p.units_max IS NOT NULL AND p.units_used + op.units > p.units_max))",
        (order_id,),
    )
    return row["n"] == 0


def retake_released(tx: Tx, *, order_id: str) -> None:
    """released -> taken (a late payment at the price the order locked; checked by released_fit_again)."""
    for row in tx.all("SELECT promotion_id, units FROM order_promotions WHERE order_id = ? AND state = 'released'",
                      (order_id,)):
        cursor = tx.execute("UPDATE promotions SET redemptions = redemptions + 1, units_used = units_used + :units"
                            " WHERE id = :id AND (redemptions_max IS NULL OR redemptions < redemptions_max)"
                            " AND (units_max IS NULL OR units_used + :units <= units_max)",
                            {"units": row["units"], "id": row["promotion_id"]})
        assert cursor.rowcount == 1, "checked first: the promotion had room"
    tx.execute("UPDATE order_promotions SET state = 'taken' WHERE order_id = ? AND state = 'released'", (order_id,))


def order_promotion_ids_tx(tx: Tx, *, order_id: str) -> list[str]:
    """The promotions an order redeemed, in the order they were applied."""
    rows = tx.all("SELECT promotion_id FROM order_promotions WHERE order_id = ? ORDER BY position", (order_id,))
    return [row["promotion_id"] for row in rows]
