"""Provider callbacks: verified before trusted, applied exactly once, stale ones move nothing."""

from __future__ import annotations

import httpx
import pytest

from apss.channels.sandbox import SIGNATURE_HEADER, build_event, sign_callback
from apss.domain.payments import CallbackKind
from apss.ids import new_id

pytestmark = pytest.mark.both_backends


def _gems_order(merchant, client, *, player_id="gem-player", stock=None):
    product = merchant.product(client, category="currency_pack", grants=[{"type": "currency", "currency": "GEMS", "amount": 100}],
                               stock=stock)
    order = merchant.order(client, product["id"], player_id=player_id).json()
    return product, order


def _callback(merchant, order, *, kind=CallbackKind.PAYMENT_SUCCEEDED, event_id=None, amount=None, currency=None,
              secret=None, timestamp_s=None, failure_code=None):
    server = merchant.server
    with merchant.client() as client:
        account = client.get("/v1/account").json()
    payment = order["payment"]
    provider_ref = payment["next_action"]["url"].rsplit("/", 1)[1]
    body = build_event(event_id=event_id or new_id("evt"), kind=kind, created_s=server.clock.now_ms() // 1000,
                       payment_id=payment["id"], amount=order["amount"] if amount is None else amount,
                       currency=currency or order["currency"], provider_ref=provider_ref, failure_code=failure_code)
    now_s = server.clock.now_ms() // 1000 if timestamp_s is None else timestamp_s
    header = sign_callback(secret=secret or account["sandbox_webhook_secret"], body=body, now_s=now_s)
    return body, {SIGNATURE_HEADER: header, "Content-Type": "application/json"}


def _post(merchant, body, headers):
    return httpx.post(f"{merchant.server.base_url}/v1/channels/sandbox/webhook/{merchant.id}", content=body, headers=headers)


def test_one_callback_delivered_ten_times_is_applied_once(merchant):
    with merchant.client() as client:
        product, order = _gems_order(merchant, client)
        body, headers = _callback(merchant, order)
        answers = [_post(merchant, body, headers) for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert client.get("/v1/players/gem-player/wallet").json()["balances"] == {"GEMS": 100}
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        assert [e["to_status"] for e in events] == ["pending", "paid", "fulfilled"]
        assert client.get(f"/v1/products/{product['id']}").json()["sold"] == 1


def test_a_second_success_with_another_event_id_is_stale(merchant):
    with merchant.client() as client:
        _, order = _gems_order(merchant, client, player_id="stale-player")
        for _ in range(3):
            body, headers = _callback(merchant, order)  # a fresh event id each time
            assert _post(merchant, body, headers).status_code == 200
        assert client.get("/v1/players/stale-player/wallet").json()["balances"] == {"GEMS": 100}


def test_failure_arriving_after_success_moves_nothing(merchant):
    with merchant.client() as client:
        product, order = _gems_order(merchant, client, player_id="order-player", stock=3)
        ok_body, ok_headers = _callback(merchant, order)
        failed_body, failed_headers = _callback(merchant, order, kind=CallbackKind.PAYMENT_FAILED, failure_code="card_declined")
        assert _post(merchant, ok_body, ok_headers).status_code == 200
        assert _post(merchant, failed_body, failed_headers).status_code == 200
        now = client.get(f"/v1/orders/{order['id']}").json()
        assert now["status"] == "fulfilled" and now["payment"]["status"] == "succeeded"
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (2, 0, 1)
        assert client.get("/v1/players/order-player/wallet").json()["balances"] == {"GEMS": 100}


def test_success_arriving_after_failure_takes_stock_again(merchant):
    with merchant.client() as client:
        product, order = _gems_order(merchant, client, player_id="retry-player", stock=1)
        failed_body, failed_headers = _callback(merchant, order, kind=CallbackKind.PAYMENT_FAILED, failure_code="card_declined")
        assert _post(merchant, failed_body, failed_headers).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "failed"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 1
        ok_body, ok_headers = _callback(merchant, order)
        assert _post(merchant, ok_body, ok_headers).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (0, 0, 1)


def test_late_success_without_stock_is_an_anomaly_not_a_delivery(merchant):
    with merchant.client() as client:
        product, order = _gems_order(merchant, client, player_id="late-player", stock=1)
        assert client.post(f"/v1/orders/{order['id']}/cancel").json()["status"] == "canceled"
        other = merchant.order(client, product["id"], player_id="someone")
        assert other.status_code == 201  # takes the released unit
        body, headers = _callback(merchant, order)
        assert _post(merchant, body, headers).status_code == 200
        now = client.get(f"/v1/orders/{order['id']}").json()
        assert now["status"] == "canceled" and now["payment"]["status"] == "succeeded"
        assert client.get("/v1/players/late-player/wallet").json()["balances"] == {}
        assert client.get(f"/v1/products/{product['id']}").json()["reserved"] == 1


def test_forged_and_stale_callbacks_are_refused_and_change_nothing(merchant):
    with merchant.client() as client:
        _, order = _gems_order(merchant, client, player_id="forge-player")
        forged_body, forged_headers = _callback(merchant, order, secret="whsec_not_the_merchants_secret")
        stale_body, stale_headers = _callback(merchant, order, timestamp_s=merchant.server.clock.now_ms() // 1000 - 301)
        good_body, _ = _callback(merchant, order)
        _, good_headers = _callback(merchant, order)
        tampered = good_body.replace(b'"amount":', b'"amount":1')  # signature over other bytes
        cases = [(forged_body, forged_headers), (stale_body, stale_headers), (tampered, good_headers),
                 (good_body, {"Content-Type": "application/json"}),
                 (good_body, {SIGNATURE_HEADER: "t=abc,v1=zz"})]
        for body, headers in cases:
            answer = _post(merchant, body, headers)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["type"] == "invalid_request_error"
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending"
        assert client.get("/v1/players/forge-player/wallet").json()["balances"] == {}


def test_amount_mismatch_is_an_anomaly_and_not_fulfilled(merchant):
    with merchant.client() as client:
        _, order = _gems_order(merchant, client, player_id="cheap-player")
        for wrong in ({"amount": 1}, {"currency": "EUR"}):
            body, headers = _callback(merchant, order, **wrong)
            assert _post(merchant, body, headers).status_code == 200
        now = client.get(f"/v1/orders/{order['id']}").json()
        assert now["status"] == "pending" and now["payment"]["status"] == "requires_action"
        assert client.get("/v1/players/cheap-player/wallet").json()["balances"] == {}


def test_callback_for_unknown_merchant_or_channel_is_404(merchant):
    with merchant.client() as client:
        _, order = _gems_order(merchant, client, player_id="nobody")
    body, headers = _callback(merchant, order)
    base = merchant.server.base_url
    assert httpx.post(f"{base}/v1/channels/sandbox/webhook/mch_unknown", content=body, headers=headers).status_code == 404
    assert httpx.post(f"{base}/v1/channels/nochannel/webhook/{merchant.id}", content=body, headers=headers).status_code == 404


def test_another_merchants_secret_cannot_move_this_merchants_payment(server):
    alice, mallory = server.new_merchant("Alice"), server.new_merchant("Mallory")
    with alice.client() as client:
        _, order = _gems_order(alice, client, player_id="alice-player")
    # Mallory signs with her own secret and posts to her own endpoint, naming Alice's payment.
    body, headers = _callback(mallory, order)
    answer = httpx.post(f"{server.base_url}/v1/channels/sandbox/webhook/{mallory.id}", content=body, headers=headers)
    assert answer.status_code == 200  # acknowledged (it is Mallory's valid event) ...
    with alice.client() as client:  # ... but it names no payment of Mallory's, so nothing moves
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending"
