"""Sandbox statements rendered from our own records (the provider's view of what happened), for
the reconciliation tests to tamper with."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

from apss.channels.sandbox.mapping import STATEMENT_HEADER
from apss.clock import format_rfc3339

__all__ = ["render_sandbox_statement", "statement_rows"]


def statement_rows(db_path: Path, merchant_id: str, *, channel: str = "sandbox") -> list[dict[str, str]]:
    """What an honest provider would list: every succeeded payment and refund of the merchant on the
    channel, with the fee our ledger recorded and the time it was posted. Rows are dicts keyed by
    the sandbox statement header, so a test can change them to craft discrepancies."""
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        payments = conn.execute(
            "SELECT p.id, p.provider_ref, p.amount, p.currency, t.created_at_ms,"
            " coalesce((SELECT sum(e.debit) FROM ledger_entries e WHERE e.transaction_id = t.id"
            "           AND e.account LIKE 'fees_expense:%'), 0) AS fee"
            " FROM payments p JOIN ledger_transactions t ON t.kind = 'payment_captured' AND t.reference = p.id"
            " WHERE p.merchant_id = ? AND p.channel = ? AND p.status = 'succeeded' ORDER BY t.created_at_ms, p.id",
            (merchant_id, channel)).fetchall()
        refunds = conn.execute(
            "SELECT r.id, r.payment_id, r.provider_refund_ref, r.amount, r.currency, t.created_at_ms"
            " FROM refunds r JOIN payments p ON p.id = r.payment_id"
            " JOIN ledger_transactions t ON t.kind = 'refund' AND t.reference = r.id"
            " WHERE r.merchant_id = ? AND p.channel = ? AND r.status = 'succeeded' ORDER BY t.created_at_ms, r.id",
            (merchant_id, channel)).fetchall()
    rows = [{"type": "payment", "provider_ref": p["provider_ref"], "payment_id": p["id"], "amount": str(p["amount"]),
             "fee": str(p["fee"]), "currency": p["currency"], "occurred_at": format_rfc3339(p["created_at_ms"]),
             "_ms": p["created_at_ms"]} for p in payments]
    rows += [{"type": "refund", "provider_ref": r["provider_refund_ref"], "payment_id": r["payment_id"],
              "amount": str(-r["amount"]), "fee": "0", "currency": r["currency"],
              "occurred_at": format_rfc3339(r["created_at_ms"]), "_ms": r["created_at_ms"]} for r in refunds]
    rows.sort(key=lambda row: row["_ms"])
    return [{k: v for k, v in row.items() if k != "_ms"} for row in rows]


def render_sandbox_statement(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=STATEMENT_HEADER, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()
