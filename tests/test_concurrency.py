"""No overselling and no double order, under real concurrency over real HTTP."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


async def test_200_buyers_for_50_units_get_exactly_50_orders(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku="limited_blade", stock=50)
    async with merchant.async_client(max_connections=200) as client:
        async def buy(n: int):
            return await client.post("/v1/orders", json={
                "player_id": f"buyer-{n}", "currency": "USD", "items": [{"product_id": product["id"], "quantity": 1}]})

        responses = await asyncio.gather(*(buy(n) for n in range(200)))
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 50, 409: 150}, statuses
        refused = [r.json()["error"] for r in responses if r.status_code == 409]
        assert {(e["type"], e["code"], e["param"]) for e in refused} == {("conflict_error", "out_of_stock", "items[0]")}
        orders = [r.json() for r in responses if r.status_code == 201]
        assert len({o["id"] for o in orders}) == 50

        held = (await client.get(f"/v1/products/{product['id']}")).json()
        assert (held["stock"], held["reserved"], held["sold"]) == (0, 50, 0)

        paid = await asyncio.gather(*(client.post(f"/v1/sandbox/payments/{o['payment']['id']}/succeed") for o in orders))
        assert {r.status_code for r in paid} == {202}

    with merchant.client() as client:
        def all_fulfilled():
            listed = client.get("/v1/orders", params={"status": "fulfilled", "limit": 100}).json()["data"]
            # A callback that lost its HTTP race under this load is retried by the sandbox after a
            # backoff on the test clock: let a little time pass (far less than the reservation).
            merchant.server.clock.advance(seconds=2)
            return len(listed) == 50

        wait_for(all_fulfilled, timeout_s=60, interval_s=0.2)
        final = client.get(f"/v1/products/{product['id']}").json()
        assert (final["stock"], final["reserved"], final["sold"]) == (0, 0, 50)
        owners = [o["player_id"] for o in orders]
        for player_id in owners:
            inventory = client.get(f"/v1/players/{player_id}/inventory").json()
            assert inventory["items"] == [{"sku": "limited_blade", "quantity": 1}], player_id


async def test_50_requests_with_one_idempotency_key_make_one_order(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=10)
    body = {"player_id": "p-idem", "currency": "USD", "items": [{"product_id": product["id"], "quantity": 1}]}
    async with merchant.async_client(max_connections=50) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/orders", json=body, headers={"Idempotency-Key": "same-key-1"}) for _ in range(50)))
        created = [r for r in responses if r.status_code == 201]
        in_use = [r for r in responses if r.status_code == 409]
        assert len(created) + len(in_use) == 50 and created, Counter(r.status_code for r in responses)
        for response in in_use:
            assert response.json()["error"]["code"] == "idempotency_key_in_use"
            assert response.json()["error"]["type"] == "idempotency_error"
        first = [r for r in created if r.headers.get("idempotent-replayed") is None]
        assert len(first) == 1, "exactly one response is the original"
        assert all(r.content == first[0].content for r in created), "every 201 is the replay of the first"
        assert all(r.headers.get("idempotent-replayed") == "true" for r in created if r is not first[0])

        listed = (await client.get("/v1/orders", params={"player_id": "p-idem"})).json()["data"]
        assert [o["id"] for o in listed] == [first[0].json()["id"]]
        product_now = (await client.get(f"/v1/products/{product['id']}")).json()
        assert (product_now["stock"], product_now["reserved"]) == (9, 1)

        replay = await client.post("/v1/orders", json=body, headers={"Idempotency-Key": "same-key-1"})
        assert replay.status_code == 201 and replay.content == first[0].content
        assert replay.headers["idempotent-replayed"] == "true"

        other = await client.post("/v1/orders", json={**body, "player_id": "someone-else"},
                                  headers={"Idempotency-Key": "same-key-1"})
        assert other.status_code == 422
        assert other.json()["error"] == {"type": "idempotency_error", "code": "idempotency_key_reused",
                                         "message": other.json()["error"]["message"]}
