"""Reservations expire through the real scheduler when the injected clock moves."""

from __future__ import annotations

import httpx
import pytest

from apss.channels.sandbox import SIGNATURE_HEADER, build_event, sign_callback
from apss.domain.payments import CallbackKind
from apss.ids import new_id
from tests.conftest import wait_for

pytestmark = pytest.mark.both_backends


def test_moved_clock_expires_pending_orders_and_releases_stock(merchant):
    server = merchant.server
    with merchant.client() as client:
        product = merchant.product(client, stock=5)
        order = merchant.order(client, product["id"], quantity=3).json()
        held = client.get(f"/v1/products/{product['id']}").json()
        assert (held["stock"], held["reserved"]) == (2, 3)
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s - 5)
        seen_ms = server.clock.now_ms()
        wait_for(lambda: server.services.scheduler.completed_as_of_ms("expiry") >= seen_ms)
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending", "not yet due"
        server.clock.advance(seconds=6)
        expired = wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "expired" and o)
        assert expired["payment"]["status"] == "canceled"
        released = client.get(f"/v1/products/{product['id']}").json()
        assert (released["stock"], released["reserved"], released["sold"]) == (5, 0, 0)
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        assert (events[-1]["from_status"], events[-1]["to_status"], events[-1]["cause"]) == ("pending", "expired", "expiry")
        again = client.post(f"/v1/orders/{order['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_a_payment_after_expiry_revives_the_order_when_stock_remains(merchant):
    server = merchant.server
    with merchant.client() as client:
        product = merchant.product(client, stock=2)
        order = merchant.order(client, product["id"], player_id="slow-payer").json()
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s + 1)
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "expired")
        # The provider reports a success after the reservation ended (it raced the close): the
        # sandbox's own page refuses a closed payment, so the late success is its signed callback.
        account = client.get("/v1/account").json()
        body = build_event(event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED, created_s=server.clock.now_ms() // 1000,
                           payment_id=order["payment"]["id"], amount=order["amount"], currency=order["currency"],
                           provider_ref=order["payment"]["next_action"]["url"].rsplit("/", 1)[1])
        headers = {SIGNATURE_HEADER: sign_callback(secret=account["sandbox_webhook_secret"], body=body,
                                                   now_s=server.clock.now_ms() // 1000), "Content-Type": "application/json"}
        late = httpx.post(f"{server.base_url}/v1/channels/sandbox/webhook/{merchant.id}", content=body, headers=headers)
        assert late.status_code == 200, late.text
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (1, 0, 1)
        statuses = [e["to_status"] for e in client.get(f"/v1/orders/{order['id']}/events").json()["data"]]
        assert statuses == ["pending", "expired", "paid", "fulfilled"]


def test_cancel_releases_stock_and_is_only_for_pending_orders(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=4)
        order = merchant.order(client, product["id"], quantity=4).json()
        assert merchant.order(client, product["id"]).status_code == 409
        canceled = client.post(f"/v1/orders/{order['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"]) == (4, 0)
        twice = client.post(f"/v1/orders/{order['id']}/cancel")
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "invalid_state"
