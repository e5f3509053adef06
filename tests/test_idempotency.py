"""Idempotency beyond the concurrency test: refusals are stored, scope, what is not stored."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.both_backends


def test_a_business_refusal_is_stored_and_replayed(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        body = {"player_id": "p", "currency": "USD", "items": [{"product_id": product["id"], "quantity": 2}]}
        first = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "refused-1"})
        assert first.status_code == 409 and first.json()["error"]["code"] == "out_of_stock"
        client.patch(f"/v1/products/{product['id']}", json={"stock": 10})
        replay = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "refused-1"})
        assert replay.status_code == 409 and replay.content == first.content
        assert replay.headers["idempotent-replayed"] == "true"
        fresh = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "refused-2"})
        assert fresh.status_code == 201


def test_a_request_refused_before_execution_is_not_stored(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        bad = client.post("/v1/orders", json={"player_id": "p", "currency": "USD", "items": []},
                          headers={"Idempotency-Key": "validated-1"})
        assert bad.status_code == 400
        good = client.post(
            "/v1/orders", json={"player_id": "p", "currency": "USD", "items": [{"product_id": product["id"]}]},
            headers={"Idempotency-Key": "validated-1"})
        assert good.status_code == 201 and "idempotent-replayed" not in good.headers


def test_keys_are_scoped_to_the_merchant_and_the_endpoint(server):
    alice, bob = server.new_merchant("A"), server.new_merchant("B")
    with alice.client() as a, bob.client() as b:
        pa, pb = alice.product(a), bob.product(b)
        ra = a.post("/v1/orders", json={"player_id": "p", "currency": "USD", "items": [{"product_id": pa["id"]}]},
                    headers={"Idempotency-Key": "shared"})
        rb = b.post("/v1/orders", json={"player_id": "p", "currency": "USD", "items": [{"product_id": pb["id"]}]},
                    headers={"Idempotency-Key": "shared"})
        assert ra.status_code == rb.status_code == 201 and ra.json()["id"] != rb.json()["id"]
        other_endpoint = a.post(f"/v1/orders/{ra.json()['id']}/cancel", headers={"Idempotency-Key": "shared"})
        assert other_endpoint.status_code == 422 and other_endpoint.json()["error"]["code"] == "idempotency_key_reused"


def test_cancel_and_debit_replay(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"]).json()
        first = client.post(f"/v1/orders/{order['id']}/cancel", headers={"Idempotency-Key": "cancel-1"})
        second = client.post(f"/v1/orders/{order['id']}/cancel", headers={"Idempotency-Key": "cancel-1"})
        assert first.status_code == second.status_code == 200 and first.content == second.content
        third = client.post(f"/v1/orders/{order['id']}/cancel")
        assert third.status_code == 409


def test_admin_endpoints_ignore_the_header(server):
    with server.admin() as admin:
        one = admin.post("/v1/merchants", json={"name": "X"}, headers={"Idempotency-Key": "admin-1"})
        two = admin.post("/v1/merchants", json={"name": "X"}, headers={"Idempotency-Key": "admin-1"})
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"] and "idempotent-replayed" not in two.headers
