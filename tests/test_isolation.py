"""Merchant isolation: another merchant's ids answer 404 not_found, never 403."""

from __future__ import annotations


def test_merchant_b_cannot_read_pay_or_cancel_merchant_a_objects(server):
    alice, bob = server.new_merchant("Alice"), server.new_merchant("Bob")
    with alice.client() as client:
        product = alice.product(client, stock=3)
        order = alice.order(client, product["id"], player_id="shared-name").json()
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
    with bob.client() as client:
        attempts = [
            client.get(f"/v1/orders/{order['id']}"),
            client.get(f"/v1/orders/{order['id']}/events"),
            client.post(f"/v1/orders/{order['id']}/cancel"),
            client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed"),
            client.post(f"/v1/sandbox/payments/{order['payment']['id']}/fail"),
            client.get(f"/v1/products/{product['id']}"),
            client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": -1}),
            client.post("/v1/orders", json={"player_id": "x", "currency": "USD", "items": [{"product_id": product["id"]}]}),
        ]
        for response in attempts:
            assert response.status_code == 404, (response.request.url, response.text)
            assert response.json()["error"]["code"] == "not_found"
        assert client.get("/v1/orders").json()["data"] == []
        assert client.get("/v1/products").json()["data"] == []
        assert client.get("/v1/players/shared-name/inventory").json()["items"] == []
    with alice.client() as client:
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 2


def test_rolled_key_stops_the_old_one_at_once(server):
    merchant = server.new_merchant()
    with server.admin() as admin:
        rolled = admin.post(f"/v1/merchants/{merchant.id}/keys")
    assert rolled.status_code == 201 and rolled.json()["secret_key"].startswith("sk_test_")
    with merchant.client() as client:
        old = client.get("/v1/account")
        assert old.status_code == 401 and old.json()["error"]["type"] == "authentication_error"
        client.headers["Authorization"] = f"Bearer {rolled.json()['secret_key']}"
        assert client.get("/v1/account").json()["id"] == merchant.id
