"""The hot tables' CHECKs (migrations 0032 and 0037): spelled with OR rather than IN on SQLite, where an IN
list of three or more values builds a temporary index on every row written. The rules are the
same: every allowed value is taken and anything else refused, and an upgrade keeps every row.
The PostgreSQL schema keeps its IN lists (tests/postgres/test_schema.py compares the two)."""

from __future__ import annotations

import re
import sqlite3

import pytest

from apss.clock import TestClock
from apss.store import channels
from apss.store.migrate import apply_migrations
from tests.conftest import RunningServer, assert_ledger_ok, database_at, wait_for

HOT = ("orders", "payments", "payment_attempts", "risk_decisions")
ALLOWED = {
    ("orders", "status"): ["pending", "paid", "delivering", "fulfilled", "expired", "canceled", "failed",
                           "partially_refunded", "refunded", "in_review"],
    ("payments", "status"): ["requires_action", "processing", "succeeded", "failed", "canceled", "unknown"],
    ("payments", "close_state"): ["pending", "done", "failed", None],
    ("payment_attempts", "operation"): ["create_payment", "refund", "capture", "query_payment", "query_refund",
                                        "cancel_payment", "charge_saved_method"],
    ("payment_attempts", "outcome"): ["succeeded", "failed", "unknown"],
    ("risk_decisions", "action"): ["allow", "review", "block", "require_3ds"],
    ("settlement_lines", "kind"): ["payment", "refund", "chargeback", "reserve_hold", "reserve_release", "adjustment",
                                   "carried"],
}
_IN_LIST_RE = re.compile(r"\bIN\s*\(([^()]*)\)", re.IGNORECASE)


def _latest(tmp_path) -> sqlite3.Connection:
    path = tmp_path / "latest.sqlite"
    apply_migrations(str(path))
    return sqlite3.connect(path)


def test_no_check_of_a_hot_table_uses_an_in_list_of_three_or_more(tmp_path):
    conn = _latest(tmp_path)
    # Tables and their partial indexes (a partial index's WHERE is evaluated for every row written:
    # payments_open, migration 0038; settlement lines' unique index, written with every line of a run).
    for table in (*HOT, "settlement_lines"):
        for (sql,) in conn.execute("SELECT sql FROM sqlite_schema WHERE tbl_name = ? AND type IN ('table', 'index')"
                                   " AND sql IS NOT NULL", (table,)):
            long_lists = [m.group(0) for m in _IN_LIST_RE.finditer(sql) if m.group(1).count(",") >= 2]
            assert long_lists == [], f"{table}: {long_lists}"


def test_the_janitors_queue_is_read_through_the_open_payments_index(tmp_path):
    """A partial index serves a query only when the query's WHERE has the index's own terms: the
    janitor's query (store/channels.py) is spelled as payments_open's predicate is."""
    conn = _latest(tmp_path)
    due = f"{channels._OPEN_DUE} ORDER BY p.created_at_ms LIMIT ?"
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {due}", (0, 0, 0, 10))]
    assert any("USING INDEX payments_open" in step for step in plan), plan
    # and it finds exactly the payments whose outcome is not final (the index holds no other)
    for n, status in enumerate(ALLOWED[("payments", "status")]):
        conn.execute("INSERT INTO payments (id, order_id, merchant_id, channel, status, amount, currency, created_at_ms,"
                     " updated_at_ms) VALUES (?, 'o', 'm', 'sandbox', ?, 1, 'USD', ?, 0)", (f"pay_{status}", status, n))
    found = {row[0] for row in conn.execute(due, (0, 0, 10**6, 10))}
    assert found == {"pay_unknown", "pay_requires_action", "pay_processing", "pay_canceled"}


@pytest.mark.parametrize(("table", "column"), list(ALLOWED))
def test_each_check_takes_every_allowed_value_and_refuses_any_other(tmp_path, table, column):
    conn = _latest(tmp_path)
    # Foreign keys are off on a plain connection: a row needs no parent here.
    row = {"orders": {"id": "o", "merchant_id": "m", "player_id": "p", "status": "pending", "amount": 1,
                      "currency": "USD", "channel": "sandbox", "metadata": "{}", "checkout_token": "t",
                      "expires_at_ms": 0, "created_at_ms": 0, "updated_at_ms": 0},
           "payments": {"id": "y", "order_id": "o", "merchant_id": "m", "channel": "sandbox", "status": "processing",
                        "amount": 1, "currency": "USD", "created_at_ms": 0, "updated_at_ms": 0},
           "payment_attempts": {"payment_id": "y", "channel": "sandbox", "operation": "refund", "outcome": "failed",
                                "created_at_ms": 0},
           "risk_decisions": {"order_id": "o", "merchant_id": "m", "stage": "order", "score": 1, "action": "allow",
                              "rules_fired": "[]", "attributes": "{}", "created_at_ms": 0},
           "settlement_lines": {"settlement_id": "s", "line": 1, "kind": "payment", "reference": "r", "amount": 1,
                                "fee": 0, "commission": 0, "partner_shares": 0, "net": 1, "occurred_at_ms": 0}}[table]
    for n, value in enumerate(ALLOWED[(table, column)]):
        fields = {**row, column: value}
        if "id" in fields:
            fields["id"] = f"{fields['id']}{n}"
        if "checkout_token" in fields:
            fields["checkout_token"] = f"t{n}"
        if "line" in fields:
            fields["line"], fields["reference"] = n + 1, f"r{n}"
        conn.execute(f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
                     tuple(fields.values()))
    for wrong in ("bogus", "Paid", "", "pending "):
        fields = {**row, column: wrong, **({"id": "x"} if "id" in row else {}),
                  **({"checkout_token": "tx"} if "checkout_token" in row else {}),
                  **({"line": 99, "reference": "rx"} if "line" in row else {})}
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute(f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
                         tuple(fields.values()))


def test_the_upgrade_keeps_every_row_of_a_real_server(tmp_path):
    """Rows a real server wrote (orders paid, refunded and expired; their payments, attempts and
    risk decisions), copied into a database at migration 31, come through 0032 unchanged."""
    source = tmp_path / "source.sqlite"
    server = RunningServer(db_path=source, clock=TestClock()).start()
    try:
        merchant = server.new_merchant()
        with merchant.client() as client:
            product = merchant.product(client, prices={"USD": 800}, stock=20)
            orders = [merchant.order(client, product["id"], player_id=f"up-{n}").json() for n in range(6)]
            for order in orders[:4]:
                paid = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
                assert paid.status_code == 202, paid.text
            server.clock.advance(seconds=2)

            def fulfilled() -> bool:
                return all(client.get(f"/v1/orders/{o['id']}").json()["status"] == "fulfilled" for o in orders[:4])

            wait_for(fulfilled, timeout_s=30)
            assert client.post(f"/v1/orders/{orders[0]['id']}/refunds", json={"amount": 300}).status_code == 201
            assert client.post(f"/v1/orders/{orders[1]['id']}/refunds", json={}).status_code == 201
            assert client.post(f"/v1/orders/{orders[5]['id']}/cancel").status_code in (200, 409)
        assert_ledger_ok(server)
    finally:
        server.stop()

    old = database_at(tmp_path, 31)
    copied = {}
    with sqlite3.connect(old) as conn:
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
        for table in ("merchants", *HOT):
            old_columns = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
            new_columns = {r[1] for r in conn.execute(f"PRAGMA src.table_info({table})")}
            columns = ", ".join(c for c in old_columns if c in new_columns)
            conn.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM src.{table}")
            copied[table] = (columns, conn.execute(f"SELECT {columns} FROM src.{table} ORDER BY 1").fetchall())
        conn.commit()
        conn.execute("DETACH DATABASE src")
    assert len(copied["orders"][1]) == 6 and len(copied["risk_decisions"][1]) >= 6
    assert {r[0] for r in sqlite3.connect(source).execute("SELECT status FROM orders")} >= {
        "fulfilled", "partially_refunded", "refunded"}

    assert apply_migrations(str(old))[0] == 31
    with sqlite3.connect(old) as conn:
        for table, (columns, rows) in copied.items():
            assert conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall() == rows, table
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL")}
        latest = {r[0] for r in _latest(tmp_path).execute("SELECT name FROM sqlite_schema WHERE type = 'index'"
                                                          " AND sql IS NOT NULL")}
        assert names == latest, "every index is back"


def test_settlement_lines_settle_a_transaction_once_and_keep_their_rows_through_0037(tmp_path):
    """The partial unique index: a payment, refund, chargeback or adjustment is settled once; the
    lines a batch makes of other batches (reserve holds and releases, carried nets) may repeat a
    reference. Rows written at migration 36 come through the rebuild unchanged."""
    old = database_at(tmp_path, 36)
    lines = [("stl_a", n, kind, reference, None, "sandbox", 100 * n, 3, 10, 0, 87, n)
             for n, (kind, reference) in enumerate([("payment", "pay_1"), ("refund", "rfd_1"),
                                                    ("reserve_hold", "stl_a"), ("carried", "stl_0")], start=1)]
    insert = ("INSERT INTO settlement_lines (settlement_id, line, kind, reference, order_id, channel, amount, fee,"
              " commission, partner_shares, net, occurred_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    with sqlite3.connect(old) as conn:
        conn.executemany(insert, lines)
    assert apply_migrations(str(old))[0] == 36
    with sqlite3.connect(old) as conn:
        assert conn.execute("SELECT * FROM settlement_lines ORDER BY line").fetchall() == lines
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE tbl_name = 'settlement_lines'"
                                              " AND type = 'index' AND sql IS NOT NULL")}
        assert indexes == {"settlement_lines_once", "settlement_lines_reference"}
        for kind, reference in (("payment", "pay_1"), ("refund", "rfd_1")):
            with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
                conn.execute(insert, ("stl_b", 1, kind, reference, None, "sandbox", 1, 0, 0, 0, 1, 0))
        conn.execute(insert, ("stl_b", 1, "reserve_release", "stl_a", None, "sandbox", 0, 0, 0, 0, 5, 0))
        conn.execute(insert, ("stl_b", 2, "chargeback", "rfd_1", None, "sandbox", -1, 0, 0, 0, -1, 0))  # another kind
        assert conn.execute("SELECT count(*) FROM settlement_lines").fetchone()[0] == 6
