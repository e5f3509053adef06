"""The App Store channel.

1. Offline verification, cross-checked with Apple's own app-store-server-library
   (SignedDataVerifier): for signed transactions and notifications made in the tests with a chain
   of their own (tests/channels/apple_chain.py, signed with PyJWT), what ours accepts Apple's
   accepts, and both refuse the tampered, foreign, unmarked, expired, other-app and
   other-environment ones.
2. Through the real server over HTTP: `POST /v1/iap/apple` delivers a purchase once (201, then
   200 `seen_before`, checked in the raw database), refuses other apps, environments and products,
   books the store's fee; notifications refund once (duplicated notificationUUID ignored), deliver
   renewals to the original player, record the rest; the ledger balances after each.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
import uuid

import pytest
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.signed_data_verifier import (
    SignedDataVerifier,
    VerificationException,
)

from apss.channels.apple import AppleChannel
from apss.channels.apple.client import load_roots, verify_jws
from apss.channels.apple.mapping import milliunits_to_minor
from apss.channels.base import CallbackRequest, StoreReceipt
from apss.clock import SystemClock
from apss.errors import CallbackRejected
from tests.channels.apple_chain import APP_APPLE_ID, BUNDLE_ID, AppleSigner
from tests.conftest import assert_error, assert_ledger_ok, fee_debits, unique_sku

pytestmark = pytest.mark.both_backends  # the tests through the real server; the others need none

SIGNER = AppleSigner()


def _apple(signer: AppleSigner = SIGNER, *, environment: Environment = Environment.SANDBOX) -> SignedDataVerifier:
    return SignedDataVerifier([signer.root_der], False, environment, BUNDLE_ID, APP_APPLE_ID)


def _ours(signer: AppleSigner = SIGNER, environment: str = "Sandbox") -> tuple[AppleChannel, dict]:
    return AppleChannel(clock=SystemClock()), {"bundle_id": BUNDLE_ID, "environment": environment,
                                               "root_certificates": signer.root_pem, "app_apple_id": str(APP_APPLE_ID)}


def _verify(channel: AppleChannel, jws: str, credentials: dict):
    return asyncio.run(channel.verify_purchase(StoreReceipt(token=jws), credentials))


def _tamper(jws: str) -> str:
    head, body, sig = jws.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["productId"] = "gems_50000"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


def _far_future_ms() -> int:
    return int((datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=800)).timestamp() * 1000)


_FOREIGN = AppleSigner()  # a good chain under a root the merchant did not configure
_NO_LEAF_OID = AppleSigner(leaf_marker=False, root_key=SIGNER.root_key, root=SIGNER.root)
_NO_INTERMEDIATE_OID = AppleSigner(intermediate_marker=False, root_key=SIGNER.root_key, root=SIGNER.root)

CASES = {
    "valid": (lambda: SIGNER.sign(SIGNER.transaction()), True),
    "valid_family_shared": (lambda: SIGNER.sign(SIGNER.transaction(inAppOwnershipType="FAMILY_SHARED")), True),
    "tampered_payload": (lambda: _tamper(SIGNER.sign(SIGNER.transaction())), False),
    "foreign_root": (lambda: _FOREIGN.sign(_FOREIGN.transaction()), False),
    "leaf_without_apple_oid": (lambda: _NO_LEAF_OID.sign(_NO_LEAF_OID.transaction()), False),
    "intermediate_without_apple_oid": (lambda: _NO_INTERMEDIATE_OID.sign(_NO_INTERMEDIATE_OID.transaction()), False),
    "signed_after_the_chain_expired": (lambda: SIGNER.sign(SIGNER.transaction(signedDate=_far_future_ms())), False),
    "other_app": (lambda: SIGNER.sign(SIGNER.transaction(bundleId="com.other.game")), False),
    "other_environment": (lambda: SIGNER.sign(SIGNER.transaction(environment="Production")), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_verifier_agrees_with_apples(case: str) -> None:
    make, valid = CASES[case]
    jws = make()
    try:
        decoded = _apple().verify_and_decode_signed_transaction(jws)
        apple_accepts = True
    except VerificationException:
        apple_accepts = False
    channel, credentials = _ours()
    try:
        purchase = _verify(channel, jws, credentials)
        ours_accepts = True
    except CallbackRejected:
        ours_accepts = False
    assert (apple_accepts, ours_accepts) == (valid, valid), case
    if valid:
        assert (purchase.transaction_id, purchase.product_id, purchase.quantity) == (
            decoded.transactionId, decoded.productId, decoded.quantity)
        assert purchase.amount == milliunits_to_minor(decoded.price, decoded.currency)


def test_the_last_x5c_certificate_is_not_trusted_and_a_swapped_signature_fails() -> None:
    """A chain whose signature was made by another leaf key fails both (ES256 over header.payload)."""
    jws = SIGNER.sign(SIGNER.transaction())
    other = _FOREIGN.sign(_FOREIGN.transaction())
    swapped = ".".join(jws.split(".")[:2] + [other.split(".")[2]])
    with pytest.raises(VerificationException):
        _apple().verify_and_decode_signed_transaction(swapped)
    with pytest.raises(CallbackRejected):
        verify_jws(swapped, load_roots(SIGNER.root_pem), now_s=int(time.time()))


@pytest.mark.parametrize("mutate", ["bundle", "environment", "none"])
def test_notifications_agree_with_apples(mutate: str) -> None:
    body = SIGNER.notification("REFUND", SIGNER.transaction(revocationDate=int(time.time() * 1000)),
                               bundle_id="com.other.game" if mutate == "bundle" else BUNDLE_ID,
                               environment="Production" if mutate == "environment" else "Sandbox")
    signed = json.loads(body)["signedPayload"]
    channel, credentials = _ours()
    request = CallbackRequest(headers={}, body=body.encode(), now_s=int(time.time()))
    if mutate == "none":
        decoded = _apple().verify_and_decode_notification(signed)
        ours = asyncio.run(channel.verify_notification(request, credentials))
        assert (ours.notification_id, ours.type) == (decoded.notificationUUID, decoded.rawNotificationType)
        assert ours.purchase is not None and ours.purchase.revoked_at_ms is not None
        return
    with pytest.raises(VerificationException):
        _apple().verify_and_decode_notification(signed)
    with pytest.raises(CallbackRejected):
        asyncio.run(channel.verify_notification(request, credentials))


def test_apples_root_ships_as_the_default_and_refuses_test_chains() -> None:
    roots = load_roots(None)
    assert roots[0].subject.rfc4514_string() == "C=US,O=Apple Inc.,OU=Apple Certification Authority,CN=Apple Root CA - G3"
    from cryptography.hazmat.primitives import hashes
    assert roots[0].fingerprint(hashes.SHA256()).hex().upper() == (
        "63343ABFB89A6A03EBB57E9B3F5FA7BE7C4F5C756F3017B3A8C488C3653E9179")  # Apple's published fingerprint
    channel = AppleChannel(clock=SystemClock())
    with pytest.raises(CallbackRejected) as refused:
        _verify(channel, SIGNER.sign(SIGNER.transaction()), {"bundle_id": BUNDLE_ID, "environment": "Sandbox"})
    assert refused.value.code == "store_signature_invalid"


@pytest.mark.parametrize(("price", "currency", "minor"), [(4990, "USD", 499), (500000, "JPY", 500), (1250, "KWD", 1250),
                                                          (4995, "USD", 500), (4985, "USD", 498), (0, "EUR", 0)])
def test_milliunits_to_minor_units(price: int, currency: str, minor: int) -> None:
    assert milliunits_to_minor(price, currency) == minor


# -- through the real server -------------------------------------------------------------------


@pytest.fixture
def shop(merchant):
    with merchant.client() as client:
        response = client.put("/v1/channels/apple", json={"bundle_id": BUNDLE_ID, "environment": "Sandbox",
                                                          "root_certificates": SIGNER.root_pem})
        assert response.status_code == 200, response.text
        assert response.json()["callback_url"].endswith(f"/v1/channels/apple/webhook/{merchant.id}")
        sku = unique_sku("com.example.gems")
        gems = merchant.product(client, sku=sku, category="currency_pack", prices={"USD": 499},
                                grants=[{"type": "currency", "currency": "GEMS", "amount": 500}])
        yield merchant, client, gems


def _buy(client, signed: str, player_id: str = "alice"):
    return client.post("/v1/iap/apple", json={"player_id": player_id, "signed_transaction": signed})


def _notify(merchant, client, body: str):
    return client.post(f"/v1/channels/apple/webhook/{merchant.id}", content=body,
                       headers={"Content-Type": "application/json"})


def test_purchase_is_delivered_once(shop) -> None:
    merchant, client, gems = shop
    transaction = SIGNER.transaction(productId=gems["sku"])
    signed = SIGNER.sign(transaction)
    first = _buy(client, signed)
    assert first.status_code == 201, first.text
    order = first.json()
    assert (order["status"], order["channel"], order["amount"], order["currency"], order["seen_before"]) == (
        "fulfilled", "apple", 499, "USD", False)
    assert order["payment"]["status"] == "succeeded"
    assert order["metadata"]["apple_transaction_id"] == transaction["transactionId"]
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 500}
    again = _buy(client, SIGNER.sign(transaction))  # signed anew, the same transaction
    assert again.status_code == 200, again.text
    assert again.json()["seen_before"] is True and again.json()["id"] == order["id"]
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 500}
    rows = merchant.server.raw("SELECT * FROM store_transactions WHERE merchant_id = ?", (merchant.id,))
    assert [(r["transaction_id"], r["order_id"], r["player_id"]) for r in rows] == [
        (transaction["transactionId"], order["id"], "alice")]
    assert merchant.server.raw("SELECT count(*) FROM orders WHERE merchant_id = ?", (merchant.id,))[0][0] == 1
    credits = merchant.server.raw("SELECT amount FROM wallet_transactions WHERE merchant_id = ? AND order_id = ?",
                                  (merchant.id, order["id"]))
    assert [r["amount"] for r in credits] == [500]
    assert fee_debits(merchant, "apple") == [150]  # 30% of 499, half-even (the standard tier)
    assert_ledger_ok(merchant.server)


def test_other_app_environment_and_product_are_refused(shop) -> None:
    merchant, client, gems = shop
    cases = [(SIGNER.transaction(productId=gems["sku"], bundleId="com.other.game"), "store_app_mismatch"),
             (SIGNER.transaction(productId=gems["sku"], environment="Production"), "store_environment_mismatch"),
             (SIGNER.transaction(productId="com.example.unknown"), "store_product_unknown")]
    for transaction, code in cases:
        assert_error(_buy(client, SIGNER.sign(transaction)), 400, "invalid_request_error", code, "signed_transaction")
    assert_error(_buy(client, _tamper(SIGNER.sign(SIGNER.transaction(productId=gems["sku"])))), 400,
                 "invalid_request_error", "store_signature_invalid", "signed_transaction")
    assert_error(_buy(client, "not.a.jws"), 400, "invalid_request_error", "store_signature_invalid", "signed_transaction")
    assert merchant.server.raw("SELECT count(*) FROM orders WHERE merchant_id = ?", (merchant.id,))[0][0] == 0
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {}


def test_unconfigured_merchant_and_orders_through_apple_are_refused(merchant) -> None:
    with merchant.client() as client:
        assert_error(_buy(client, SIGNER.sign(SIGNER.transaction())), 400, "invalid_request_error", "channel_not_available")
        product = merchant.product(client)
        client.put("/v1/channels/apple", json={"bundle_id": BUNDLE_ID, "environment": "Sandbox"})
        assert_error(merchant.order(client, product["id"], channel="apple"), 400, "invalid_request_error",
                     "channel_not_available", "channel")


def test_refund_notification_books_the_refund_once(shop) -> None:
    merchant, client, gems = shop
    transaction = SIGNER.transaction(productId=gems["sku"])
    order = _buy(client, SIGNER.sign(transaction)).json()
    refunded = {**transaction, "revocationDate": int(time.time() * 1000), "revocationReason": 0}
    notification_uuid = str(uuid.uuid4())
    body = SIGNER.notification("REFUND", refunded, notification_uuid=notification_uuid)
    for _ in range(2):  # Apple retries: the same notificationUUID again changes nothing
        assert _notify(merchant, client, body).status_code == 200
    assert _notify(merchant, client, SIGNER.notification("REFUND", refunded)).status_code == 200  # another UUID
    view = client.get(f"/v1/orders/{order['id']}").json()
    assert view["status"] == "refunded"
    refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
    assert [(r["amount"], r["status"], r["reason"]) for r in refunds] == [(499, "succeeded", "store_refund")]
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 0}
    events = merchant.server.raw("SELECT event_id, result FROM provider_events"
                                 " WHERE merchant_id = ? AND channel = 'apple'"
                                 " ORDER BY received_at_ms, event_id", (merchant.id,))
    assert sorted(r["result"] for r in events) == ["applied", "stale"]
    assert notification_uuid in {r["event_id"] for r in events}
    assert merchant.server.raw("SELECT count(*) FROM refunds WHERE order_id = ?", (order["id"],))[0][0] == 1
    assert merchant.server.raw("SELECT revoked_at_ms FROM store_transactions WHERE order_id = ?",
                               (order["id"],))[0][0] is not None
    # A refunded transaction handed over again answers the order of the first time, delivering nothing.
    replay = _buy(client, SIGNER.sign(refunded))
    assert replay.status_code == 200 and replay.json()["seen_before"] is True
    assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 0}
    assert_ledger_ok(merchant.server)


def test_renewal_notification_delivers_to_the_original_player(merchant) -> None:
    with merchant.client() as client:
        client.put("/v1/channels/apple", json={"bundle_id": BUNDLE_ID, "environment": "Sandbox",
                                               "root_certificates": SIGNER.root_pem, "fee_tier": "reduced"})
        plan = merchant.product(client, sku=unique_sku("com.example.pass"), category="membership", prices={"USD": 999})
        month_ms = 30 * 86_400_000
        first = SIGNER.transaction(productId=plan["sku"], type="Auto-Renewable Subscription", price=9990,
                                   expiresDate=int(time.time() * 1000) + month_ms)
        order = _buy(client, SIGNER.sign(first), player_id="bob").json()
        assert order["status"] == "fulfilled"
        renewal = SIGNER.transaction(productId=plan["sku"], type="Auto-Renewable Subscription", price=9990,
                                     originalTransactionId=first["transactionId"], transactionReason="RENEWAL",
                                     purchaseDate=first["expiresDate"], expiresDate=first["expiresDate"] + month_ms)
        body = SIGNER.notification("DID_RENEW", renewal)
        assert _notify(merchant, client, body).status_code == 200
        assert _notify(merchant, client, body).status_code == 200
        for kind in ("CONSUMPTION_REQUEST", "RENEWAL_EXTENDED"):  # the subscription's states: test_store_subscriptions.py
            assert _notify(merchant, client, SIGNER.notification(kind, renewal)).status_code == 200
        orders = client.get("/v1/orders", params={"player_id": "bob"}).json()["data"]
        assert sorted(o["status"] for o in orders) == ["fulfilled", "fulfilled"]
        renewed = _buy(client, SIGNER.sign(renewal), player_id="bob")
        assert renewed.status_code == 200 and renewed.json()["seen_before"] is True
        memberships = client.get("/v1/players/bob/inventory").json()["memberships"]
        assert [m["sku"] for m in memberships] == [plan["sku"]]
        results = merchant.server.raw("SELECT kind, result FROM provider_events WHERE merchant_id = ?",
                                      (merchant.id,))
        assert sorted((r["kind"], r["result"]) for r in results) == [
            ("CONSUMPTION_REQUEST", "recorded"), ("DID_RENEW", "applied"), ("RENEWAL_EXTENDED", "recorded")]
        assert fee_debits(merchant, "apple") == [150, 150]  # 15% of 999, the reduced tier
    assert_ledger_ok(merchant.server)


def test_bad_notifications_are_refused_and_unknown_ones_recorded(shop) -> None:
    merchant, client, gems = shop
    forged = json.dumps({"signedPayload": _FOREIGN.sign({"notificationType": "REFUND"})})
    assert _notify(merchant, client, forged).status_code == 400
    assert _notify(merchant, client, "not json").status_code == 400
    assert _notify(merchant, client, SIGNER.notification("TEST", None)).status_code == 200
    unknown = SIGNER.notification("SOMETHING_NEW", SIGNER.transaction(productId=gems["sku"]))
    assert _notify(merchant, client, unknown).status_code == 200
    rows = merchant.server.raw("SELECT kind, result FROM provider_events WHERE merchant_id = ?", (merchant.id,))
    assert sorted((r["kind"], r["result"]) for r in rows) == [("SOMETHING_NEW", "unmatched"), ("TEST", "recorded")]


def test_family_shared_copy_moves_no_money_and_revoke_takes_the_goods_back(shop) -> None:
    merchant, client, gems = shop
    shared = SIGNER.transaction(productId=gems["sku"], inAppOwnershipType="FAMILY_SHARED")
    order = _buy(client, SIGNER.sign(shared), player_id="carol").json()
    assert (order["status"], order["amount"]) == ("fulfilled", 0)
    assert client.get("/v1/players/carol/wallet").json()["balances"] == {"GEMS": 500}
    revoked = {**shared, "revocationDate": int(time.time() * 1000)}
    body = SIGNER.notification("REVOKE", revoked)
    assert _notify(merchant, client, body).status_code == 200
    assert _notify(merchant, client, SIGNER.notification("REVOKE", revoked)).status_code == 200  # another UUID: stale
    assert client.get("/v1/players/carol/wallet").json()["balances"] == {"GEMS": 0}
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
    rows = merchant.server.raw("SELECT result FROM provider_events WHERE merchant_id = ? AND kind = 'REVOKE'",
                               (merchant.id,))
    assert sorted(r["result"] for r in rows) == ["applied", "stale"]
    assert merchant.server.raw("SELECT count(*) FROM ledger_transactions"
                               " WHERE merchant_id = ? AND kind = 'payment_captured'",
                               (merchant.id,))[0][0] == 0
    assert_ledger_ok(merchant.server)
