"""Merchant webhooks through the real server: a receiver that is down for its first attempts
then receives exactly the order's events, once each, signed with the endpoint's secret."""

from __future__ import annotations

import msgspec
import pytest

from apss.crypto import verify_timestamped
from tests.conftest import free_port, wait_for
from tests.test_webhooks import Receiver, _serve

pytestmark = pytest.mark.both_backends


def test_receiver_down_at_first_gets_every_event_signed(merchant):
    receiver = Receiver()
    port = free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(receiver, port, lifespan="off")
    try:
        url = receiver.route(first=(503, 503), then=200)
        server = merchant.server
        with merchant.client() as client:
            endpoint = client.post("/v1/webhook_endpoints", json={"url": url, "events": ["order.paid", "order.fulfilled"]})
            assert endpoint.status_code == 201, endpoint.text
            secret = endpoint.json()["secret"]
            product = merchant.product(client)
            order = merchant.order(client, product["id"], player_id="hooked").json()
            client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
            wait_for(lambda: len(receiver.at(url)) >= 1)
            for _ in range(6):  # let the backoff run out on the test clock: 503, 503, then 200s
                server.clock.advance(seconds=120)
                if len({r.headers["apss-event-id"] for r in receiver.at(url) if r.status == 200}) == 2:
                    break
                wait_for(lambda: server.services.scheduler.completed_as_of_ms("webhooks") >= server.clock.now_ms())
            delivered = wait_for(lambda: [r for r in receiver.at(url) if r.status == 200] if len(
                {r.headers["apss-event-id"] for r in receiver.at(url) if r.status == 200}) == 2 else None)
            types = sorted(msgspec.json.decode(r.body)["type"] for r in delivered)
            assert types == ["order.fulfilled", "order.paid"]
            assert len(delivered) == 2, "each event is delivered once after success"
            for request in receiver.at(url):
                assert verify_timestamped(secrets_allowed=[secret], header=request.headers["apss-signature"], body=request.body,
                                          now_s=server.clock.now_ms() // 1000, tolerance_s=10**9)
            paid = next(msgspec.json.decode(r.body) for r in delivered if msgspec.json.decode(r.body)["type"] == "order.paid")
            assert paid["data"]["object"]["id"] == order["id"]
    finally:
        served.should_exit = True
        thread.join(timeout=10)


def test_goods_delivered_by_the_game_wait_for_its_acknowledgement(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku="castle", grants=[{"type": "game", "sku": "castle", "data": {"tier": "gold"}},
                                                                 {"type": "currency", "currency": "GEMS", "amount": 5}])
        order = merchant.order(client, product["id"], player_id="builder").json()
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "delivering")
        assert client.get("/v1/players/builder/wallet").json()["balances"] == {"GEMS": 5}, "APSS grants are delivered at once"
        pending = client.get("/v1/deliveries", params={"status": "pending"}).json()["data"]
        assert [d["order_id"] for d in pending] == [order["id"]]
        delivery = pending[0]
        assert delivery["player_id"] == "builder"
        first = client.post(f"/v1/deliveries/{delivery['id']}/ack")
        second = client.post(f"/v1/deliveries/{delivery['id']}/ack")
        assert first.status_code == second.status_code == 200 and second.json()["status"] == "acknowledged"
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        statuses = [e["to_status"] for e in client.get(f"/v1/orders/{order['id']}/events").json()["data"]]
        assert statuses == ["pending", "paid", "delivering", "fulfilled"]
        assert client.get("/v1/deliveries", params={"status": "pending"}).json()["data"] == []
