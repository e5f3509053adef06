"""Closing unpaid payments at their providers, through the real server: an order that is canceled
or expires (on a moved clock) asks the closer to close its payment; the janitor's pass sends the
close through the gateway; the provider's stand-in (or the sandbox itself) records it, and the
payer can no longer pay. Stripe's session was created to expire with the reservation."""

from __future__ import annotations

import re
import sqlite3
from urllib.parse import parse_qsl

import httpx
import pytest

from apss.clock import TestClock
from tests.channels.standin_stripe import StripeStandIn
from tests.conftest import RunningServer, assert_ledger_ok, wait_for
from tests.test_channels_e2e import _Served


@pytest.fixture(scope="module")
def closing_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("closing") / "apss.sqlite", clock=TestClock(), env={
        "APSS_CHANNELS_JANITOR_INTERVAL_S": "1"}).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stripe(closing_server):
    standin = StripeStandIn(secret_key="sk_test_closing_0123456789", webhook_secret="whsec_closing_0123456789",
                            now_s=lambda: closing_server.clock.now_ms() // 1000)
    served = _Served(standin)
    yield standin, served.url
    served.stop()


def _payment_row(server, payment_id: str) -> sqlite3.Row:
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT close_state, close_attempts FROM payments WHERE id = ?", (payment_id,)).fetchone()


def _closed(server, payment_id: str) -> str:
    """Run the janitor (its interval on the moved clock) until the close is no longer pending."""
    def settled():
        server.clock.advance(seconds=server.config.channels.janitor_interval_s + 0.1)
        server.wait_job("payment_janitor")
        state = _payment_row(server, payment_id)["close_state"]
        return state if state != "pending" else None
    return wait_for(settled, timeout_s=20)


def _attempts(client, payment_id: str) -> list[tuple[str, str]]:
    return [(a["operation"], a["outcome"]) for a in client.get(f"/v1/payments/{payment_id}").json()["attempts"]]


def test_a_canceled_sandbox_order_is_closed_and_its_payer_refused(closing_server):
    server = closing_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=2)
        order = merchant.order(client, product["id"], player_id="closed-payer").json()
        pay_url = order["payment"]["next_action"]["url"]
        assert httpx.get(pay_url).status_code == 200, "open until the order ends"
        assert client.post(f"/v1/orders/{order['id']}/cancel").json()["status"] == "canceled"
        assert _closed(server, order["payment"]["id"]) == "done"
        assert ("cancel_payment", "succeeded") in _attempts(client, order["payment"]["id"])

        page = httpx.get(pay_url, headers={"Accept-Language": "zh-CN"})
        assert page.status_code == 410 and "支付已关闭" in page.text and "id=sandbox-pay" not in page.text
        paid = httpx.post(f"{pay_url}/pay", data={"lang": "en"})
        assert paid.status_code == 410 and "Payment closed" in paid.text
        refused = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "payment_closed"
        server.clock.advance(seconds=5)
        server.wait_job("sandbox_callbacks")
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "canceled", "no callback was sent"
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (2, 0, 0)
        assert client.get(f"/v1/payments/{order['payment']['id']}").json()["status"] == "canceled"
    assert_ledger_ok(server)


def test_an_expired_sandbox_order_is_closed_too(closing_server):
    server = closing_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="slow-payer").json()
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s + 1)
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "expired")
        assert _closed(server, order["payment"]["id"]) == "done"
        assert httpx.get(order["payment"]["next_action"]["url"]).status_code == 410
    assert_ledger_ok(server)


def test_a_canceled_and_an_expired_stripe_order_have_their_sessions_expired(closing_server, stripe):
    server = closing_server
    standin, url = stripe
    merchant = server.new_merchant()
    with merchant.client() as client:
        saved = client.put("/v1/channels/stripe", json={"secret_key": standin.secret_key,
                                                         "webhook_secret": standin.webhook_secret, "api_base": url})
        assert saved.status_code == 200, saved.text
        product = merchant.product(client, stock=3)
        now_s = server.clock.now_ms() // 1000
        canceled = merchant.order(client, product["id"], player_id="stripe-cancel", channel="stripe").json()
        session_id = re.search(r"/pay/(cs_[A-Za-z0-9_]+)", canceled["payment"]["next_action"]["url"]).group(1)
        sent = dict(parse_qsl(next(r for r in standin.requests if r.path == "/v1/checkout/sessions").body.decode()))
        assert now_s + 30 * 60 <= int(sent["expires_at"]) <= now_s + 24 * 3600
        assert standin.sessions[session_id]["expires_at"] == int(sent["expires_at"])
        assert client.post(f"/v1/orders/{canceled['id']}/cancel").status_code == 200
        assert _closed(server, canceled["payment"]["id"]) == "done"
        assert standin.expire_calls() == [session_id] and standin.sessions[session_id]["status"] == "expired"

        expired = merchant.order(client, product["id"], player_id="stripe-expire", channel="stripe").json()
        other = re.search(r"/pay/(cs_[A-Za-z0-9_]+)", expired["payment"]["next_action"]["url"]).group(1)
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s + 1)
        wait_for(lambda: client.get(f"/v1/orders/{expired['id']}").json()["status"] == "expired")
        assert _closed(server, expired["payment"]["id"]) == "done"
        assert standin.expire_calls() == [session_id, other]
        for order in (canceled, expired):
            assert client.get(f"/v1/orders/{order['id']}").json()["status"] in ("canceled", "expired")
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["reserved"], stock["sold"]) == (0, 0)
    assert_ledger_ok(server)


def test_a_paid_session_is_not_closed_and_is_left_to_the_late_payment_policy(closing_server, stripe):
    server = closing_server
    standin, url = stripe
    merchant = server.new_merchant()
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json={"secret_key": standin.secret_key,
                                                "webhook_secret": standin.webhook_secret, "api_base": url})
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="paid-late", channel="stripe").json()
        session_id = re.search(r"/pay/(cs_[A-Za-z0-9_]+)", order["payment"]["next_action"]["url"]).group(1)
        standin.pay(session_id)  # paid at Stripe; its webhook is still on its way
        assert client.post(f"/v1/orders/{order['id']}/cancel").status_code == 200
        assert _closed(server, order["payment"]["id"]) == "failed"
        attempt = client.get(f"/v1/payments/{order['payment']['id']}").json()["attempts"][-1]
        assert (attempt["operation"], attempt["outcome"], attempt["provider_code"]) == (
            "cancel_payment", "failed", "checkout_session_complete")

