"""Reconciliation through the real server: a sandbox statement holding one case of each
discrepancy class, a Stripe balance-transaction export matched against payments made through
the stripe channel (its local stand-in), the alerts they raise, and the statement-free checks."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn

from apss.clock import TestClock
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request
from tests.conftest import RunningServer, free_port, wait_for
from tests.statements import render_sandbox_statement, statement_rows


@pytest.fixture(scope="module")
def money_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("reconciliation") / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stripe_standin(money_server):
    standin = StripeStandIn(secret_key="sk_test_standin_recon_0123", webhook_secret="whsec_standin_recon_0123",
                            pi_on_create=True, now_s=lambda: money_server.clock.now_ms() // 1000)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(standin, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    yield standin, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _sandbox_paid(merchant, client, product) -> dict:
    order = merchant.order(client, product["id"], player_id="recon-player").json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _import(client, channel: str, data: bytes, name: str = "statement.csv") -> httpx.Response:
    return client.post(f"/v1/reconciliation/{channel}/statements", content=data, params={"source_name": name},
                       headers={"Content-Type": "text/csv"})


def _reconciliation_alerts(client) -> list[tuple[str, str, str]]:
    alerts = client.get("/v1/alerts", params={"limit": 100}).json()["data"]
    return sorted((a["kind"], a["severity"], a["object_id"]) for a in alerts if a["kind"].startswith("reconciliation_"))


def test_a_sandbox_statement_with_one_case_of_each_discrepancy_class(money_server):
    merchant = money_server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 1000})
        orders = []
        for _ in range(5):
            orders.append(_sandbox_paid(merchant, client, product))
            money_server.clock.advance(seconds=10)
        refund = client.post(f"/v1/orders/{orders[0]['id']}/refunds", json={"amount": 300})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
        pay = [o["payment"]["id"] for o in orders]
        rows = statement_rows(money_server.db_path, merchant.id)
        assert [r["type"] for r in rows] == ["payment"] * 5 + ["refund"]
        assert rows[0]["fee"] == "59", "2.9% of 1000 + 30, as the ledger recorded it"
        ours = render_sandbox_statement(rows)
        honest = _import(client, "sandbox", ours, "honest.csv")
        assert honest.status_code == 201, honest.text
        assert {k: v for k, v in honest.json()["counts"].items() if v} == {"lines": 6, "matched": 6}
        # The provider's view, crafted: payment 0 and the refund match; payment 1 is missing at
        # the provider; 2 has another amount, 3 another currency, 4 another fee; one is not ours.
        crafted = [dict(r) for r in rows]
        crafted[2]["amount"] = "999"
        crafted[3]["currency"] = "EUR"
        crafted[4]["fee"] = "60"
        crafted.insert(3, {"type": "payment", "provider_ref": "sbx_not_ours_0001", "payment_id": "", "amount": "700",
                           "fee": "50", "currency": "USD", "occurred_at": rows[3]["occurred_at"]})
        del crafted[1]
        answer = _import(client, "sandbox", render_sandbox_statement(crafted), "crafted.csv")
        assert answer.status_code == 201, answer.text
        run = answer.json()
        assert run["counts"] == {"lines": 6, "skipped": 0, "matched": 2, "amount_mismatch": 1, "currency_mismatch": 1,
                                 "missing_here": 1, "missing_at_provider": 1, "fee_mismatch": 1}
        assert run["source_name"] == "crafted.csv" and run["channel"] == "sandbox"
        assert run["span_start"] == rows[0]["occurred_at"]
        detail = client.get(f"/v1/reconciliation/runs/{run['id']}").json()
        assert sorted((i["status"], i["payment_id"] or i["provider_ref"]) for i in detail["items"]) == sorted([
            ("matched", pay[0]), ("matched", pay[0]), ("missing_at_provider", pay[1]), ("amount_mismatch", pay[2]),
            ("currency_mismatch", pay[3]), ("fee_mismatch", pay[4]), ("missing_here", "sbx_not_ours_0001")])
        by_status = {}
        for item in detail["items"]:
            by_status.setdefault(item["status"], []).append(item)
        assert [i["kind"] for i in by_status["matched"]] == ["payment", "refund"]
        assert by_status["matched"][1]["refund_id"] == refund.json()["id"]
        assert (by_status["matched"][1]["ours_amount"], by_status["matched"][1]["theirs_amount"]) == (300, 300)
        [amount] = by_status["amount_mismatch"]
        assert (amount["payment_id"], amount["ours_amount"], amount["theirs_amount"], amount["line"]) == (pay[2], 1000, 999, 2)
        [currency] = by_status["currency_mismatch"]
        assert (currency["payment_id"], currency["currency"], currency["theirs_currency"]) == (pay[3], "USD", "EUR")
        [fee] = by_status["fee_mismatch"]
        assert (fee["payment_id"], fee["ours_fee"], fee["theirs_fee"]) == (pay[4], 59, 60)
        [missing_here] = by_status["missing_here"]
        assert (missing_here["provider_ref"], missing_here["payment_id"], missing_here["theirs_amount"]) == (
            "sbx_not_ours_0001", None, 700)
        [missing_there] = by_status["missing_at_provider"]
        assert (missing_there["payment_id"], missing_there["line"], missing_there["ours_amount"]) == (pay[1], None, 1000)
        assert missing_there["provider_ref"] == orders[1]["payment"]["next_action"]["url"].rsplit("/", 1)[1]
        only = client.get(f"/v1/reconciliation/runs/{run['id']}", params={"status": "fee_mismatch"}).json()["items"]
        assert [i["payment_id"] for i in only] == [pay[4]]

        expected_alerts = sorted([
            ("reconciliation_amount_mismatch", "critical", pay[2]),
            ("reconciliation_currency_mismatch", "critical", pay[3]),
            ("reconciliation_fee_mismatch", "warning", pay[4]),
            ("reconciliation_missing_at_provider", "critical", pay[1]),
            ("reconciliation_missing_here", "critical", "sbx_not_ours_0001"),
        ])
        assert _reconciliation_alerts(client) == expected_alerts, "one alert per discrepancy; none for matches"

        again = _import(client, "sandbox", render_sandbox_statement(crafted), "crafted-again.csv")
        assert again.status_code == 200 and again.json() == run, "the same file answers its first run"
        assert _reconciliation_alerts(client) == expected_alerts, "and raises nothing twice"
        listed = client.get("/v1/reconciliation/runs").json()
        assert [r["id"] for r in listed["data"]] == [run["id"], honest.json()["id"]] and listed["has_more"] is False
        assert client.get("/v1/reconciliation/runs", params={"channel": "stripe"}).json()["data"] == []

    other = money_server.new_merchant()
    with other.client() as client:
        assert client.get(f"/v1/reconciliation/runs/{run['id']}").status_code == 404
        assert client.get("/v1/reconciliation/runs").json()["data"] == []


def test_statement_errors(money_server):
    merchant = money_server.new_merchant()
    with merchant.client() as client:
        bad = _import(client, "sandbox", b"type,provider_ref,payment_id,amount,fee,currency,occurred_at\n"
                                         b"payment,sbx_1,,12.50,0,USD,2026-01-01T00:00:00Z\n")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "statement_malformed"
        assert "line 2" in bad.json()["error"]["message"]
        header = _import(client, "sandbox", b"a,b\n1,2\n")
        assert header.status_code == 400 and header.json()["error"]["param"] == "statement"
        empty = _import(client, "sandbox", b"")
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "statement_empty"
        unknown = _import(client, "nochannel", b"x")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert client.get("/v1/reconciliation/runs/rcn_nope").status_code == 404
    live = money_server.new_merchant(mode="live")
    with live.client() as client:
        refused = _import(client, "sandbox", b"type,provider_ref,payment_id,amount,fee,currency,occurred_at\n")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "channel_not_available"


def _decimal(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def _stripe_paid(merchant, client, product, standin) -> dict:
    order = merchant.order(client, product["id"], player_id="stripe-recon", channel="stripe").json()
    assert order["channel"] == "stripe", order
    session_id = next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == order["payment"]["id"])
    intent = standin.pay(session_id)
    event = signed_callback_request("payment_intent.succeeded", intent, secret=standin.webhook_secret,
                                    now_s=merchant.server.clock.now_ms() // 1000)
    answer = httpx.post(f"{merchant.server.base_url}/v1/channels/stripe/webhook/{merchant.id}", content=event.body,
                        headers=event.headers)
    assert answer.status_code == 200, answer.text
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def test_a_stripe_balance_transaction_export_matched_against_stripe_payments(money_server, stripe_standin):
    standin, url = stripe_standin
    merchant = money_server.new_merchant()
    with merchant.client() as client:
        saved = client.put("/v1/channels/stripe", json={"secret_key": standin.secret_key,
                                                        "webhook_secret": standin.webhook_secret, "api_base": url})
        assert saved.status_code == 200, saved.text
        product = merchant.product(client, prices={"USD": 500})
        orders = []
        for _ in range(3):
            orders.append(_stripe_paid(merchant, client, product, standin))
            money_server.clock.advance(seconds=5)
        refund = client.post(f"/v1/orders/{orders[0]['id']}/refunds", json={"amount": 200})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
        pay = [o["payment"]["id"] for o in orders]
        rows = statement_rows(money_server.db_path, merchant.id, channel="stripe")
        assert [r["provider_ref"][:3] for r in rows] == ["pi_", "pi_", "pi_", "re_"]
        assert rows[0]["fee"] == "44", "stripe: 2.9% of 500 (14.5 -> 14, half-even) + 30"

        def created(row) -> str:
            return datetime.fromisoformat(row["occurred_at"]).astimezone(UTC).strftime(
                "%Y-%m-%d %H:%M:%S")

        # The Dashboard export ("Balance change from activity"): decimal amounts; payment 1 is listed
        # by its charge (ch_) and found through the metadata column; payment 2 shows another amount.
        lines = ["id,Type,Source,Amount,Fee,Net,Currency,Created (UTC),Description,apss_payment_id (metadata)"]
        sources = [rows[0]["provider_ref"], "ch_test_from_charge_0001", rows[2]["provider_ref"], rows[3]["provider_ref"]]
        amounts = [500, 500, 450, -200]
        for n, (row, source, amount) in enumerate(zip(rows, sources, amounts)):
            kind = "charge" if row["type"] == "payment" else "refund"
            fee = int(row["fee"])
            metadata = row["payment_id"] if n == 1 else ""
            lines.append(f"txn_{n},{kind},{source},{_decimal(amount)},{_decimal(fee)},{_decimal(amount - fee)},usd,"
                         f"{created(row)},Gems,{metadata}")
        lines.append("txn_9,payout,po_test_0001,-10.00,0.00,-10.00,usd,,,")
        answer = _import(client, "stripe", ("\r\n".join(lines) + "\r\n").encode("utf-8-sig"), "stripe-export.csv")
        assert answer.status_code == 201, answer.text
        run = answer.json()
        assert run["counts"] == {"lines": 5, "skipped": 1, "matched": 3, "amount_mismatch": 1, "currency_mismatch": 0,
                                 "missing_here": 0, "missing_at_provider": 0, "fee_mismatch": 0}
        items = client.get(f"/v1/reconciliation/runs/{run['id']}").json()["items"]
        assert [(i["status"], i["kind"], i["payment_id"], i["refund_id"]) for i in items] == [
            ("matched", "payment", pay[0], None), ("matched", "payment", pay[1], None),
            ("amount_mismatch", "payment", pay[2], None), ("matched", "refund", pay[0], refund.json()["id"])]
        assert items[1]["provider_ref"] == "ch_test_from_charge_0001" and items[1]["ours_fee"] == items[1]["theirs_fee"] == 44
        assert _reconciliation_alerts(client) == [("reconciliation_amount_mismatch", "critical", pay[2])]


def test_checks_find_paid_orders_not_delivered_and_stuck_refunds(money_server):
    merchant = money_server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 800})
        stuck_order = _sandbox_paid(merchant, client, product)
        fine_order = _sandbox_paid(merchant, client, product)
        refunded = _sandbox_paid(merchant, client, product)
        refund = client.post(f"/v1/orders/{refunded['id']}/refunds", json={"amount": 100}).json()
        now_ms = money_server.clock.now_ms()
        with sqlite3.connect(money_server.db_path) as db:  # conditions the API cannot make
            db.execute("UPDATE orders SET status = 'paid', updated_at_ms = ? WHERE id = ?", (now_ms - 6 * 60_000, stuck_order["id"]))
            db.execute("UPDATE orders SET status = 'paid', updated_at_ms = ? WHERE id = ?", (now_ms - 60_000, fine_order["id"]))
            # Pending for over an hour, and the janitor has given up on it (checks_done = -1): the
            # sandbox would otherwise answer its status query and resolve it before the check.
            db.execute("UPDATE refunds SET status = 'pending', created_at_ms = ?, checks_done = -1, next_check_at_ms = NULL"
                       " WHERE id = ?", (now_ms - 3_700_000, refund["id"]))

        def checks_alerts() -> list[tuple[str, str, str]]:
            alerts = client.get("/v1/alerts", params={"limit": 100}).json()["data"]
            return sorted((a["kind"], a["severity"], a["object_id"]) for a in alerts
                          if a["kind"] in ("paid_not_delivered", "refund_stuck"))

        for _ in range(2):  # raised once per object, however often the job runs
            money_server.clock.advance(seconds=61)
            money_server.wait_job("reconciliation_checks")
            assert checks_alerts() == sorted([("paid_not_delivered", "critical", stuck_order["id"]),
                                              ("refund_stuck", "warning", refund["id"])])
        money_server.clock.advance(seconds=5 * 60)
        money_server.wait_job("reconciliation_checks")
        assert ("paid_not_delivered", "critical", fine_order["id"]) in checks_alerts(), "once it is older than 5 min"
