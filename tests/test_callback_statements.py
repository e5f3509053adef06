"""The statements of one sandbox payment callback's transaction (pending -> paid -> fulfilled,
with webhook endpoints subscribed, so events are rendered and queued), counted through the real
app: the count may go down, never back up (a check of the transaction's design, not a timing)."""

from __future__ import annotations

import sqlite3

import msgspec

from apss.services.views import OrderView, keep_order_view, kept_order_view
from apss.store.db import Tx
from tests.sql_trace import traced_transactions
from tests.test_callbacks import _callback, _gems_order, _post

CALLBACK_TRANSACTION = "PaymentEvents.handle_callback.<locals>.transaction"
# What it runs, once each: the payment, the provider event recorded then its result, the payment's
# provider id, the order and its items, the payment's move, the merchant's finance settings, the
# capture's ledger posting (transaction, then account, balance per entry, then the entries), the
# risk rules again (facts, player, counters, lists, the decision), AML (settings, windows,
# counters), the stock and promotion holds taken, the moves to paid and fulfilled (status, event,
# webhook event and deliveries; the endpoints and the order's view read once), the subscription
# link, the currency granted, and the deferred revenue's pool and posting. 68 before they were
# read once per transaction function.
STATEMENTS_MAX = 59


def test_a_paid_callback_runs_at_most_its_statements(merchant):
    with merchant.client() as client:
        for events in (["order.paid", "order.fulfilled"], ["order.fulfilled", "alert.created"]):
            answer = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook", "events": events})
            assert answer.status_code == 201, answer.text
        _, order = _gems_order(merchant, client, player_id="counted-player")
        body, headers = _callback(merchant, order)
        with traced_transactions(merchant.server.services.db) as runs:
            assert _post(merchant, body, headers).status_code == 200
        fulfilled = client.get(f"/v1/orders/{order['id']}").json()
    assert fulfilled["status"] == "fulfilled"
    [statements] = runs[CALLBACK_TRANSACTION]
    assert len(statements) <= STATEMENTS_MAX, "\n".join(statements)
    assert _webhook_objects(merchant) == {"order.paid": {**fulfilled, "status": "paid"}, "order.fulfilled": fulfilled}


def test_a_kept_order_view_lasts_until_a_row_is_written():
    """The view a webhook rendered serves the order's next move only while nothing else was
    written (a payment moved, goods granted): then it is rendered anew."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    tx = Tx(conn)
    view = msgspec.convert({**_ORDER_VIEW, "id": "ord_1"}, OrderView)
    keep_order_view(tx, view)
    assert kept_order_view(tx, "ord_1") is view
    assert kept_order_view(tx, "ord_2") is None
    tx.execute("UPDATE t SET x = 1")  # no row: nothing changed
    assert kept_order_view(tx, "ord_1") is view
    tx.execute("INSERT INTO t VALUES (1)")
    assert kept_order_view(tx, "ord_1") is None


_ORDER_VIEW = {"status": "paid", "player_id": "p", "items": [], "subtotal": 0, "discount": 0, "amount": 0,
               "currency": "USD", "channel": "sandbox", "channel_options": None, "promotions": [],
               "merchant_order_ref": None, "metadata": {},
               "expires_at": "2026-12-03T00:00:00Z", "created_at": "2026-12-03T00:00:00Z",
               "checkout_url": "http://x/checkout/t", "payment": None}


def _webhook_objects(merchant) -> dict[str, dict]:
    with sqlite3.connect(merchant.server.db_path) as conn:
        payloads = conn.execute("SELECT payload FROM webhook_events WHERE merchant_id = ? AND type LIKE 'order.%'",
                                (merchant.id,)).fetchall()
    events = [msgspec.json.decode(payload) for (payload,) in payloads]
    return {event["type"]: event["data"]["object"] for event in events}
