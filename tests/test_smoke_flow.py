"""A game server sells an item, the player pays in the sandbox, the item is in the inventory."""

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.both_backends


def test_item_is_delivered_after_sandbox_payment(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku="sword", stock=5)
        response = merchant.order(client, product["id"], player_id="hero", quantity=2)
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "pending" and order["amount"] == 1000
        assert order["payment"]["status"] == "requires_action"
        assert order["payment"]["next_action"]["url"].startswith(merchant.server.base_url + "/sandbox/pay/sbx_")
        paid = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        assert paid.status_code == 202 and paid.json() == {"payment_id": order["payment"]["id"], "status": "processing"}
        final = wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)
        assert final["payment"]["status"] == "succeeded"
        inventory = client.get("/v1/players/hero/inventory").json()
        assert inventory == {"player_id": "hero", "items": [{"sku": "sword", "quantity": 2}], "memberships": [], "entitlements": []}
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (3, 0, 2)
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        assert [(e["from_status"], e["to_status"]) for e in events] == [(None, "pending"), ("pending", "paid"), ("paid", "fulfilled")]
        assert events[1]["cause"].startswith("callback:evt_") and events[2]["cause"] == "delivery"


def test_the_creation_answer_is_the_order_as_read_back(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=5, prices={"USD": 250, "JPY": 40})
        for fields in ({}, {"currency": "JPY", "quantity": 3, "metadata": {"k": "v"}, "merchant_order_ref": "ref-1"}):
            created = merchant.order(client, product["id"], player_id="echo", **{"quantity": 1, **fields})
            assert created.status_code == 201
            assert client.get(f"/v1/orders/{created.json()['id']}").json() == created.json()
