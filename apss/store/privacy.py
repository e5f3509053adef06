"""Privacy: the one registry of where a player's data lives, and the SQL that exports, erases,
expires and re-seals it; the erasure records; the audit log.

A table joins privacy by adding one entry here:
- `PLAYER_COLUMNS`: a column holding a player id (renamed to the pseudonym on erasure; `clear`
  columns set to a value, `rewrite` columns get the id replaced inside their text);
- `LINKED`: rows that belong to a player through another table (exported with them);
- `PLAYER_BLOBS`: JSON copies that may name the player (webhook payloads, stored idempotent
  responses, game delivery payloads, sandbox callbacks): every string equal to the id becomes the
  pseudonym, and in an object whose `player_id` is the player the `PERSONAL_JSON_KEYS` are cleared;
- `CLEARED`: columns of rows linked to the player's orders that hold personal values (the risk
  check's sealed IP and device, and their clear columns of before migration 0028): set to NULL on
  erasure, and after the retention period (by the order's time);
- `SEALED_COLUMNS`: personal values sealed with crypto.PersonalData (the rotation job re-seals
  them, and seals what a `legacy` clear column still holds; `retained` ones, IPs, are erased after
  `privacy.retention_days` by their row's time);
- `RETAINED_ROWS`: rows derived from IPs and device ids (keyed hashes), deleted once not seen for
  `privacy.retention_days`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from apss.domain.privacy import PERSONAL_JSON_KEYS
from apss.store.db import Database, Tx

__all__ = [
    "CLEARED",
    "ERASED_REQUEST_HASH",
    "ClearedColumns",
    "LINKED",
    "PERSONAL_JSON_KEYS",
    "PLAYER_BLOBS",
    "PLAYER_COLUMNS",
    "RETAINED_ROWS",
    "SEALED_COLUMNS",
    "PlayerBlob",
    "PlayerColumn",
    "RetainedRows",
    "SealedColumn",
]

# The request hash of a stored idempotent response of an erased player: the original hash was
# computed over a body naming the player; a retry with the key replays the pseudonymous answer.
ERASED_REQUEST_HASH = "erased"
_ORDERS_OF_MERCHANT = "order_id IN (SELECT id FROM orders WHERE merchant_id = ?)"


@dataclass(frozen=True)
class PlayerColumn:
    table: str
    column: str = "player_id"
    scope: str = "merchant_id = ?"          # selects the merchant's rows (one `?`)
    key: str = "rowid"                      # unique per row: chunks of the erasure take rows by it (PostgreSQL: ctid)
    clear: dict[str, str] = field(default_factory=dict)   # column -> SQL value on erasure
    rewrite: tuple[str, ...] = ()           # text columns: the id replaced by the pseudonym inside
    export: bool = True
    delete: bool = False                    # the rows are deleted on erasure, not renamed


@dataclass(frozen=True)
class LinkedTable:
    table: str
    where: str                              # `?` = merchant id, then player id


@dataclass(frozen=True)
class ClearedColumns:
    table: str
    key: str                                # the row's unique column
    columns: tuple[str, ...]                # set to NULL
    order_column: str = "order_id"          # the order the row belongs to (its time for retention)


@dataclass(frozen=True)
class PlayerBlob:
    table: str
    column: str
    cursor: str                             # a unique, ordered column to page by
    scope: str = "merchant_id = ?"
    key_text: str | None = None             # a text column (idempotency key) that may hold the id
    request_hash: str | None = None         # set to ERASED_REQUEST_HASH when the row was the player's
    export_as: str | None = None            # exported under this name (None: not exported)
    binary: bool = False                    # a BLOB column (BYTEA on PostgreSQL), else TEXT


@dataclass(frozen=True)
class SealedColumn:
    table: str
    column: str
    id_column: str                          # the row id: part of the associated data
    time_column: str | None = None
    retained: bool = False                  # erased after the retention period (by time_column)
    legacy: str | None = None               # the clear column it replaces: the rotation job seals what it holds

    def context(self, row_id: object) -> str:
        return f"{self.table}.{self.column}:{row_id}"


# Order matters: tables scoped through orders come before orders are renamed.
PLAYER_COLUMNS: tuple[PlayerColumn, ...] = (
    PlayerColumn("order_promotions", scope=_ORDERS_OF_MERCHANT, key="(order_id, position)"),
    PlayerColumn("orders", clear={"metadata": "'{}'"}, rewrite=("merchant_order_ref", "return_url")),
    PlayerColumn("inventory_items", key="(merchant_id, player_id, sku)"),
    PlayerColumn("memberships", key="(merchant_id, player_id, sku)"),
    PlayerColumn("entitlements", key="(merchant_id, player_id, sku)"),
    PlayerColumn("wallet_balances", key="(merchant_id, player_id, currency)"),
    PlayerColumn("wallet_transactions", rewrite=("reason",)),
    PlayerColumn("deliveries"),
    PlayerColumn("subscriptions", clear={"metadata": "'{}'"}),
    PlayerColumn("risk_players", key="(merchant_id, player_id)"),
    PlayerColumn("risk_player_marks", key="(merchant_id, player_id, kind, mark)", export=False, delete=True),
    PlayerColumn("risk_list_items", column="value", scope="merchant_id = ? AND list = 'blocked_players'", key="id",
                 rewrite=("display",)),
    PlayerColumn("disputes", key="id"),
    PlayerColumn("aml_cases", key="id"),
    PlayerColumn("player_kyc", key="(merchant_id, player_id)", clear={"birth_date_sealed": "NULL"}),
    PlayerColumn("minor_spend", key="order_id"),
    PlayerColumn("kyc_holds", key="order_id"),
    PlayerColumn("store_transactions", key="(merchant_id, store, transaction_id)"),
)

_PLAYER_ORDERS = "order_id IN (SELECT id FROM orders WHERE merchant_id = ? AND player_id = ?)"
LINKED: tuple[LinkedTable, ...] = (
    LinkedTable("order_items", _PLAYER_ORDERS),
    LinkedTable("order_events", _PLAYER_ORDERS),
    LinkedTable("payments", _PLAYER_ORDERS),
    LinkedTable("refunds", _PLAYER_ORDERS),
    LinkedTable("risk_order_facts", _PLAYER_ORDERS),
    LinkedTable("subscription_events",
                "subscription_id IN (SELECT id FROM subscriptions WHERE merchant_id = ? AND player_id = ?)"),
)

CLEARED: tuple[ClearedColumns, ...] = (
    ClearedColumns("risk_order_facts", key="order_id",
                   columns=("ip_sealed", "device_id_sealed", "ip", "device_id", "email_hash", "email_domain")),
    # The payer's WeChat openid of a jsapi order (channel_options.openid).
    ClearedColumns("orders", key="id", columns=("payer_openid",), order_column="id"),
)

PLAYER_BLOBS: tuple[PlayerBlob, ...] = (
    PlayerBlob("risk_decisions", "attributes", cursor="seq", export_as="risk_decisions"),
    PlayerBlob("webhook_events", "payload", cursor="id", export_as="webhook_events", binary=True),
    PlayerBlob("idempotency_keys", "response_body", cursor="key", key_text="key", request_hash="request_hash",
               binary=True),
    PlayerBlob("deliveries", "payload", cursor="id"),
    PlayerBlob("sandbox_callbacks", "body", cursor="seq", binary=True),
)

SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn("audit_log", "ip_sealed", id_column="id", time_column="created_at_ms", retained=True),
    # The risk check's IP and device (their retention and erasure: CLEARED, by the order).
    SealedColumn("risk_order_facts", "ip_sealed", id_column="order_id", legacy="ip"),
    SealedColumn("risk_order_facts", "device_id_sealed", id_column="order_id", legacy="device_id"),
)


@dataclass(frozen=True)
class RetainedRows:
    table: str
    key: str                                # unique per row
    time_column: str                        # when it was last seen, ms


RETAINED_ROWS: tuple[RetainedRows, ...] = (
    RetainedRows("risk_player_marks", key="(merchant_id, player_id, kind, mark)", time_column="last_seen_ms"),
)


# -- export ---------------------------------------------------------------------------------------
def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in row.keys():
        value = row[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[name] = value
    return out


async def player_rows(db: Database, entry: PlayerColumn, *, merchant_id: str, player_id: str,
                      limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch_all(f"SELECT * FROM {entry.table} WHERE {entry.scope} AND {entry.column} = ? LIMIT ?",
                              (merchant_id, player_id, limit))
    return [_row_dict(r) for r in rows]


async def linked_rows(db: Database, entry: LinkedTable, *, merchant_id: str, player_id: str,
                      limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch_all(f"SELECT * FROM {entry.table} WHERE {entry.where} LIMIT ?", (merchant_id, player_id, limit))
    return [_row_dict(r) for r in rows]


def _holds(entry: PlayerBlob, dialect: str) -> str:
    """The condition "the blob holds the needle `?`", byte for byte: SQLite compares both as BLOBs;
    PostgreSQL looks for the needle's UTF-8 bytes in a BYTEA column, for the text in a TEXT one."""
    if dialect == "sqlite":
        return f"instr(CAST({entry.column} AS BLOB), CAST(? AS BLOB)) > 0"
    if entry.binary:
        return f"position(convert_to(?, 'UTF8') IN {entry.column}) > 0"
    return f"strpos({entry.column}, ?) > 0"


def _key(entry: PlayerColumn, dialect: str) -> str:
    """SQLite's rowid is PostgreSQL's ctid: the row's own address, unique, in any table."""
    return "ctid" if entry.key == "rowid" and dialect == "postgresql" else entry.key


async def blob_rows(db: Database, entry: PlayerBlob, *, merchant_id: str, needle: str,
                    limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch_all(
        f"SELECT * FROM {entry.table} WHERE {entry.scope} AND {_holds(entry, db.dialect)}"
        f" ORDER BY {entry.cursor} LIMIT ?", (merchant_id, needle, limit))
    return [_row_dict(r) for r in rows]


# -- erasure --------------------------------------------------------------------------------------
def erase_player_chunk_tx(tx: Tx, entry: PlayerColumn, *, merchant_id: str, player_id: str, pseudonym: str,
                          limit: int) -> int:
    """Rename up to `limit` of the player's rows in one table; returns how many."""
    assert player_id != pseudonym and limit >= 1
    key = _key(entry, tx.dialect)
    chosen = (f"{key} IN (SELECT {key.strip('()')} FROM {entry.table} WHERE {entry.scope}"
              f" AND {entry.column} = ? LIMIT ?)")
    if entry.delete:
        return tx.execute(f"DELETE FROM {entry.table} WHERE {chosen}", (merchant_id, player_id, limit)).rowcount
    sets = [f"{entry.column} = ?"] + [f"{c} = {v}" for c, v in entry.clear.items()]
    params: list[Any] = [pseudonym]
    for column in entry.rewrite:
        sets.append(f"{column} = replace({column}, ?, ?)")
        params += [player_id, pseudonym]
    cursor = tx.execute(f"UPDATE {entry.table} SET {', '.join(sets)} WHERE {chosen}", (*params, merchant_id, player_id, limit))
    return cursor.rowcount


def clear_linked_chunk_tx(tx: Tx, entry: ClearedColumns, *, limit: int, player: tuple[str, str] | None = None,
                          before_ms: int | None = None) -> int:
    """NULL the columns of up to `limit` rows: of the orders of `player` (merchant id, player id:
    erasure), or of orders made before `before_ms` (retention). Returns how many rows changed."""
    assert (player is None) != (before_ms is None)
    orders = ("SELECT id FROM orders WHERE merchant_id = ? AND player_id = ?" if player is not None
              else "SELECT id FROM orders WHERE created_at_ms < ?")
    params: tuple[Any, ...] = player if player is not None else (before_ms,)
    held = " OR ".join(f"{c} IS NOT NULL" for c in entry.columns)
    cursor = tx.execute(
        f"UPDATE {entry.table} SET {', '.join(f'{c} = NULL' for c in entry.columns)} WHERE {entry.key} IN"
        f" (SELECT {entry.key} FROM {entry.table} WHERE {entry.order_column} IN ({orders}) AND ({held}) LIMIT ?)",
        (*params, limit))
    return cursor.rowcount


def candidate_blobs_tx(tx: Tx, entry: PlayerBlob, *, merchant_id: str, needle: str, after: Any,
                       limit: int) -> list[sqlite3.Row]:
    """The merchant's rows (after `after`, cursor order) whose blob or key text holds the needle."""
    condition = _holds(entry, tx.dialect)
    params: list[Any] = [merchant_id, after, needle]
    select = f"SELECT {entry.cursor} AS _c, {entry.column} AS _v"
    if entry.key_text:
        condition = f"({condition} OR instr({entry.key_text}, ?) > 0)"
        params.append(needle)
        select += f", {entry.key_text} AS _k"
    return tx.all(f"{select} FROM {entry.table} WHERE {entry.scope} AND {entry.cursor} > ? AND {condition}"
                  f" ORDER BY {entry.cursor} LIMIT ?", (*params, limit))


def update_blob_tx(tx: Tx, entry: PlayerBlob, *, merchant_id: str, cursor_value: Any, value: Any,
                   key_text: str | None, erased_hash: bool) -> None:
    sets = [f"{entry.column} = ?"]
    params: list[Any] = [value]
    if entry.request_hash and erased_hash:
        sets.append(f"{entry.request_hash} = ?")
        params.append(ERASED_REQUEST_HASH)
    replace = "OR REPLACE " if tx.dialect == "sqlite" else ""
    if entry.key_text and key_text is not None:
        sets.append(f"{entry.key_text} = ?")
        params.append(key_text)
        if not replace:  # no UPDATE OR REPLACE on PostgreSQL: the row the new key names goes first
            tx.execute(f"DELETE FROM {entry.table} WHERE {entry.scope} AND {entry.key_text} = ? AND {entry.cursor} <> ?",
                       (merchant_id, key_text, cursor_value))
    tx.execute(f"UPDATE {replace}{entry.table} SET {', '.join(sets)} WHERE {entry.scope} AND {entry.cursor} = ?",
               (*params, merchant_id, cursor_value))


# -- erasure records --------------------------------------------------------------------------------
def record_erasure_tx(tx: Tx, *, merchant_id: str, pseudonym: str, now_ms: int) -> None:
    tx.execute("INSERT INTO erasures (merchant_id, pseudonym, status, requested_at_ms) VALUES (?, ?, 'running', ?)"
               " ON CONFLICT (merchant_id, pseudonym) DO UPDATE SET status = 'running', completed_at_ms = NULL",
               (merchant_id, pseudonym, now_ms))


def finish_erasure_tx(tx: Tx, *, merchant_id: str, pseudonym: str, now_ms: int) -> None:
    cursor = tx.execute("UPDATE erasures SET status = 'done', completed_at_ms = ? WHERE merchant_id = ? AND pseudonym = ?",
                        (now_ms, merchant_id, pseudonym))
    assert cursor.rowcount == 1, "finished an erasure that was not recorded"


async def erasures(db: Database) -> list[sqlite3.Row]:
    return await db.fetch_all("SELECT merchant_id, pseudonym, status FROM erasures")


async def distinct_players(db: Database, entry: PlayerColumn, *, merchant_id: str, after: str,
                           limit: int) -> list[str]:
    """The merchant's distinct player ids in one table, in order after `after` (start-up rescans)."""
    rows = await db.fetch_all(
        f"SELECT DISTINCT {entry.column} AS p FROM {entry.table} WHERE {entry.scope} AND {entry.column} > ?"
        f" ORDER BY {entry.column} LIMIT ?", (merchant_id, after, limit))
    return [r["p"] for r in rows]


# -- sealed columns: rotation and retention ---------------------------------------------------------
def sealed_chunk_tx(tx: Tx, entry: SealedColumn, *, after: str, limit: int) -> list[sqlite3.Row]:
    """Rows (id, v: the sealed value, l: the legacy clear value or NULL) holding either, after `after`."""
    legacy = entry.legacy or "NULL"
    return tx.all(f"SELECT {entry.id_column} AS id, {entry.column} AS v, {legacy} AS l FROM {entry.table}"
                  f" WHERE {entry.id_column} > ? AND ({entry.column} IS NOT NULL OR {legacy} IS NOT NULL)"
                  f" ORDER BY {entry.id_column} LIMIT ?", (after, limit))


def set_sealed_tx(tx: Tx, entry: SealedColumn, *, row_id: Any, value: str | None) -> None:
    """The sealed value written (and the legacy clear column emptied)."""
    legacy = f", {entry.legacy} = NULL" if entry.legacy else ""
    tx.execute(f"UPDATE {entry.table} SET {entry.column} = ?{legacy} WHERE {entry.id_column} = ?", (value, row_id))


def expire_rows_tx(tx: Tx, entry: RetainedRows, *, before_ms: int, limit: int) -> int:
    """Delete up to `limit` rows last seen before `before_ms`; returns how many."""
    return tx.execute(f"DELETE FROM {entry.table} WHERE {entry.key} IN (SELECT {entry.key.strip('()')} FROM"
                      f" {entry.table} WHERE {entry.time_column} < ? LIMIT ?)", (before_ms, limit)).rowcount


def expire_sealed_tx(tx: Tx, entry: SealedColumn, *, before_ms: int, limit: int) -> int:
    assert entry.retained and entry.time_column
    cursor = tx.execute(
        f"UPDATE {entry.table} SET {entry.column} = NULL WHERE {entry.id_column} IN (SELECT {entry.id_column} FROM"
        f" {entry.table} WHERE {entry.time_column} < ? AND {entry.column} IS NOT NULL LIMIT ?)", (before_ms, limit))
    return cursor.rowcount


# -- the audit log ----------------------------------------------------------------------------------
def insert_audit(tx: Tx, row: dict[str, Any]) -> None:
    tx.execute("INSERT INTO audit_log (id, actor, merchant_id, key_ref, action, object_id, status_code, ip_sealed,"
               " created_at_ms) VALUES (:id, :actor, :merchant_id, :key_ref, :action, :object_id, :status_code,"
               " :ip_sealed, :created_at_ms)", row)


async def list_audit(db: Database, *, after_id: str | None, limit: int, merchant_id: str | None, action: str | None,
                     actor: str | None, object_id: str | None, since_ms: int | None,
                     until_ms: int | None) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT * FROM audit_log WHERE (? IS NULL OR id < ?) AND (? IS NULL OR merchant_id = ?)"
        " AND (? IS NULL OR action = ?) AND (? IS NULL OR actor = ?) AND (? IS NULL OR object_id = ?)"
        " AND (? IS NULL OR created_at_ms >= ?) AND (? IS NULL OR created_at_ms < ?) ORDER BY id DESC LIMIT ?",
        (after_id, after_id, merchant_id, merchant_id, action, action, actor, actor, object_id, object_id,
         since_ms, since_ms, until_ms, until_ms, limit))

