"""The statements of one sandbox order's creation (a single write transaction: the sandbox makes
its payment inside it), counted through the real app: the count may go down, never back up (a
check of the transaction's design, not a timing). Each is checked against a raw scan of the
rows the order left."""

from __future__ import annotations

import sqlite3

import pytest

from tests.sql_trace import traced_transactions

ORDER_TRANSACTION = "Checkout.create.<locals>.begin"
AUDIT_TRANSACTION = "AuditLog.record.<locals>.<lambda>"  # the audit row's own transaction (other routes)
# What it runs, once each: the idempotency key, the product, the automatic promotions, the
# player's KYC row; the risk reads (the player's first sighting, the velocity counters' windows,
# the distinct counters' windows, the lists); the stock reserve, the order, its item, its payment,
# its first event; the risk decision, the order's facts, four counter buckets (orders and amount
# per player, minute and hour), the player's first sighting; the payment's provider id checked
# free, the attempt, the id recorded (inserted first: one statement, was a read and an insert),
# the payment's details and move in one UPDATE (was two), the key's stored answer; the request's
# audit row (it had a write transaction of its own after this one); the player's marks (the
# fraud score's ip_age_s, devices and IPs seen). 27 before.
PLAIN_MAX = 27
# With an IP and a device: their novelty read, four more counter buckets each (orders and amount per IP
# and device), the distinct players per IP and device (minute and hour), the device mark. 41 before.
WITH_NETWORK_MAX = 41


@pytest.mark.parametrize(("facts", "statements_max"), [
    ({}, PLAIN_MAX),
    ({"ip": "203.0.113.9", "device_id": "device-1"}, WITH_NETWORK_MAX),
])
def test_an_order_runs_at_most_its_statements(merchant, facts, statements_max):
    with merchant.client() as client:
        product = merchant.product(client, category="currency_pack",
                                   grants=[{"type": "currency", "currency": "GEMS", "amount": 100}], stock=5)
        # the steady state: the merchant's risk rules are read once, then kept on the writer
        assert merchant.order(client, product["id"], player_id="warm-player").status_code == 201
        with traced_transactions(merchant.server.services.db) as runs:
            answer = client.post("/v1/orders", headers={"Idempotency-Key": "counted-order"},
                                 json={"player_id": "counted-player", "currency": "USD",
                                       "items": [{"product_id": product["id"]}], **facts})
        assert answer.status_code == 201, answer.text
        order = answer.json()
        replay = client.post("/v1/orders", headers={"Idempotency-Key": "counted-order"},
                             json={"player_id": "counted-player", "currency": "USD",
                                   "items": [{"product_id": product["id"]}], **facts})
    assert replay.status_code == 201 and replay.json() == order
    [statements] = runs[ORDER_TRANSACTION]
    assert len(statements) <= statements_max, "\n".join(statements)
    assert AUDIT_TRANSACTION not in runs, "the audit row is written with the order: one write transaction"
    assert order["status"] == "pending" and order["payment"]["status"] == "requires_action"
    provider_ref = order["payment"]["next_action"]["url"].rsplit("/", 1)[1]
    with sqlite3.connect(merchant.server.db_path) as conn:
        payment = conn.execute("SELECT status, provider_ref, next_action FROM payments WHERE id = ?",
                               (order["payment"]["id"],)).fetchone()
        refs = conn.execute("SELECT provider_ref FROM payment_refs WHERE payment_id = ?",
                            (order["payment"]["id"],)).fetchall()
        stock = conn.execute("SELECT stock, reserved FROM products WHERE id = ?", (product["id"],)).fetchone()
        key = conn.execute("SELECT state, response_status FROM idempotency_keys WHERE key = 'counted-order'").fetchone()
        audited = conn.execute("SELECT actor, merchant_id, action, status_code, key_ref FROM audit_log"
                               " WHERE object_id = ? ORDER BY id", (order["id"],)).fetchall()
    assert payment[0] == "requires_action" and payment[1] == provider_ref and provider_ref in payment[2]
    assert refs == [(provider_ref,)]
    assert stock == (3, 2)
    assert key == ("done", 201)
    # one row for the order, one for its replay (the middleware's, as for any answer)
    assert [row[:4] for row in audited] == [("merchant", merchant.id, "order.create", 201)] * 2
    assert audited[0][4] == audited[1][4] and audited[0][4].startswith("sk_test_")
