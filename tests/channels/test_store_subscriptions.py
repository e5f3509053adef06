"""App Store and Google Play subscriptions on APSS's subscriptions, and Pub/Sub push authentication.

Through the real server over HTTP, with the test certificate chain of tests/channels/apple_chain.py
and the Play Developer API stand-in on a real port:
1. Apple: the first auto-renewable purchase makes a subscription whose period and membership are
   the transaction's own dates (read back with Apple's app-store-server-library from the same
   JWS, and in the raw database); DID_RENEW adds a period and an order once; auto-renew off/on is
   cancel_at_period_end (a late, older notification changes nothing); DID_FAIL_TO_RENEW in the
   grace period is past_due with the membership to the renewal info's gracePeriodExpiresDate
   (decoded by Apple's library too); a recovery renews; EXPIRED ends it and the membership; the
   merchant's webhooks are the web subscriptions' ones; APSS's cancel is refused.
2. The renewal job never charges a store subscription; a refund of the current period ends it; a
   resubscribe makes a new one.
3. Google: the same through the API's subscriptionState (grace, hold, recovery, canceled,
   restarted, expired), a push the API does not confirm changing nothing.
4. Pub/Sub push authentication: ID tokens signed with google-auth's own signer verify, with the
   certificates in both of Google's formats, cached; tampered, expired, other-key, wrong-audience,
   wrong-issuer, other-account and unverified ones are refused, as google-auth's own decoder
   refuses those it checks; through the server a push without a valid token is 401
   `store_push_unauthenticated` and changes nothing (not even a call to Google).
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier

from apss.channels.google.client import _Settings
from apss.channels.google.push import PushKeys, verify_push_token
from apss.clock import format_rfc3339
from apss.errors import AuthenticationFailed, CallbackRejected
from tests.channels.apple_chain import APP_APPLE_ID, BUNDLE_ID, AppleSigner
from tests.channels.standin_google import GooglePlayStandIn
from tests.channels.test_apple import SIGNER
from tests.conftest import assert_error, assert_ledger_ok, plant, unique_sku, wait_for
from tests.test_channels_e2e import _Served

pytestmark = pytest.mark.both_backends

DAY_MS = 86_400_000
AUTO = "Auto-Renewable Subscription"
PACKAGE = "com.example.game"
APPLE = SignedDataVerifier([SIGNER.root_der], False, Environment.SANDBOX, BUNDLE_ID, APP_APPLE_ID)


# -- helpers -------------------------------------------------------------------------------------


def _apple_shop(merchant, client) -> dict:
    response = client.put("/v1/channels/apple", json={"bundle_id": BUNDLE_ID, "environment": "Sandbox",
                                                      "root_certificates": SIGNER.root_pem})
    assert response.status_code == 200, response.text
    return merchant.product(client, sku=unique_sku("com.example.pass"), category="membership", prices={"USD": 999})


def _period(signer: AppleSigner, sku: str, original: str | None, start_ms: int, end_ms: int, **fields) -> dict:
    extra = {"originalTransactionId": original, "transactionReason": "RENEWAL"} if original else {}
    return signer.transaction(productId=sku, type=AUTO, price=9990, purchaseDate=start_ms, expiresDate=end_ms,
                              originalPurchaseDate=start_ms, **{**extra, **fields})


def _notification(kind: str, transaction: dict, *, subtype: str | None = None, signed_at_ms: int | None = None,
                  renewal_info: dict | None = None) -> tuple[str, str]:
    """(body, signedPayload) of an App Store Server Notification v2 signed with the test chain."""
    data = {"appAppleId": APP_APPLE_ID, "bundleId": BUNDLE_ID, "bundleVersion": "1", "environment": "Sandbox",
            "signedTransactionInfo": SIGNER.sign(transaction)}
    if renewal_info is not None:
        data["signedRenewalInfo"] = SIGNER.sign(renewal_info)
    payload = {"notificationType": kind, "notificationUUID": str(uuid.uuid4()), "data": data, "version": "2.0",
               "signedDate": signed_at_ms or int(time.time() * 1000)}
    if subtype:
        payload["subtype"] = subtype
    signed = SIGNER.sign(payload)
    return json.dumps({"signedPayload": signed}), signed


def _post(merchant, client, store: str, body, headers: dict | None = None) -> httpx.Response:
    return client.post(f"/v1/channels/{store}/webhook/{merchant.id}", content=body,
                       headers={"Content-Type": "application/json", **(headers or {})})


def _sub(client, subscription_id: str) -> dict:
    response = client.get(f"/v1/subscriptions/{subscription_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _events(client, subscription_id: str) -> list[str]:
    return [e["type"] for e in client.get(f"/v1/subscriptions/{subscription_id}/events").json()["data"]]


def _membership_ms(merchant, player_id: str) -> int | None:
    rows = merchant.server.raw("SELECT expires_at_ms FROM memberships WHERE merchant_id = ? AND player_id = ?",
                               (merchant.id, player_id))
    return rows[0]["expires_at_ms"] if rows else None


def _row(merchant, subscription_id: str):
    rows = merchant.server.raw("SELECT * FROM subscriptions WHERE id = ?", (subscription_id,))
    return rows[0] if rows else None


def _results(merchant) -> list[tuple[str, str]]:
    rows = merchant.server.raw("SELECT kind, result FROM provider_events WHERE merchant_id = ?", (merchant.id,))
    return sorted((r["kind"], r["result"]) for r in rows)


# -- 1. Apple ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver():
    from tests.conftest import free_port
    from tests.test_webhooks import Receiver, _serve

    hooks, port = Receiver(), free_port()
    hooks.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(hooks, port, lifespan="off")
    yield hooks
    served.should_exit = True
    thread.join(timeout=10)


def test_an_app_store_subscription_follows_the_stores_dates_and_states(merchant, receiver) -> None:
    url = receiver.route(then=200)
    with merchant.client() as client:
        assert client.post("/v1/webhook_endpoints", json={"url": url, "events": [
            "subscription.created", "subscription.activated", "subscription.renewed", "subscription.past_due",
            "subscription.payment_failed", "subscription.cancel_scheduled", "subscription.resumed",
            "subscription.canceled"]}).status_code == 201
        plan = _apple_shop(merchant, client)
        sku, now = plan["sku"], merchant.server.clock.now_ms()
        end1 = now + 30 * DAY_MS + 12_345  # the store's dates, not a month of APSS's arithmetic
        first = _period(SIGNER, sku, None, now - 5_000, end1)
        signed = SIGNER.sign(first)
        bought = client.post("/v1/iap/apple", json={"player_id": "erin", "signed_transaction": signed})
        assert bought.status_code == 201, bought.text
        order = bought.json()
        assert order["status"] == "fulfilled" and order["subscription_id"].startswith("sub_")
        decoded = APPLE.verify_and_decode_signed_transaction(signed)  # Apple's own reading of the same JWS
        sub_id = order["subscription_id"]
        sub = _sub(client, sub_id)
        assert (sub["status"], sub["channel"], sub["amount"], sub["currency"], sub["cancel_at_period_end"]) == (
            "active", "apple", 999, "USD", False)
        assert sub["store"] == {"name": "apple", "original_transaction_id": decoded.originalTransactionId,
                                "environment": "Sandbox"}
        assert (sub["current_period_start"], sub["current_period_end"]) == (
            format_rfc3339(decoded.purchaseDate), format_rfc3339(decoded.expiresDate))
        assert sub["latest_order"]["id"] == order["id"]
        row = _row(merchant, sub_id)
        assert (row["current_period_start_ms"], row["current_period_end_ms"], row["next_charge_at_ms"]) == (
            decoded.purchaseDate, decoded.expiresDate, None)
        assert _membership_ms(merchant, "erin") == decoded.expiresDate
        assert client.get("/v1/subscriptions", params={"player_id": "erin"}).json()["data"][0]["id"] == sub_id

        # DID_RENEW: a period and an order, once (Apple retries the same notification)
        end2 = end1 + 31 * DAY_MS
        renewal = _period(SIGNER, sku, first["transactionId"], end1, end2)
        body, _ = _notification("DID_RENEW", renewal, signed_at_ms=now + 1_000)
        for _ in range(2):
            assert _post(merchant, client, "apple", body).status_code == 200
        sub = _sub(client, sub_id)
        assert (sub["current_period_start"], sub["current_period_end"]) == (format_rfc3339(end1), format_rfc3339(end2))
        assert sub["latest_order"]["metadata"]["apple_transaction_id"] == renewal["transactionId"]
        assert sub["latest_order"]["subscription_id"] == sub_id and sub["latest_order"]["status"] == "fulfilled"
        assert _membership_ms(merchant, "erin") == end2

        # auto-renew off, then on; the older "off" arriving late changes nothing
        off, _ = _notification("DID_CHANGE_RENEWAL_STATUS", renewal, subtype="AUTO_RENEW_DISABLED",
                               signed_at_ms=now + 2_000)
        assert _post(merchant, client, "apple", off).status_code == 200
        assert _sub(client, sub_id)["cancel_at_period_end"] is True
        on, _ = _notification("DID_CHANGE_RENEWAL_STATUS", renewal, subtype="AUTO_RENEW_ENABLED",
                              signed_at_ms=now + 4_000)
        late_off, _ = _notification("DID_CHANGE_RENEWAL_STATUS", renewal, subtype="AUTO_RENEW_DISABLED",
                                    signed_at_ms=now + 3_000)
        assert _post(merchant, client, "apple", on).status_code == 200
        assert _post(merchant, client, "apple", late_off).status_code == 200
        assert _sub(client, sub_id)["cancel_at_period_end"] is False

        # the renewal fails; Apple retries in its billing grace period: past_due, entitled to its end
        grace_end = end2 + 16 * DAY_MS
        info = {"originalTransactionId": first["transactionId"], "autoRenewProductId": sku, "productId": sku,
                "autoRenewStatus": 1, "isInBillingRetryPeriod": True, "gracePeriodExpiresDate": grace_end,
                "signedDate": int(time.time() * 1000), "environment": "Sandbox", "recentSubscriptionStartDate": now}
        failed, signed_failed = _notification("DID_FAIL_TO_RENEW", renewal, subtype="GRACE_PERIOD",
                                              signed_at_ms=now + 5_000, renewal_info=info)
        apple_info = APPLE.verify_and_decode_renewal_info(
            APPLE.verify_and_decode_notification(signed_failed).data.signedRenewalInfo)
        assert apple_info.gracePeriodExpiresDate == grace_end
        assert _post(merchant, client, "apple", failed).status_code == 200
        assert _sub(client, sub_id)["status"] == "past_due"
        assert _membership_ms(merchant, "erin") == apple_info.gracePeriodExpiresDate

        # billing recovered: active, the next period
        end3 = end2 + 30 * DAY_MS
        recovered = _period(SIGNER, sku, first["transactionId"], end2, end3)
        body, _ = _notification("DID_RENEW", recovered, subtype="BILLING_RECOVERY", signed_at_ms=now + 6_000)
        assert _post(merchant, client, "apple", body).status_code == 200
        sub = _sub(client, sub_id)
        assert (sub["status"], sub["current_period_end"]) == ("active", format_rfc3339(end3))
        assert _membership_ms(merchant, "erin") == end3
        stale, _ = _notification("DID_FAIL_TO_RENEW", renewal, signed_at_ms=now + 7_000)  # about the older period
        assert _post(merchant, client, "apple", stale).status_code == 200
        assert _sub(client, sub_id)["status"] == "active"
        assert_error(client.post(f"/v1/subscriptions/{sub_id}/cancel", json={}), 409, "conflict_error",
                     "subscription_store_managed")

        # the store ends it: canceled, the membership over
        expired, _ = _notification("EXPIRED", recovered, subtype="VOLUNTARY", signed_at_ms=now + 8_000)
        assert _post(merchant, client, "apple", expired).status_code == 200
        sub = _sub(client, sub_id)
        assert sub["status"] == "canceled" and sub["canceled_at"] is not None
        assert _membership_ms(merchant, "erin") <= merchant.server.clock.now_ms()
        assert client.get("/v1/players/erin/inventory").json()["memberships"] == []

        expected = ["subscription.created", "subscription.activated", "subscription.renewed",
                    "subscription.cancel_scheduled", "subscription.resumed", "subscription.past_due",
                    "subscription.renewed", "subscription.canceled"]
        assert _events(client, sub_id) == expected
        delivered = wait_for(lambda: [json.loads(r.body) for r in receiver.at(url)]
                             if len(receiver.at(url)) >= len(expected) else None)
        delivered.sort(key=lambda event: event["id"])
        assert [event["type"] for event in delivered] == expected
        assert delivered[-1]["data"]["object"]["store"]["name"] == "apple"
        assert delivered[-1]["data"]["object"]["status"] == "canceled"
        orders = merchant.server.raw("SELECT so.kind, so.period_index, so.period_end_ms FROM subscription_orders so"
                                     " WHERE so.subscription_id = ? ORDER BY period_index", (sub_id,))
        assert [tuple(r) for r in orders] == [("first", 0, end1), ("renewal", 1, end2), ("renewal", 2, end3)]
        assert _results(merchant) == sorted([
            ("DID_RENEW", "applied"), ("DID_CHANGE_RENEWAL_STATUS", "applied"), ("DID_CHANGE_RENEWAL_STATUS", "applied"),
            ("DID_CHANGE_RENEWAL_STATUS", "stale"), ("DID_FAIL_TO_RENEW", "applied"), ("DID_RENEW", "applied"),
            ("DID_FAIL_TO_RENEW", "stale"), ("EXPIRED", "applied")])
    assert_ledger_ok(merchant.server)


# -- 2. the renewal job, refunds, resubscribing -------------------------------------------------------


def test_the_renewal_job_never_charges_a_store_subscription_a_refund_ends_it_and_a_resubscribe_is_new(merchant):
    with merchant.client() as client:
        plan = _apple_shop(merchant, client)
        now = merchant.server.clock.now_ms()
        first = _period(SIGNER, plan["sku"], None, now - 1_000, now + 60_000)
        order = client.post("/v1/iap/apple", json={"player_id": "finn", "signed_transaction": SIGNER.sign(first)}).json()
        sub_id = order["subscription_id"]
        merchant.server.clock.advance(seconds=300)  # the period has ended; the store has said nothing yet
        merchant.server.wait_job("subscriptions")
        payments = merchant.server.raw("SELECT count(*) FROM payments WHERE merchant_id = ?", (merchant.id,))[0][0]
        attempts = merchant.server.raw("SELECT count(*) FROM payment_attempts a JOIN payments p ON p.id = a.payment_id"
                                       " WHERE p.merchant_id = ?", (merchant.id,))[0][0]
        assert (payments, attempts) == (1, 0)  # the store's own payment only: APSS never charged
        assert _row(merchant, sub_id)["next_charge_at_ms"] is None and _sub(client, sub_id)["status"] == "active"

        refunded = {**first, "revocationDate": int(time.time() * 1000), "revocationReason": 0}
        body, _ = _notification("REFUND", refunded)
        assert _post(merchant, client, "apple", body).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert _sub(client, sub_id)["status"] == "canceled"

        later = merchant.server.clock.now_ms()
        again = _period(SIGNER, plan["sku"], first["transactionId"], later, later + 30 * DAY_MS,
                        transactionReason="PURCHASE")
        body, _ = _notification("SUBSCRIBED", again, subtype="RESUBSCRIBE")
        assert _post(merchant, client, "apple", body).status_code == 200
        subs = client.get("/v1/subscriptions", params={"player_id": "finn"}).json()["data"]
        assert sorted(s["status"] for s in subs) == ["active", "canceled"]
        fresh = next(s for s in subs if s["status"] == "active")
        assert fresh["id"] != sub_id and fresh["store"]["original_transaction_id"] == first["transactionId"]
        assert _membership_ms(merchant, "finn") == later + 30 * DAY_MS
    assert_ledger_ok(merchant.server)


# -- 3. Google Play ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def play():
    standin = GooglePlayStandIn(package_name=PACKAGE)
    served = _Served(standin)
    standin.url = served.url
    plant(json.loads(standin.service_account())["private_key"])
    yield standin
    served.stop()


def _google_settings(play, **extra) -> dict:
    return {"package_name": PACKAGE, "api_base": play.url, "service_account": play.service_account(), **extra}


def _rtdn(play, kind: int, token: str, sku: str) -> bytes:
    return play.push({"subscriptionNotification": {"version": "1.0", "notificationType": kind, "purchaseToken": token,
                                                   "subscriptionId": sku}})


def test_a_google_play_subscription_follows_the_apis_state(merchant, play) -> None:
    with merchant.client() as client:
        play.follow(merchant.server)
        assert client.put("/v1/channels/google", json=_google_settings(play)).status_code == 200
        sku = merchant.product(client, sku=unique_sku("pass"), category="membership", prices={"USD": 999})["sku"]
        now = merchant.server.clock.now_ms()
        end1 = now + 30 * DAY_MS + 777
        token = play.subscribe(sku, start_ms=now - 2_000, expiry_ms=end1)
        order = client.post("/v1/iap/google", json={"player_id": "gail", "product_id": sku, "purchase_token": token})
        assert order.status_code == 201, order.text
        sub_id = order.json()["subscription_id"]
        sub = _sub(client, sub_id)
        assert (sub["status"], sub["store"]) == ("active", {"name": "google", "original_transaction_id": token,
                                                            "environment": "Production"})
        row = _row(merchant, sub_id)
        assert (row["current_period_start_ms"], row["current_period_end_ms"]) == (now - 2_000, play.expiry_ms(token))
        assert _membership_ms(merchant, "gail") == end1

        def push(kind: int) -> None:
            assert _post(merchant, client, "google", _rtdn(play, kind, token, sku)).status_code == 200

        end2 = end1 + 30 * DAY_MS
        renewal_order = play.renew(token, expiry_ms=end2)
        push(2)  # RENEWED
        push(5)  # ON_HOLD, but the API says active: recorded, nothing changes
        sub = _sub(client, sub_id)
        assert (sub["status"], sub["current_period_start"], sub["current_period_end"]) == (
            "active", format_rfc3339(end1), format_rfc3339(end2))
        assert sub["latest_order"]["metadata"]["google_order_id"] == renewal_order
        play.set_state(token, "SUBSCRIPTION_STATE_IN_GRACE_PERIOD", expiry_ms=end2 + 3 * DAY_MS)
        push(6)  # IN_GRACE_PERIOD: past_due, entitled to the API's expiryTime
        assert _sub(client, sub_id)["status"] == "past_due"
        assert _membership_ms(merchant, "gail") == play.expiry_ms(token)
        play.set_state(token, "SUBSCRIPTION_STATE_ON_HOLD")
        push(5)  # ON_HOLD: no entitlement
        assert _membership_ms(merchant, "gail") <= merchant.server.clock.now_ms()
        end3 = end2 + 33 * DAY_MS
        play.renew(token, expiry_ms=end3)
        push(1)  # RECOVERED: a new order, the next period
        sub = _sub(client, sub_id)
        assert (sub["status"], sub["current_period_end"]) == ("active", format_rfc3339(end3))
        assert _membership_ms(merchant, "gail") == end3
        play.set_state(token, "SUBSCRIPTION_STATE_CANCELED")
        push(3)  # CANCELED: auto-renew off
        assert _sub(client, sub_id)["cancel_at_period_end"] is True
        play.set_state(token, "SUBSCRIPTION_STATE_ACTIVE")
        push(7)  # RESTARTED
        assert _sub(client, sub_id)["cancel_at_period_end"] is False
        play.set_state(token, "SUBSCRIPTION_STATE_EXPIRED")
        push(13)  # EXPIRED
        assert _sub(client, sub_id)["status"] == "canceled"
        assert client.get("/v1/players/gail/inventory").json()["memberships"] == []
        assert _events(client, sub_id) == [
            "subscription.created", "subscription.activated", "subscription.renewed", "subscription.past_due",
            "subscription.payment_failed", "subscription.renewed", "subscription.cancel_scheduled",
            "subscription.resumed", "subscription.canceled"]
        assert _results(merchant) == sorted([
            ("SUBSCRIPTION_RENEWED", "applied"), ("SUBSCRIPTION_ON_HOLD", "recorded"),
            ("SUBSCRIPTION_IN_GRACE_PERIOD", "applied"), ("SUBSCRIPTION_ON_HOLD", "applied"),
            ("SUBSCRIPTION_RECOVERED", "applied"), ("SUBSCRIPTION_CANCELED", "applied"),
            ("SUBSCRIPTION_RESTARTED", "applied"), ("SUBSCRIPTION_EXPIRED", "applied")])
        kinds = merchant.server.raw("SELECT kind FROM subscription_orders WHERE subscription_id = ? ORDER BY period_index",
                                    (sub_id,))
        assert [k["kind"] for k in kinds] == ["first", "renewal", "renewal"]
    assert_ledger_ok(merchant.server)


# -- 4. Pub/Sub push authentication -----------------------------------------------------------------

AUDIENCE = "https://apss.example/v1/channels/google/webhook/mch_test"


@pytest.fixture
def local():
    standin = GooglePlayStandIn(package_name=PACKAGE)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=standin), base_url=standin.url)
    return standin, PushKeys(http=http)


def _other_key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PUSH_CASES = {
    "valid": ({}, True),
    "tampered": ({"tamper": True}, False),
    "signed_by_another_key": ({"key": "other"}, False),
    "unknown_key_id": ({"kid": "0" * 40}, False),
    "expired": ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, False),
    "wrong_audience": ({"aud": "https://elsewhere.example/push"}, False),
    "wrong_issuer": ({"iss": "https://issuer.example"}, False),
    "other_service_account": ({"email": "someone@other-project.iam.gserviceaccount.com"}, False),
    "email_not_verified": ({"email_verified": False}, False),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(PUSH_CASES))
@pytest.mark.parametrize("form", ["v1", "v3"])
async def test_push_tokens_signed_by_google_auth_verify_and_broken_ones_are_refused(local, case, form) -> None:
    from google.auth import jwt as google_jwt

    standin, keys = local
    changes, valid = PUSH_CASES[case]
    changes = dict(changes)
    tamper, key = changes.pop("tamper", False), changes.pop("key", None)
    audience = changes.pop("aud", AUDIENCE)
    token = standin.push_token(audience=audience, key=_other_key() if key else None, **changes)
    if tamper:
        head, body, sig = token.split(".")
        claims = json.loads(google_jwt._helpers.padded_urlsafe_b64decode(body))
        claims["email"] = "attacker@evil-project.iam.gserviceaccount.com"
        body = google_jwt._helpers.unpadded_urlsafe_b64encode(json.dumps(claims).encode()).decode()
        token = f"{head}.{body}.{sig}"
    url = f"{standin.url}/oauth2/{form}/certs"
    try:
        claims = await verify_push_token(f"Bearer {token}", keys=keys, certs_url=url, audience=AUDIENCE,
                                         email=standin.push_email, now_s=int(time.time()))
        ours = True
    except AuthenticationFailed as refused:
        assert refused.code == "store_push_unauthenticated" and token not in refused.message
        ours = False
    assert ours is valid, case
    # google-auth's own decoder checks the signature, the times and the audience
    certs = {standin.oidc_kid: standin.oidc_certificate_pem()}
    if case in ("valid", "tampered", "signed_by_another_key", "expired", "wrong_audience"):
        try:
            theirs = google_jwt.decode(token, certs=certs, audience=AUDIENCE)
        except (ValueError, google_jwt.exceptions.GoogleAuthError):
            theirs = None
        assert (theirs is not None) is valid, case
        if valid:
            assert theirs == claims and theirs["iss"] in ("accounts.google.com", "https://accounts.google.com")


@pytest.mark.anyio
async def test_push_certificates_are_cached_and_settings_go_together(local) -> None:
    standin, keys = local
    url, now = f"{standin.url}/oauth2/v1/certs", int(time.time())
    for _ in range(3):
        await verify_push_token(f"Bearer {standin.push_token(audience=AUDIENCE)}", keys=keys, certs_url=url,
                                audience=AUDIENCE, email=standin.push_email, now_s=now)
    for missing in (None, "Basic abc", "Bearer not-a-jwt"):
        with pytest.raises(AuthenticationFailed):
            await verify_push_token(missing, keys=keys, certs_url=url, audience=AUDIENCE, email=standin.push_email,
                                    now_s=now)
    forged_kid = standin.push_token(audience=AUDIENCE, kid="f" * 40)
    for _ in range(3):  # an unknown key id is fetched for once a minute at most
        with pytest.raises(AuthenticationFailed):
            await verify_push_token(f"Bearer {forged_kid}", keys=keys, certs_url=url, audience=AUDIENCE,
                                    email=standin.push_email, now_s=now)
    assert standin.calls.count(("GET", "certs")) == keys.fetches == 1
    later = standin.push_token(audience=AUDIENCE, iat=now + 19_801, exp=now + 23_401)
    await verify_push_token(f"Bearer {later}", keys=keys, certs_url=url, audience=AUDIENCE, email=standin.push_email,
                            now_s=now + 19_801)  # the answer's max-age has passed
    assert keys.fetches == 2
    base = {"package_name": PACKAGE, "service_account": standin.service_account(), "api_base": standin.url}
    for half in ({"push_audience": AUDIENCE}, {"push_service_account_email": standin.push_email}):
        with pytest.raises(CallbackRejected) as refused:
            _Settings({**base, **half})
        assert refused.value.code == "store_settings_invalid"


def test_an_unauthenticated_push_is_refused_before_anything_is_read(merchant, play) -> None:
    audience = f"{merchant.server.base_url}/v1/channels/google/webhook/{merchant.id}"
    with merchant.client() as client:
        settings = _google_settings(play, push_audience=audience, push_service_account_email=play.push_email,
                                    push_certs_url=f"{play.url}/oauth2/v3/certs")
        play.follow(merchant.server)
        assert_error(client.put("/v1/channels/google", json={**settings, "push_certs_url": "file:///etc/passwd"}),
                     400, "invalid_request_error", "setting_invalid", "push_certs_url")  # vetted like api_base
        response = client.put("/v1/channels/google", json=settings)
        assert response.status_code == 200, response.text
        assert response.json()["settings"]["push_audience"] == audience
        gems = merchant.product(client, sku=unique_sku("gems"), category="currency_pack", prices={"USD": 499},
                                grants=[{"type": "currency", "currency": "GEMS", "amount": 500}])
        token = play.buy(gems["sku"])
        order = client.post("/v1/iap/google", json={"player_id": "hal", "product_id": gems["sku"],
                                                    "purchase_token": token}).json()
        voided = play.void(token)
        body = play.push({"voidedPurchaseNotification": {"purchaseToken": token, "orderId": voided["orderId"],
                                                         "productType": 2, "refundType": 1}})
        calls = len(play.calls)
        # Pub/Sub stamps its tokens with the time the server reads as real (its clock here: an earlier
        # test may have moved the shared server's clock past the stand-in's own time)
        now = merchant.server.clock.now_ms() // 1000
        stamped = {"iat": now, "exp": now + 3600}
        head, payload, sig = play.push_token(audience=audience, **stamped).split(".")
        stranger = play.push_token(audience=audience, email="x@y.iam.gserviceaccount.com", **stamped)
        refused = [{}, {"Authorization": "Bearer " + ".".join((head, payload, sig[:-6] + "AAAAAA"))},
                   {"Authorization": f"Bearer {play.push_token(audience=audience + 'x', **stamped)}"},
                   {"Authorization": f"Bearer {play.push_token(audience=audience, iat=now - 4200, exp=now - 600)}"},
                   {"Authorization": f"Bearer {stranger}"}]
        for headers in refused:
            assert_error(_post(merchant, client, "google", body, headers), 401, "authentication_error",
                         "store_push_unauthenticated")
        assert [c for c in play.calls[calls:] if c != ("GET", "certs")] == []  # Google's API was never asked
        assert _results(merchant) == [] and client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        good = {"Authorization": f"Bearer {play.push_token(audience=audience, **stamped)}"}
        assert _post(merchant, client, "google", body, good).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert _results(merchant) == [("VOIDED_PURCHASE", "applied")]
    assert_ledger_ok(merchant.server)

