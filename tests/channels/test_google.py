"""The Google Play channel.

1. The channel against the Play Developer API stand-in (tests/channels/standin_google.py): the
   service-account JWT (checked by the stand-in with `cryptography` against the key's public
   half, decoded again here with PyJWT, and compared with the assertion Google's own google-auth
   makes for the same key, whose verifier accepts ours), the access token
   cached and fetched again after a 401, Google's errors mapped to stable codes, a token_uri
   off the vetted hosts refused.
2. Through the real server over HTTP, the stand-in on a real port: `POST /v1/iap/google`
   delivers once (201, then 200 `seen_before`, checked in the raw database) and acknowledges at
   the stand-in, refuses other apps' tokens, unknown products, pending and canceled purchases;
   a failed acknowledgement is retried by the job; voided-purchase notifications refund once when
   the Voided Purchases API confirms them, never when it does not; subscription renewals deliver
   to the player of the token; the ledger balances after each.
"""

from __future__ import annotations

import json

import httpx
import jwt
import pytest

from apss.channels.base import CallbackRequest, StoreReceipt
from apss.channels.google import GoogleChannel
from apss.channels.google.client import SCOPE, service_account_jwt
from apss.channels.google.mapping import service_account
from apss.clock import SystemClock
from apss.errors import CallbackRejected, ChannelUnavailable
from tests.channels.standin_google import GooglePlayStandIn
from tests.conftest import assert_error, assert_ledger_ok, fee_debits, plant, unique_sku
from tests.test_channels_e2e import _Served

pytestmark = pytest.mark.both_backends  # the tests through the real server; the others need none

PACKAGE = "com.example.game"


# -- the channel against the stand-in ----------------------------------------------------------


@pytest.fixture
def local():
    standin = GooglePlayStandIn(package_name=PACKAGE)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=standin), base_url=standin.url)
    channel = GoogleChannel(http=http, clock=SystemClock())
    credentials = {"package_name": PACKAGE, "service_account": standin.service_account(), "api_base": standin.url}
    return standin, channel, credentials


def _pem_public(standin: GooglePlayStandIn) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return standin.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_jwt_is_a_google_service_account_assertion() -> None:
    standin = GooglePlayStandIn(package_name=PACKAGE)
    account = service_account(standin.service_account())
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(account.private_key.encode(), password=None)
    assertion = service_account_jwt(account, key, now_s=1_800_000_000)
    # PyJWT, an implementation of its own, verifies the RS256 signature with the public key.
    claims = jwt.decode(assertion, _pem_public(standin), algorithms=["RS256"], audience=f"{standin.url}/token",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iss": standin.client_email, "scope": SCOPE, "aud": f"{standin.url}/token",
                      "iat": 1_800_000_000, "exp": 1_800_003_600}
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "typ": "JWT", "kid": standin.private_key_id}


def test_the_jwt_matches_google_auths_own_assertion_and_google_auth_verifies_it() -> None:
    """Google's own library (google-auth) as the oracle: for the same service account key, the
    assertion it makes for a token has our header and our claims, and google-auth's verifier
    accepts ours (signature, audience, times)."""
    import time

    from google.auth import jwt as google_jwt
    from google.oauth2 import service_account as google_service_account

    from apss.channels.google.client import GOOGLE_TOKEN_URI

    standin = GooglePlayStandIn(package_name=PACKAGE)
    info = {**json.loads(standin.service_account()), "token_uri": GOOGLE_TOKEN_URI}
    account = service_account(json.dumps(info))
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(account.private_key.encode(), password=None)
    ours = service_account_jwt(account, key, now_s=int(time.time()))
    theirs = google_service_account.Credentials.from_service_account_info(
        info, scopes=[SCOPE])._make_authorization_grant_assertion()
    theirs = theirs.decode() if isinstance(theirs, bytes) else theirs
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(theirs)
    ours_claims = jwt.decode(ours, options={"verify_signature": False})
    theirs_claims = jwt.decode(theirs, options={"verify_signature": False})
    assert set(ours_claims) == set(theirs_claims) == {"iss", "scope", "aud", "iat", "exp"}
    assert {k: ours_claims[k] for k in ("iss", "scope", "aud")} == {k: theirs_claims[k] for k in ("iss", "scope", "aud")}
    assert ours_claims["exp"] - ours_claims["iat"] == theirs_claims["exp"] - theirs_claims["iat"] == 3600
    verified = google_jwt.decode(ours, certs=_pem_public(standin).decode(), audience=GOOGLE_TOKEN_URI)
    assert verified["iss"] == standin.client_email
    tampered = ours[:-4] + ("AAAA" if not ours.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError):
        google_jwt.decode(tampered, certs=_pem_public(standin).decode(), audience=GOOGLE_TOKEN_URI)


@pytest.mark.anyio
async def test_purchase_read_and_token_cached_then_fetched_again_after_a_401(local) -> None:
    standin, channel, credentials = local
    token = standin.buy("gems_500", quantity=2)
    purchase = await channel.verify_purchase(StoreReceipt(token=token, product_id="gems_500"), credentials)
    assert (purchase.transaction_id, purchase.product_id, purchase.quantity, purchase.amount, purchase.currency) == (
        token, "gems_500", 2, None, "USD")
    assert purchase.order_ref == standin.products[(PACKAGE, token)]["orderId"] and not purchase.acknowledged
    await channel.verify_purchase(StoreReceipt(token=token, product_id="gems_500"), credentials)
    assert standin.calls.count(("POST", "token")) == 1  # cached
    assert standin.assertions[0]["claims"]["iss"] == standin.client_email  # the stand-in verified the JWT
    standin.access_tokens.clear()  # Google revoked it early
    await channel.verify_purchase(StoreReceipt(token=token, product_id="gems_500"), credentials)
    assert standin.calls.count(("POST", "token")) == 2
    assert repr(channel) == "GoogleChannel()"


@pytest.mark.anyio
async def test_googles_errors_map_to_stable_codes(local) -> None:
    standin, channel, credentials = local
    token = standin.buy("gems_500")
    cases = [
        (StoreReceipt(token="unknown-token", product_id="gems_500"), credentials, "store_purchase_not_found"),
        (StoreReceipt(token=token, product_id="gems_100"), credentials, "store_purchase_invalid"),
        (StoreReceipt(token=token, product_id="gems_500"), {**credentials, "package_name": "com.not.ours"},
         "store_access_denied"),
        (StoreReceipt(token=token, product_id="gems_500"),
         {**credentials, "service_account": GooglePlayStandIn(package_name=PACKAGE).service_account()},
         "store_access_denied"),  # a key Google does not know: invalid_grant
        (StoreReceipt(token=token, product_id="gems_500"), {**credentials, "service_account": "{\"type\": 1}"},
         "store_settings_invalid"),
    ]
    for receipt, given, code in cases:
        with pytest.raises(CallbackRejected) as refused:
            await channel.verify_purchase(receipt, given)
        assert refused.value.code == code, (code, str(refused.value))
        assert token not in str(refused.value)
    standin.fail_next["product"] = 1
    with pytest.raises(ChannelUnavailable):
        await channel.verify_purchase(StoreReceipt(token=token, product_id="gems_500"), credentials)


@pytest.mark.anyio
async def test_the_signed_assertion_goes_only_to_a_vetted_token_endpoint(local) -> None:
    standin, channel, credentials = local
    account = json.loads(standin.service_account())
    foreign = json.dumps({**account, "token_uri": "https://collector.example.net/token"})
    for given in ({**credentials, "service_account": foreign},
                  {"package_name": PACKAGE, "service_account": standin.service_account()}):  # Google's api_base
        with pytest.raises(CallbackRejected) as refused:
            await channel.verify_purchase(StoreReceipt(token="t", product_id="gems_500"), given)
        assert refused.value.code == "store_settings_invalid"
    assert standin.calls == []


@pytest.mark.anyio
async def test_acknowledging_twice_is_a_success_and_a_pending_one_is_refused(local) -> None:
    standin, channel, credentials = local
    token = standin.buy("gems_500")
    receipt = StoreReceipt(token=token, product_id="gems_500")
    await channel.acknowledge_purchase(receipt, credentials)
    await channel.acknowledge_purchase(receipt, credentials)  # the stand-in's 400, read back: acknowledged
    assert standin.products[(PACKAGE, token)]["acknowledgementState"] == 1
    pending = standin.buy("gems_500", state=2)
    with pytest.raises(CallbackRejected):
        await channel.acknowledge_purchase(StoreReceipt(token=pending, product_id="gems_500"), credentials)


@pytest.mark.anyio
async def test_notifications_are_confirmed_by_the_api(local) -> None:
    standin, channel, credentials = local

    def request(body: bytes) -> CallbackRequest:
        return CallbackRequest(headers={}, body=body, now_s=0)

    test = await channel.verify_notification(request(standin.push({"testNotification": {"version": "1.0"}})), credentials)
    assert (test.type, test.action, test.purchase) == ("TEST", "record", None)
    token = standin.buy("gems_500")
    forged = standin.push({"voidedPurchaseNotification": {"purchaseToken": token, "orderId": "GPA.1", "productType": 2,
                                                          "refundType": 1}})
    with pytest.raises(CallbackRejected) as refused:
        await channel.verify_notification(request(forged), credentials)
    assert refused.value.code == "store_notification_unconfirmed"
    voided = standin.void(token)
    body = standin.push({"voidedPurchaseNotification": {"purchaseToken": token, "orderId": voided["orderId"],
                                                        "productType": 2, "refundType": 1}}, message_id="777")
    confirmed = await channel.verify_notification(request(body), credentials)
    assert (confirmed.notification_id, confirmed.type, confirmed.action) == ("777", "VOIDED_PURCHASE", "refund")
    assert confirmed.purchase.transaction_id == token and confirmed.purchase.revoked_at_ms is not None
    other_app = standin.push({"testNotification": {}}, package="com.other")
    with pytest.raises(CallbackRejected) as refused:
        await channel.verify_notification(request(other_app), credentials)
    assert refused.value.code == "store_app_mismatch"
    with pytest.raises(CallbackRejected):
        await channel.verify_notification(request(b'{"message": {"data": "!!", "messageId": "1"}}'), credentials)


# -- through the real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def play():
    standin = GooglePlayStandIn(package_name=PACKAGE)
    served = _Served(standin)
    standin.url = served.url
    plant(json.loads(standin.service_account())["private_key"])  # never in a log line (conftest's check)
    yield standin
    served.stop()


@pytest.fixture
def shop(merchant, play):
    with merchant.client() as client:
        play.follow(merchant.server)
        response = client.put("/v1/channels/google", json={"package_name": PACKAGE, "api_base": play.url,
                                                           "service_account": play.service_account()})
        assert response.status_code == 200, response.text
        assert response.json()["callback_url"].endswith(f"/v1/channels/google/webhook/{merchant.id}")
        assert "service_account" not in response.json()["settings"]
        gems = merchant.product(client, sku=unique_sku("gems"), category="currency_pack", prices={"USD": 499},
                                grants=[{"type": "currency", "currency": "GEMS", "amount": 500}])
        yield merchant, client, gems


def _buy(client, product_id: str, token: str, player_id: str = "alice"):
    return client.post("/v1/iap/google", json={"player_id": player_id, "product_id": product_id,
                                               "purchase_token": token})


def _notify(merchant, client, body: bytes):
    return client.post(f"/v1/channels/google/webhook/{merchant.id}", content=body,
                       headers={"Content-Type": "application/json"})


def _orders(merchant) -> int:
    return merchant.server.raw("SELECT count(*) FROM orders WHERE merchant_id = ?", (merchant.id,))[0][0]


def test_purchase_is_delivered_once_and_acknowledged(shop, play) -> None:
    merchant, client, gems = shop
    token = play.buy(gems["sku"], quantity=2)
    first = _buy(client, gems["sku"], token)
    assert first.status_code == 201, first.text
    order = first.json()
    assert (order["status"], order["channel"], order["amount"], order["currency"], order["seen_before"]) == (
        "fulfilled", "google", 998, "USD", False)
    assert order["payment"]["status"] == "succeeded"
    assert order["metadata"]["google_order_id"] == play.products[(PACKAGE, token)]["orderId"]
    assert play.products[(PACKAGE, token)]["acknowledgementState"] == 1  # acknowledged at Google after delivery
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 1000}
    again = _buy(client, gems["sku"], token)
    assert again.status_code == 200, again.text
    assert again.json()["seen_before"] is True and again.json()["id"] == order["id"]
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 1000}
    rows = merchant.server.raw("SELECT * FROM store_transactions WHERE merchant_id = ?", (merchant.id,))
    assert [(r["store"], r["transaction_id"], r["order_id"], r["kind"], r["ack_due_at_ms"]) for r in rows] == [
        ("google", token, order["id"], "product", None)]
    assert rows[0]["acknowledged_at_ms"] is not None
    assert _orders(merchant) == 1
    credits = merchant.server.raw("SELECT amount FROM wallet_transactions WHERE merchant_id = ? AND order_id = ?",
                                  (merchant.id, order["id"]))
    assert [r["amount"] for r in credits] == [1000]
    assert fee_debits(merchant, "google") == [299]  # 30% of 998, half-even (the standard tier)
    assert_ledger_ok(merchant.server)


def test_foreign_unknown_pending_and_canceled_purchases_are_refused(shop, play) -> None:
    merchant, client, gems = shop
    calls_before = len(play.calls)
    assert_error(_buy(client, "no-such-sku", play.buy("no-such-sku")), 400, "invalid_request_error",
                 "store_product_unknown", "product_id")
    assert len(play.calls) == calls_before  # refused before asking Google
    cases = [(play.buy(gems["sku"], package="com.example.othergame"), "store_purchase_not_found"),
             ("never-bought-token", "store_purchase_not_found"),
             (play.buy(gems["sku"], state=2), "store_purchase_pending"),
             (play.buy(gems["sku"], state=1), "store_transaction_revoked")]
    for token, code in cases:
        assert_error(_buy(client, gems["sku"], token), 400, "invalid_request_error", code, "purchase_token")
    other = merchant.product(client, sku=unique_sku("gems"), prices={"USD": 100})
    assert_error(_buy(client, other["sku"], play.buy(gems["sku"])), 400, "invalid_request_error",
                 "store_purchase_invalid", "purchase_token")
    assert_error(_buy(client, gems["sku"], "bad token!"), 400, "invalid_request_error", "parameter_invalid",
                 "purchase_token")
    assert _orders(merchant) == 0
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {}


def test_a_failed_acknowledgement_is_retried_by_the_job(shop, play) -> None:
    merchant, client, gems = shop
    token = play.buy(gems["sku"])
    play.fail_next["ack_product"] = 1
    order = _buy(client, gems["sku"], token)
    assert order.status_code == 201 and order.json()["status"] == "fulfilled"
    assert play.products[(PACKAGE, token)]["acknowledgementState"] == 0
    row = merchant.server.raw("SELECT ack_due_at_ms, ack_attempts FROM store_transactions WHERE transaction_id = ?",
                              (token,))[0]
    assert row["ack_due_at_ms"] is not None and row["ack_attempts"] == 1
    merchant.server.clock.advance(seconds=61)
    merchant.server.wait_job("store_acknowledgements")
    assert play.products[(PACKAGE, token)]["acknowledgementState"] == 1
    row = merchant.server.raw("SELECT ack_due_at_ms, acknowledged_at_ms FROM store_transactions"
                              " WHERE transaction_id = ?",
                              (token,))[0]
    assert row["ack_due_at_ms"] is None and row["acknowledged_at_ms"] is not None


def _voided_push(play, token: str, order_id: str | None, *, message_id: str | None = None, product_type: int = 2):
    return play.push({"voidedPurchaseNotification": {"purchaseToken": token, "orderId": order_id,
                                                     "productType": product_type, "refundType": 1}},
                     message_id=message_id)


def test_voided_purchase_refunds_once_and_a_forged_one_changes_nothing(shop, play) -> None:
    merchant, client, gems = shop
    token = play.buy(gems["sku"])
    order = _buy(client, gems["sku"], token).json()
    order_id = play.products[(PACKAGE, token)]["orderId"]
    forged = _voided_push(play, token, order_id)  # Google lists no such voided purchase
    assert _notify(merchant, client, forged).status_code == 400
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
    play.void(token)
    body = _voided_push(play, token, order_id, message_id="9000000000000001")
    for _ in range(2):  # Pub/Sub redelivers: the same messageId again changes nothing
        assert _notify(merchant, client, body).status_code == 200
    assert _notify(merchant, client, _voided_push(play, token, order_id)).status_code == 200  # another messageId
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
    refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
    assert [(r["amount"], r["status"], r["reason"]) for r in refunds] == [(499, "succeeded", "store_refund")]
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 0}
    events = merchant.server.raw("SELECT event_id, kind, result FROM provider_events WHERE merchant_id = ?"
                                 " AND channel = 'google'", (merchant.id,))
    assert sorted(r["result"] for r in events) == ["applied", "stale"]
    assert "9000000000000001" in {r["event_id"] for r in events}
    assert merchant.server.raw("SELECT count(*) FROM refunds WHERE order_id = ?", (order["id"],))[0][0] == 1
    replay = _buy(client, gems["sku"], token)  # the voided token handed over again: the first order, nothing more
    assert replay.status_code == 200 and replay.json()["seen_before"] is True
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 0}
    other_app = play.push({"testNotification": {"version": "1.0"}}, package="com.example.othergame")
    assert _notify(merchant, client, other_app).status_code == 400
    assert_ledger_ok(merchant.server)


def test_subscription_is_acknowledged_and_renewals_deliver_to_the_player(merchant, play) -> None:
    with merchant.client() as client:
        play.follow(merchant.server)
        client.put("/v1/channels/google", json={"package_name": PACKAGE, "api_base": play.url, "fee_tier": "reduced",
                                                "service_account": play.service_account()})
        plan = merchant.product(client, sku=unique_sku("pass"), category="membership", prices={"USD": 999})
        token = play.subscribe(plan["sku"])
        first = _buy(client, plan["sku"], token, player_id="bob")
        assert first.status_code == 201, first.text
        assert first.json()["metadata"]["google_order_id"] == play.subscriptions[(PACKAGE, token)]["latestOrderId"]
        assert play.subscriptions[(PACKAGE, token)]["acknowledgementState"] == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
        renewal_order = play.renew(token)
        renewed = play.push({"subscriptionNotification": {"version": "1.0", "notificationType": 2,
                                                          "purchaseToken": token, "subscriptionId": plan["sku"]}})
        assert _notify(merchant, client, renewed).status_code == 200
        assert _notify(merchant, client, renewed).status_code == 200
        canceled = play.push({"subscriptionNotification": {"version": "1.0", "notificationType": 3,
                                                           "purchaseToken": token, "subscriptionId": plan["sku"]}})
        assert _notify(merchant, client, canceled).status_code == 200
        assert _notify(merchant, client, play.push({"testNotification": {"version": "1.0"}})).status_code == 200
        orders = client.get("/v1/orders", params={"player_id": "bob"}).json()["data"]
        assert sorted(o["status"] for o in orders) == ["fulfilled", "fulfilled"]
        assert {o["metadata"]["google_order_id"] for o in orders} == {first.json()["metadata"]["google_order_id"],
                                                                       renewal_order}
        again = _buy(client, plan["sku"], token, player_id="bob")  # the app posts it after the renewal
        assert again.status_code == 200 and again.json()["seen_before"] is True
        memberships = client.get("/v1/players/bob/inventory").json()["memberships"]
        assert [m["sku"] for m in memberships] == [plan["sku"]]
        results = merchant.server.raw("SELECT kind, result FROM provider_events WHERE merchant_id = ?",
                                      (merchant.id,))
        assert sorted((r["kind"], r["result"]) for r in results) == [
            ("SUBSCRIPTION_CANCELED", "recorded"), ("SUBSCRIPTION_RENEWED", "applied"), ("TEST", "recorded")]
        assert fee_debits(merchant, "google") == [150, 150]  # 15% of 999, the reduced tier
    assert_ledger_ok(merchant.server)


def test_unconfigured_merchant_and_orders_through_google_are_refused(merchant) -> None:
    with merchant.client() as client:
        assert_error(_buy(client, "gems", "token"), 400, "invalid_request_error", "channel_not_available")
        product = merchant.product(client)
        assert_error(merchant.order(client, product["id"], channel="google"), 400, "invalid_request_error",
                     "channel_not_available", "channel")


def test_a_quantity_based_partial_refund_refunds_those_units(shop, play) -> None:
    merchant, client, gems = shop
    token = play.buy(gems["sku"], quantity=3)
    order = _buy(client, gems["sku"], token, player_id="dave").json()
    assert order["amount"] == 1497
    voided = play.void(token, quantity=1)
    body = play.push({"voidedPurchaseNotification": {"purchaseToken": token, "orderId": voided["orderId"],
                                                     "productType": 2, "refundType": 2}})
    assert _notify(merchant, client, body).status_code == 200
    refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
    assert [(r["amount"], r["status"]) for r in refunds] == [(499, "succeeded")]
    assert client.get("/v1/players/dave/wallet").json()["balances"] == {"GEMS": 1000}
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] != "refunded"
    assert_ledger_ok(merchant.server)
