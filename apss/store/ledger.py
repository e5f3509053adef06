"""The ledger's SQL: accounts, append-only transactions and entries, derived balances, checks."""

from __future__ import annotations

import sqlite3

from apss.store.db import Database, Tx

__all__ = [
    "account_balances",
    "balance_mismatch",
    "bump_balance",
    "ensure_account",
    "fetch_finance",
    "get_finance_tx",
    "insert_entries",
    "insert_transaction",
    "move_vc_pool",
    "vc_pools",
    "recognised_values_tx",
    "ledger_counts",
    "period_totals",
    "set_finance",
    "unbalanced_transaction",
]


def get_finance_tx(tx: Tx, *, merchant_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM merchant_finance WHERE merchant_id = ?", (merchant_id,))


async def fetch_finance(db: Database, *, merchant_id: str) -> sqlite3.Row | None:
    return await db.fetch_one("SELECT * FROM merchant_finance WHERE merchant_id = ?", (merchant_id,))


def set_finance(tx: Tx, *, merchant_id: str, commission_bps: int, splits: str, clawback_policy: str, late_payment: str,
                now_ms: int) -> None:
    tx.execute(
        "INSERT INTO merchant_finance (merchant_id, commission_bps, splits, clawback_policy, late_payment, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET commission_bps = excluded.commission_bps, splits = excluded.splits,"
        " clawback_policy = excluded.clawback_policy, late_payment = excluded.late_payment,"
        " updated_at_ms = excluded.updated_at_ms",
        (merchant_id, commission_bps, splits, clawback_policy, late_payment, now_ms),
    )


def vc_pools(tx: Tx, *, merchant_id: str, vc: str) -> list[sqlite3.Row]:
    return tx.all("SELECT * FROM vc_pools WHERE merchant_id = ? AND vc = ? ORDER BY currency", (merchant_id, vc))


def move_vc_pool(tx: Tx, *, merchant_id: str, vc: str, currency: str, units: int, deferred: int) -> None:
    """Add (positive) or take (negative) units and deferred value; neither goes below zero."""
    if units >= 0 and deferred >= 0:
        tx.execute(
            "INSERT INTO vc_pools (merchant_id, vc, currency, units, deferred) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (merchant_id, vc, currency) DO UPDATE SET units = vc_pools.units + excluded.units,"
            " deferred = vc_pools.deferred + excluded.deferred",
            (merchant_id, vc, currency, units, deferred),
        )
        return
    cursor = tx.execute(
        "UPDATE vc_pools SET units = units + ?, deferred = deferred + ? WHERE merchant_id = ? AND vc = ? AND currency = ?",
        (units, deferred, merchant_id, vc, currency),
    )
    assert cursor.rowcount == 1, "took from a pool that does not exist"


def ensure_account(tx: Tx, *, name: str, currency: str, type: str, merchant_id: str | None, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO ledger_accounts (name, currency, type, merchant_id, created_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (name, currency, type, merchant_id, now_ms),
    )


def insert_transaction(tx: Tx, *, transaction_id: str, merchant_id: str | None, kind: str, reference: str,
                       memo: str | None, now_ms: int) -> bool:
    """False when (kind, reference) was posted before: a business event posts once."""
    cursor = tx.execute(
        "INSERT INTO ledger_transactions (id, merchant_id, kind, reference, memo, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (kind, reference) DO NOTHING",
        (transaction_id, merchant_id, kind, reference, memo, now_ms),
    )
    return cursor.rowcount == 1


def capture_fee_tx(tx: Tx, *, payment_id: str) -> int:
    """The fee the ledger recorded with a payment's capture (its fees_expense debit; 0 without)."""
    row = tx.one("SELECT coalesce(sum(e.debit - e.credit), 0) AS fee FROM ledger_transactions t"
                 " JOIN ledger_entries e ON e.transaction_id = t.id WHERE t.kind = 'payment_captured'"
                 " AND t.reference = ? AND e.account LIKE 'fees\\_expense:%' ESCAPE '\\'", (payment_id,))
    return row["fee"] if row else 0


def insert_entries(tx: Tx, rows: list[tuple[str, str, str, int, int]]) -> None:
    """Rows of (transaction_id, account, currency, debit, credit)."""
    tx.executemany("INSERT INTO ledger_entries (transaction_id, account, currency, debit, credit) VALUES (?, ?, ?, ?, ?)", rows)


def bump_balance(tx: Tx, *, account: str, currency: str, debit: int, credit: int) -> None:
    tx.execute(
        "INSERT INTO ledger_balances (account, currency, debits, credits) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account, currency) DO UPDATE SET debits = ledger_balances.debits + excluded.debits,"
        " credits = ledger_balances.credits + excluded.credits",
        (account, currency, debit, credit),
    )


async def unbalanced_transaction(db: Database) -> sqlite3.Row | None:
    """The first transaction whose debits and credits differ in some currency."""
    return await db.fetch_one(
        "SELECT transaction_id, currency, sum(debit) AS debits, sum(credit) AS credits, min(seq) AS first_seq"
        " FROM ledger_entries GROUP BY transaction_id, currency HAVING sum(debit) <> sum(credit)"
        " ORDER BY first_seq LIMIT 1"
    )


async def balance_mismatch(db: Database) -> sqlite3.Row | None:
    """The first account whose derived balance differs from the sum of its entries."""
    return await db.fetch_one(
        "WITH sums AS (SELECT account, currency, sum(debit) AS debits, sum(credit) AS credits FROM ledger_entries"
        " GROUP BY account, currency)"
        " SELECT coalesce(s.account, b.account) AS account, coalesce(s.currency, b.currency) AS currency,"
        " s.debits AS entry_debits, s.credits AS entry_credits, b.debits AS balance_debits, b.credits AS balance_credits"
        " FROM sums s FULL OUTER JOIN ledger_balances b ON b.account = s.account AND b.currency = s.currency"
        " WHERE s.debits IS NOT b.debits OR s.credits IS NOT b.credits ORDER BY 1, 2 LIMIT 1"
    )


async def ledger_counts(db: Database) -> sqlite3.Row:
    return await db.fetch_one(
        "SELECT (SELECT count(*) FROM ledger_transactions) AS transactions, (SELECT count(*) FROM ledger_entries) AS entries"
    )


async def account_balances(db: Database, *, merchant_id: str) -> list[sqlite3.Row]:
    return await db.fetch_all(
        "SELECT a.name, a.currency, a.type, b.debits, b.credits FROM ledger_accounts a"
        " JOIN ledger_balances b ON b.account = a.name AND b.currency = a.currency"
        " WHERE a.merchant_id = ? ORDER BY a.name, a.currency",
        (merchant_id,),
    )


async def period_totals(db: Database, *, merchant_id: str, from_ms: int, to_ms: int) -> list[sqlite3.Row]:
    """Debits and credits per transaction kind, account family and currency within [from, to)."""
    return await db.fetch_all(
        "SELECT t.kind, substr(e.account, 1, instr(e.account, ':') - 1) AS family, e.currency,"
        " sum(e.debit) AS debits, sum(e.credit) AS credits, count(DISTINCT t.id) AS transactions"
        " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
        " WHERE t.merchant_id = ? AND t.created_at_ms >= ? AND t.created_at_ms < ?"
        " GROUP BY t.kind, family, e.currency ORDER BY t.kind, family, e.currency",
        (merchant_id, from_ms, to_ms),
    )


def recognised_values_tx(tx: Tx, *, reference: str) -> list[sqlite3.Row]:
    """What the spend `reference` recognised, per money currency (vc_recognised credits)."""
    return tx.all(
        "SELECT e.currency, sum(e.credit) AS value FROM ledger_transactions t JOIN ledger_entries e"
        " ON e.transaction_id = t.id WHERE t.kind = 'currency_recognised' AND t.reference = ?"
        " AND e.account LIKE 'vc_recognised:%' GROUP BY e.currency ORDER BY e.currency",
        (reference,),
    )
