"""The stripe channel: cross-checked against stripe-python (16.x) and run against a local stand-in.

Cross-checks: webhooks signed by `stripe.WebhookSignature.generate_signature_header` verify with
ours; headers made by apss.crypto verify with `stripe.Webhook.construct_event`; our form bodies
are byte-identical to what a `stripe.StripeClient` sends for the same parameters (captured by a
fake `stripe.HTTPClient`, nothing leaves the process); the stand-in's answers parse as SDK objects.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import msgspec
import pytest
import stripe
from stripe._encode import _api_encode

from apss.channels.base import (
    CallbackRequest,
    PaymentQuery,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
    StatementLine,
)
from apss.channels.stripe import StripeChannel, mapping
from apss.crypto import sign_timestamped
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    InvalidRequest,
    ProviderDeclined,
)
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request

NOW_S = 1_767_225_600  # 2026-01-01T00:00:00Z
SECRET_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
WEBHOOK_SECRET = "whsec_8f3c1b2a9d7e4f60a1b2c3d4e5f60718"
API_BASE = "https://api.stripe.standin.test"
CREDENTIALS = {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": API_BASE}
PAYMENT_ID = "pay_01m89ng6h9bsa6pt3b8qajdksk"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def standin() -> StripeStandIn:
    return StripeStandIn(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
async def channel(standin: StripeStandIn):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=standin), timeout=5.0) as http:
        yield StripeChannel(public_url="https://apss.example.test", http=http)


def payment_request(**overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = dict(
        payment_id=PAYMENT_ID, order_id="ord_01m89ng6h9bsa6pt3b8qajdkss", merchant_id="mer_demo",
        amount=1999, currency="USD", description="大乐透 gems & more = 100",
        callback_url="https://apss.example.test/v1/channels/stripe/webhook/mer_demo",
        return_url="https://game.example.test/done?order=ord_1&x=y",
    )
    fields.update(overrides)
    return PaymentRequest(**fields)


def intent_object(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "amount": 1999,
        "amount_received": 1999, "currency": "usd", "status": "succeeded",
        "metadata": {"apss_payment_id": PAYMENT_ID}, "last_payment_error": None, "description": "支付成功",
    }
    obj.update(overrides)
    return obj


# --- webhook signatures, both directions against stripe-python


@pytest.mark.anyio
async def test_sdk_signed_event_verifies_with_ours(channel: StripeChannel) -> None:
    request = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET,
                                      now_s=NOW_S, event_id="evt_1")
    assert request.headers["stripe-signature"].startswith(f"t={NOW_S},v1=")
    events = await channel.verify_callback(request, CREDENTIALS)
    assert len(events) == 1
    event = events[0]
    assert (event.event_id, event.kind, event.payment_id) == ("evt_1", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID)
    assert (event.provider_ref, event.amount, event.currency) == ("pi_3MtwBwLkdIwHu7ix28a3tqPa", 1999, "USD")


@pytest.mark.anyio
async def test_our_header_verifies_with_sdk_construct_event(channel: StripeChannel) -> None:
    now_s = int(time.time())  # construct_event checks the timestamp against the real clock
    body = json.dumps({"id": "evt_2", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": intent_object()}}, ensure_ascii=False).encode()
    header = sign_timestamped(secret=WEBHOOK_SECRET, timestamp_s=now_s, body=body) + ",v0=" + "0" * 64
    event = stripe.Webhook.construct_event(body, header, WEBHOOK_SECRET)
    assert (event.id, event.type, event.data.object.status) == ("evt_2", "payment_intent.succeeded", "succeeded")
    request = CallbackRequest(headers={"stripe-signature": header}, body=body, now_s=now_s)
    assert [e.event_id for e in await channel.verify_callback(request, CREDENTIALS)] == ["evt_2"]


@pytest.mark.anyio
async def test_tampered_byte_is_rejected_by_ours_and_sdk(channel: StripeChannel) -> None:
    now_s = int(time.time())
    good = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET, now_s=now_s)
    body = good.body.replace(b'"amount":1999', b'"amount":1998', 1)
    assert body != good.body
    bad = CallbackRequest(headers=good.headers, body=body, now_s=now_s)
    with pytest.raises(CallbackRejected, match="does not match"):
        await channel.verify_callback(bad, CREDENTIALS)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, good.headers["stripe-signature"], WEBHOOK_SECRET)


@pytest.mark.anyio
async def test_stale_timestamp_is_rejected_by_ours_and_sdk(channel: StripeChannel) -> None:
    now_s = int(time.time())
    stale = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET,
                                    now_s=now_s, timestamp_s=now_s - 301)
    with pytest.raises(CallbackRejected, match="tolerance"):
        await channel.verify_callback(stale, CREDENTIALS)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(stale.body, stale.headers["stripe-signature"], WEBHOOK_SECRET)
    edge = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET,
                                   now_s=now_s, timestamp_s=now_s - 300)
    assert len(await channel.verify_callback(edge, CREDENTIALS)) == 1


@pytest.mark.anyio
async def test_future_timestamp_is_rejected_by_ours_though_the_sdk_accepts_it(channel: StripeChannel) -> None:
    now_s = int(time.time())
    future = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET,
                                     now_s=now_s, timestamp_s=now_s + 301)
    assert stripe.Webhook.construct_event(future.body, future.headers["stripe-signature"], WEBHOOK_SECRET)
    with pytest.raises(CallbackRejected, match="tolerance"):
        await channel.verify_callback(future, CREDENTIALS)


@pytest.mark.anyio
async def test_rolled_secret_second_v1_matches_and_v0_only_is_refused(channel: StripeChannel) -> None:
    good = signed_callback_request("payment_intent.succeeded", intent_object(), secret=WEBHOOK_SECRET, now_s=NOW_S)
    t_part, v1_part = good.headers["stripe-signature"].split(",")
    rolled = f"{t_part},v1={'a' * 64},{v1_part}"
    request = CallbackRequest(headers={"stripe-signature": rolled}, body=good.body, now_s=NOW_S)
    assert len(await channel.verify_callback(request, CREDENTIALS)) == 1
    v0_only = f"{t_part},{v1_part.replace('v1=', 'v0=')}"
    with pytest.raises(CallbackRejected, match="no t= and v1="):
        await channel.verify_callback(CallbackRequest(headers={"stripe-signature": v0_only}, body=good.body, now_s=NOW_S), CREDENTIALS)


@pytest.mark.anyio
async def test_wrong_secret_missing_header_and_missing_secret_are_refused(channel: StripeChannel) -> None:
    good = signed_callback_request("payment_intent.succeeded", intent_object(), secret="whsec_other", now_s=NOW_S)
    with pytest.raises(CallbackRejected, match="does not match"):
        await channel.verify_callback(good, CREDENTIALS)
    with pytest.raises(CallbackRejected):
        await channel.verify_callback(CallbackRequest(headers={}, body=good.body, now_s=NOW_S), CREDENTIALS)
    with pytest.raises(CallbackRejected, match="not configured"):
        await channel.verify_callback(good, {**CREDENTIALS, "webhook_secret": ""})


@pytest.mark.anyio
async def test_signature_is_checked_before_the_body_is_parsed(channel: StripeChannel) -> None:
    body = b"not json at all"
    unsigned = CallbackRequest(headers={"stripe-signature": f"t={NOW_S},v1={'0' * 64}"}, body=body, now_s=NOW_S)
    with pytest.raises(CallbackRejected, match="does not match"):
        await channel.verify_callback(unsigned, CREDENTIALS)
    signed = CallbackRequest(
        headers={"stripe-signature": sign_timestamped(secret=WEBHOOK_SECRET, timestamp_s=NOW_S, body=body)},
        body=body, now_s=NOW_S,
    )
    with pytest.raises(CallbackRejected, match="unexpected shape"):
        await channel.verify_callback(signed, CREDENTIALS)


# --- outgoing requests, byte for byte against stripe-python's own requestor


class _CaptureHTTPClient(stripe.HTTPClient):
    """A stripe.HTTPClient that records the request and answers with a canned body."""

    name = "capture"

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []

    def request(self, method, url, headers, post_data=None, *, _usage=None):  # type: ignore[override]
        self.calls.append((method, url, dict(headers or {}), post_data))
        return json.dumps(self.answer), 200, {}

    def close(self) -> None:
        pass


def _sdk(answer: dict[str, Any]) -> tuple[stripe.StripeClient, _CaptureHTTPClient]:
    capture = _CaptureHTTPClient(answer)
    client = stripe.StripeClient(SECRET_KEY, http_client=capture, base_addresses={"api": API_BASE}, max_network_retries=0)
    return client, capture


def test_form_encoding_matches_stripe_encoder() -> None:
    params = mapping.checkout_session_params(payment_request(), return_url="https://g.example/done?a=1&b=[2]", now_s=NOW_S)
    ours = mapping.form_encode(params)
    theirs = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
    assert ours == theirs
    pairs = parse_qsl(ours, strict_parsing=True)
    assert ("line_items[0][price_data][currency]", "usd") in pairs
    assert ("line_items[0][price_data][unit_amount]", "1999") in pairs
    assert ("line_items[0][price_data][product_data][name]", "大乐透 gems & more = 100") in pairs
    assert ("payment_intent_data[metadata][apss_payment_id]", PAYMENT_ID) in pairs
    nested = {"a": [{"b": True, "c": None}, [1, 2]], "d": {"e": {"f": "g"}}}
    assert mapping.form_encode(nested) == urlencode(list(_api_encode(nested))).replace("%5B", "[").replace("%5D", "]")


@pytest.mark.anyio
async def test_create_payment_request_is_what_the_sdk_sends(channel: StripeChannel, standin: StripeStandIn) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    ours = standin.requests[-1]
    sdk, capture = _sdk(standin.public_session(created.provider_ref))
    params = mapping.checkout_session_params(payment_request(), return_url=payment_request().return_url or "", now_s=NOW_S)
    session = sdk.v1.checkout.sessions.create(params, {"idempotency_key": PAYMENT_ID})
    method, url, headers, post_data = capture.calls[0]
    assert (method.upper(), urlsplit(url).path) == (ours.method, ours.path) == ("POST", "/v1/checkout/sessions")
    assert post_data == ours.body.decode()
    for name in ("Authorization", "Idempotency-Key", "Content-Type"):
        assert headers[name] == ours.headers[name.lower()], name
    assert session.url == created.next_action.url  # the stand-in's answer parses as the SDK's Session


@pytest.mark.anyio
async def test_refund_and_query_requests_are_what_the_sdk_sends(channel: StripeChannel, standin: StripeStandIn) -> None:
    standin.pi_on_create = True
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    session_id = next(iter(standin.sessions))
    standin.pay(session_id)
    refund = RefundRequest(refund_id="ref_01abc", payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                           amount=500, currency="USD", reason="requested_by_customer")
    result = await channel.refund(refund, CREDENTIALS)
    ours = standin.requests[-1]
    sdk, capture = _sdk(standin.refunds[result.provider_refund_ref])
    sdk.v1.refunds.create(mapping.refund_params(refund, payment_intent=created.provider_ref), {"idempotency_key": "ref_01abc"})
    assert capture.calls[0][3] == ours.body.decode()
    assert capture.calls[0][2]["Idempotency-Key"] == ours.headers["idempotency-key"] == "ref_01abc"
    await channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=session_id, amount=1999, currency="USD"), CREDENTIALS)
    ours = standin.requests[-1]
    sdk, capture = _sdk(standin.public_session(session_id))
    sdk.v1.checkout.sessions.retrieve(session_id, {"expand": ["payment_intent"]})
    sdk_url = urlsplit(capture.calls[0][1])
    assert (sdk_url.path, parse_qsl(sdk_url.query)) == (ours.path, parse_qsl(ours.query))


# --- amounts


def test_amounts_to_and_from_stripe_units() -> None:
    assert mapping.to_stripe_amount(1999, "USD") == 1999
    assert mapping.to_stripe_amount(500, "JPY") == 500
    assert mapping.to_stripe_amount(5, "ISK") == 500  # two-decimal on Stripe's wire
    assert mapping.to_stripe_amount(5120, "KWD") == 5120
    for amount, currency in ((5124, "KWD"), (1000, "IQD"), (100, "XXX")):
        with pytest.raises(ValueError):
            mapping.to_stripe_amount(amount, currency)
    assert mapping.from_stripe_amount(1999, "usd") == (1999, "USD")
    assert mapping.from_stripe_amount(500, "jpy") == (500, "JPY")
    assert mapping.from_stripe_amount(500, "isk") == (5, "ISK")
    assert mapping.from_stripe_amount(1230, "bhd") == (1230, "BHD")
    for wire, currency in ((550, "isk"), (1, "xyz")):
        with pytest.raises(ValueError):
            mapping.from_stripe_amount(wire, currency)


def test_decimal_amounts_convert_exactly() -> None:
    cases = {("19.99", "USD"): 1999, ("0.10", "USD"): 10, ("-5.00", "USD"): -500, ("19.990", "USD"): 1999,
             ("500", "JPY"): 500, ("1.234", "KWD"): 1234, ("0", "EUR"): 0, ("500.00", "ISK"): 500,
             ("123456789012.34", "USD"): 12345678901234}
    for (text, currency), minor in cases.items():
        assert mapping.decimal_to_minor(text, currency) == minor, (text, currency)
    for text, currency in (("19.999", "USD"), ("5.5", "JPY"), ("1.2345", "KWD"), ("1e3", "USD"), ("", "USD"),
                           ("1,000.00", "USD"), ("NaN", "USD"), ("1.00", "ABC")):
        with pytest.raises(ValueError):
            mapping.decimal_to_minor(text, currency)


@pytest.mark.anyio
async def test_unsupported_amount_is_refused_before_any_call(channel: StripeChannel, standin: StripeStandIn) -> None:
    with pytest.raises(InvalidRequest, match="multiples of 10") as caught:
        await channel.create_payment(payment_request(amount=5124, currency="KWD"), CREDENTIALS)
    assert (caught.value.code, caught.value.param) == ("invalid_request", "amount")
    with pytest.raises(CurrencyNotSupported):
        await channel.create_payment(payment_request(amount=5000, currency="IQD"), CREDENTIALS)
    with pytest.raises(CurrencyNotSupported):
        await channel.refund(RefundRequest(refund_id="rfd_1", payment_id=PAYMENT_ID, provider_ref="pi_1",
                                           amount=5000, currency="LYD"), CREDENTIALS)
    assert standin.requests == []
    created = await channel.create_payment(payment_request(amount=5, currency="ISK"), CREDENTIALS)
    assert standin.sessions[created.provider_ref]["amount_total"] == 500


# --- status mapping


def test_every_payment_intent_status_maps() -> None:
    expected = {
        "requires_payment_method": PaymentStatus.REQUIRES_ACTION, "requires_confirmation": PaymentStatus.REQUIRES_ACTION,
        "requires_action": PaymentStatus.REQUIRES_ACTION, "processing": PaymentStatus.PROCESSING,
        "requires_capture": PaymentStatus.PROCESSING, "canceled": PaymentStatus.CANCELED,
        "succeeded": PaymentStatus.SUCCEEDED, "something_new": PaymentStatus.UNKNOWN,
    }
    for status, neutral in expected.items():
        intent = mapping.PaymentIntent(id="pi_1", status=status, amount=1999, currency="usd", amount_received=1999)
        assert mapping.payment_intent_report(intent).status is neutral, status
    declined = mapping.PaymentIntent(
        id="pi_1", status="requires_payment_method", amount=1999, currency="usd",
        last_payment_error=mapping.LastPaymentError(type="card_error", code="card_declined", decline_code="lost_card"),
    )
    report = mapping.payment_intent_report(declined)
    assert (report.status, report.failure_code, report.amount) == (PaymentStatus.FAILED, "lost_card", 1999)


def test_every_checkout_session_state_maps() -> None:
    expected = {
        ("open", "unpaid"): PaymentStatus.REQUIRES_ACTION, ("complete", "paid"): PaymentStatus.SUCCEEDED,
        ("complete", "no_payment_required"): PaymentStatus.SUCCEEDED, ("complete", "unpaid"): PaymentStatus.PROCESSING,
        ("expired", "unpaid"): PaymentStatus.CANCELED, ("weird", "unpaid"): PaymentStatus.UNKNOWN,
    }
    for (status, payment_status), neutral in expected.items():
        session = mapping.CheckoutSession(id="cs_1", status=status, payment_status=payment_status,
                                          amount_total=100, currency="eur")
        report = mapping.session_report(session)
        assert (report.status, report.provider_ref, report.amount, report.currency) == (neutral, "cs_1", 100, "EUR")


def test_every_refund_status_maps() -> None:
    expected = {"pending": ("pending", None), "requires_action": ("pending", None), "succeeded": ("succeeded", None),
                "failed": ("failed", "expired_or_canceled_card"), "canceled": ("failed", "canceled"),
                "brand_new": ("pending", None)}
    for status, (neutral, code) in expected.items():
        refund = mapping.Refund(id="re_1", amount=100, currency="usd", status=status,
                                failure_reason="expired_or_canceled_card" if status == "failed" else None)
        result = mapping.refund_result(refund)
        assert (result.provider_refund_ref, result.status, result.failure_code) == ("re_1", neutral, code), status


# --- flows against the stand-in


@pytest.mark.anyio
async def test_checkout_flow_without_payment_intent_at_creation(channel: StripeChannel, standin: StripeStandIn) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    assert created.provider_ref.startswith("cs_test_") and created.status is PaymentStatus.REQUIRES_ACTION
    assert created.next_action is not None and created.next_action.type == "redirect"
    assert created.next_action.url == standin.sessions[created.provider_ref]["url"]
    sent = standin.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {SECRET_KEY}" and sent.headers["idempotency-key"] == PAYMENT_ID
    session = standin.sessions[created.provider_ref]
    assert session["success_url"] == session["cancel_url"] == "https://game.example.test/done?order=ord_1&x=y"
    assert session["client_reference_id"] == PAYMENT_ID and session["currency"] == "usd"
    assert session["_pi_metadata"] == {"apss_payment_id": PAYMENT_ID}
    again = await channel.create_payment(payment_request(), CREDENTIALS)  # a retry after a lost answer
    assert again == created and len(standin.sessions) == 1

    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=1999, currency="USD")
    assert (await channel.query_payment(query, CREDENTIALS)).status is PaymentStatus.REQUIRES_ACTION
    intent = standin.pay(created.provider_ref)
    completed = standin.signed_event("checkout.session.completed", standin.public_session(created.provider_ref),
                                     now_s=NOW_S, event_id="evt_cs")
    succeeded = standin.signed_event("payment_intent.succeeded", intent, now_s=NOW_S, event_id="evt_pi")
    for request, event_id in ((completed, "evt_cs"), (succeeded, "evt_pi")):
        [event] = await channel.verify_callback(request, CREDENTIALS)
        assert (event.event_id, event.kind, event.payment_id, event.provider_ref, event.amount, event.currency) == (
            event_id, CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, intent["id"], 1999, "USD")
    report = await channel.query_payment(query, CREDENTIALS)
    assert (report.status, report.provider_ref, report.amount, report.currency) == (PaymentStatus.SUCCEEDED, intent["id"], 1999, "USD")

    refund = RefundRequest(refund_id="rfd_01", payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                           amount=999, currency="USD", reason="player asked")
    result = await channel.refund(refund, CREDENTIALS)
    assert result.status == "succeeded" and result.provider_refund_ref.startswith("re_test_")
    stored = standin.refunds[result.provider_refund_ref]
    assert stored["payment_intent"] == intent["id"] and stored["reason"] is None  # free text is no enum
    assert stored["metadata"] == {"apss_refund_id": "rfd_01", "apss_payment_id": PAYMENT_ID, "apss_reason": "player asked"}
    [event] = await channel.verify_callback(standin.signed_event("refund.updated", stored, now_s=NOW_S, event_id="evt_re"), CREDENTIALS)
    assert (event.kind, event.refund_id, event.provider_refund_ref, event.payment_id, event.provider_ref, event.amount) == (
        CallbackKind.REFUND_SUCCEEDED, "rfd_01", stored["id"], PAYMENT_ID, intent["id"], 999)
    too_much = RefundRequest(refund_id="rfd_02", payment_id=PAYMENT_ID, provider_ref=intent["id"], amount=1001, currency="USD")
    with pytest.raises(ProviderDeclined, match="amount_too_large") as refused:  # a definite refusal: `failed`
        await channel.refund(too_much, CREDENTIALS)
    assert refused.value.provider_code == "amount_too_large"


@pytest.mark.anyio
async def test_declined_payment_query_and_event(channel: StripeChannel, standin: StripeStandIn) -> None:
    standin.pi_on_create = True
    created = await channel.create_payment(payment_request(amount=100, currency="EUR"), CREDENTIALS)
    assert created.provider_ref.startswith("pi_test_")
    intent = standin.pay(next(iter(standin.sessions)), succeeded=False, decline_code="insufficient_funds")
    report = await channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                                                      amount=100, currency="EUR"), CREDENTIALS)
    assert (report.status, report.failure_code, report.amount, report.currency) == (PaymentStatus.FAILED, "insufficient_funds", 100, "EUR")
    [event] = await channel.verify_callback(standin.signed_event("payment_intent.payment_failed", intent, now_s=NOW_S), CREDENTIALS)
    assert (event.kind, event.payment_id, event.failure_code, event.amount) == (CallbackKind.PAYMENT_FAILED, PAYMENT_ID, "insufficient_funds", 100)
    not_paid = RefundRequest(refund_id="rfd_x", payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=100, currency="EUR")
    with pytest.raises(ProviderDeclined, match="charge_not_refundable"):
        await channel.refund(not_paid, CREDENTIALS)


@pytest.mark.anyio
async def test_query_without_provider_ref_searches_by_our_id(channel: StripeChannel, standin: StripeStandIn) -> None:
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=None, amount=1999, currency="USD")
    assert (await channel.query_payment(query, CREDENTIALS)).status is PaymentStatus.UNKNOWN
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    intent = standin.pay(created.provider_ref)
    report = await channel.query_payment(query, CREDENTIALS)
    assert (report.status, report.provider_ref) == (PaymentStatus.SUCCEEDED, intent["id"])
    assert dict(parse_qsl(standin.requests[-1].query))["query"] == f"metadata['apss_payment_id']:'{PAYMENT_ID}'"


@pytest.mark.anyio
async def test_refund_pending_and_cs_without_payment(channel: StripeChannel, standin: StripeStandIn) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    early = RefundRequest(refund_id="rfd_1", payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=1999, currency="USD")
    with pytest.raises(ChannelUnavailable, match="no payment to refund"):
        await channel.refund(early, CREDENTIALS)
    standin.pay(created.provider_ref)
    standin.refund_status = "pending"
    result = await channel.refund(early, CREDENTIALS)
    assert (result.status, result.failure_code) == ("pending", None)
    [event] = await channel.verify_callback(
        standin.signed_event("refund.updated", {**standin.refunds[result.provider_refund_ref], "status": "failed",
                                                "failure_reason": "lost_or_stolen_card"}, now_s=NOW_S), CREDENTIALS)
    assert (event.kind, event.failure_code, event.refund_id) == (CallbackKind.REFUND_FAILED, "lost_or_stolen_card", "rfd_1")
    pending = standin.signed_event("refund.updated", standin.refunds[result.provider_refund_ref], now_s=NOW_S)
    assert await channel.verify_callback(pending, CREDENTIALS) == []


@pytest.mark.anyio
async def test_charge_refunded_dispute_and_ignored_events(channel: StripeChannel) -> None:
    refund = {"id": "re_1", "object": "refund", "amount": 500, "currency": "usd", "status": "succeeded",
              "payment_intent": "pi_1", "charge": "ch_1", "metadata": {"apss_refund_id": "rfd_9"}}
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "amount": 1999, "amount_refunded": 500,
              "currency": "usd", "metadata": {"apss_payment_id": PAYMENT_ID},
              "refunds": {"object": "list", "data": [refund, {**refund, "id": "re_2", "status": "pending"}]}}
    [event] = await channel.verify_callback(signed_callback_request("charge.refunded", charge, secret=WEBHOOK_SECRET,
                                                                    now_s=NOW_S, event_id="evt_c"), CREDENTIALS)
    assert (event.event_id, event.kind, event.refund_id, event.payment_id, event.amount) == (
        "evt_c:re_1", CallbackKind.REFUND_SUCCEEDED, "rfd_9", PAYMENT_ID, 500)
    bare = {k: v for k, v in charge.items() if k != "refunds"}  # API versions since 2022-11-15
    assert await channel.verify_callback(signed_callback_request("charge.refunded", bare, secret=WEBHOOK_SECRET, now_s=NOW_S), CREDENTIALS) == []
    dispute = {"id": "dp_1", "object": "dispute", "amount": 1999, "currency": "usd", "charge": "ch_1",
               "payment_intent": "pi_1", "reason": "fraudulent", "status": "needs_response"}
    [event] = await channel.verify_callback(signed_callback_request("charge.dispute.created", dispute, secret=WEBHOOK_SECRET,
                                                                    now_s=NOW_S, event_id="evt_d"), CREDENTIALS)
    assert (event.event_id, event.kind, event.provider_ref, event.amount, event.currency) == (
        "evt_d", CallbackKind.DISPUTE_CREATED, "pi_1", 1999, "USD")
    unpaid = {"id": "cs_1", "object": "checkout.session", "payment_status": "unpaid", "status": "complete",
              "amount_total": 1999, "currency": "usd", "metadata": {}}
    for event_type, obj in (("customer.created", {"id": "cus_1"}), ("checkout.session.completed", unpaid)):
        request = signed_callback_request(event_type, obj, secret=WEBHOOK_SECRET, now_s=NOW_S)
        assert await channel.verify_callback(request, CREDENTIALS) == []
    broken = signed_callback_request("payment_intent.succeeded", {"id": "pi_1"}, secret=WEBHOOK_SECRET, now_s=NOW_S)
    with pytest.raises(CallbackRejected, match="unexpected shape"):
        await channel.verify_callback(broken, CREDENTIALS)


def test_callback_reply() -> None:
    channel = StripeChannel(public_url="https://apss.example.test", http=httpx.AsyncClient())
    reply = channel.callback_reply(accepted=True)
    assert (reply.status_code, reply.body) == (200, b"")
    assert channel.callback_reply(accepted=False).status_code == 400
    assert channel.name == "stripe" and channel.test_only is False
    assert "sk_" not in repr(channel) and "whsec" not in repr(channel)


# --- errors


@pytest.mark.anyio
async def test_provider_errors_name_the_code_and_never_the_secret(channel: StripeChannel, standin: StripeStandIn) -> None:
    with pytest.raises(ProviderDeclined) as caught:
        await channel.create_payment(payment_request(), {**CREDENTIALS, "secret_key": "sk_test_wrongwrongwrong1234"})
    assert "HTTP 401" in str(caught.value) and "invalid_request_error" in str(caught.value)
    assert "sk_" not in str(caught.value) and "1234" not in str(caught.value)
    standin.fail_next.append(503)
    with pytest.raises(ChannelUnavailable, match="HTTP 503") as caught:
        await channel.create_payment(payment_request(), CREDENTIALS)
    assert not isinstance(caught.value, ChannelTimeout)
    with pytest.raises(ChannelUnavailable, match="not configured"):
        await channel.create_payment(payment_request(), {"webhook_secret": WEBHOOK_SECRET})


@pytest.mark.anyio
async def test_changed_parameters_under_one_idempotency_key_are_refused(channel: StripeChannel) -> None:
    await channel.create_payment(payment_request(), CREDENTIALS)
    with pytest.raises(ProviderDeclined, match="idempotency_error"):
        await channel.create_payment(payment_request(amount=2999), CREDENTIALS)


@pytest.mark.anyio
@pytest.mark.parametrize(("raised", "expected"), [
    (httpx.ReadTimeout("read timed out"), ChannelTimeout),
    (httpx.RemoteProtocolError("peer closed"), ChannelTimeout),
    (httpx.ConnectError("refused"), ChannelUnreachable),
    (httpx.ConnectTimeout("connect timed out"), ChannelUnreachable),
])
async def test_transport_failures(raised: Exception, expected: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        channel = StripeChannel(public_url="https://apss.example.test", http=http)
        with pytest.raises(ChannelUnavailable) as caught:
            await channel.create_payment(payment_request(), CREDENTIALS)
    assert type(caught.value) is expected


@pytest.mark.anyio
async def test_unexpected_answers_are_unavailable() -> None:
    answers = iter([httpx.Response(200, content=b"<html>"), httpx.Response(200, json={
        "id": "cs_1", "url": "https://checkout.stripe.com/x", "amount_total": 1, "currency": "usd"})])

    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: next(answers))) as http:
        channel = StripeChannel(public_url="https://apss.example.test", http=http)
        with pytest.raises(ChannelUnavailable, match="unexpected shape"):
            await channel.create_payment(payment_request(), CREDENTIALS)
        with pytest.raises(ChannelUnavailable, match="differs"):
            await channel.create_payment(payment_request(), CREDENTIALS)


# --- statements

DASHBOARD_CSV = (
    "\ufeffid,Type,Source,Amount,Fee,Net,Currency,Created (UTC),Available On (UTC),Description\r\n"
    "txn_1,charge,ch_1,19.99,0.88,19.11,usd,2026-01-01 00:00:00,2026-01-03 00:00:00,大乐透\r\n"
    "txn_2,refund,re_1,-5.00,0.00,-5.00,usd,2026-01-02 12:30:00,2026-01-02 12:30:00,\r\n"
    "txn_3,stripe_fee,,-1.50,0.00,-1.50,usd,2026-01-02 12:30:00,,Billing\r\n"
    "txn_4,payout,po_1,-100.00,0.00,-100.00,usd,,,\r\n"
    "txn_5,charge,ch_2,500,15,485,jpy,2026-01-01 00:00:00,,\r\n"
    "\r\n"
)


def test_statement_dashboard_export() -> None:
    channel = StripeChannel(public_url="https://apss.example.test", http=httpx.AsyncClient())
    lines = channel.parse_statement(DASHBOARD_CSV.encode())
    assert lines == [
        StatementLine(provider_ref="ch_1", kind="payment", amount=1999, fee=88, currency="USD", occurred_at_s=NOW_S),
        StatementLine(provider_ref="re_1", kind="refund", amount=-500, fee=0, currency="USD", occurred_at_s=NOW_S + 131400),
        StatementLine(provider_ref="txn_3", kind="fee", amount=-150, fee=0, currency="USD", occurred_at_s=NOW_S + 131400),
        StatementLine(provider_ref="po_1", kind="payout", amount=-10000, fee=0, currency="USD", occurred_at_s=None),
        StatementLine(provider_ref="ch_2", kind="payment", amount=500, fee=15, currency="JPY", occurred_at_s=NOW_S),
    ]


def test_statement_api_fields_and_itemized_report() -> None:
    channel = StripeChannel(public_url="https://apss.example.test", http=httpx.AsyncClient())
    api_csv = ("id,type,source,amount,fee,net,currency,created,reporting_category,payment_metadata[apss_payment_id]\n"
               f"txn_1,payment,pi_1,1999,88,1911,usd,{NOW_S},charge,{PAYMENT_ID}\n"
               f"txn_2,adjustment,du_1,-1999,1500,-3499,usd,{NOW_S},dispute,\n"
               f"txn_3,charge,ch_3,500,0,500,isk,{NOW_S},charge,\n"
               f"txn_4,transfer,tr_1,100,0,100,usd,{NOW_S},transfer,\n")
    lines = channel.parse_statement(api_csv.encode())
    assert [(l.provider_ref, l.kind, l.amount, l.fee, l.currency, l.payment_id) for l in lines] == [
        ("pi_1", "payment", 1999, 88, "USD", PAYMENT_ID), ("du_1", "adjustment", -1999, 1500, "USD", None),
        ("ch_3", "payment", 5, 0, "ISK", None), ("tr_1", "other", 100, 0, "USD", None)]
    itemized = ("balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,source_id\n"
                "txn_1,2026-01-01 00:00:00,kwd,1.230,0.100,1.130,charge,ch_1\n"
                "txn_2,2026-01-01 00:00:00,usd,-3.00,0.00,-3.00,refund,re_1\n")
    lines = channel.parse_statement(itemized.encode())
    assert [(l.provider_ref, l.kind, l.amount, l.fee, l.currency, l.occurred_at_s) for l in lines] == [
        ("ch_1", "payment", 1230, 100, "KWD", NOW_S), ("re_1", "refund", -300, 0, "USD", NOW_S)]


def test_statement_errors_name_the_line() -> None:
    channel = StripeChannel(public_url="https://apss.example.test", http=httpx.AsyncClient())
    bad_rows = {
        "txn_1,charge,ch_1,19.999,0,19.99,usd,,,\n": "line 2",
        "txn_1,charge,ch_1,19.99,0,19.99,zzz,,,\n": "unknown currency",
    }
    header = "id,Type,Source,Amount,Fee,Net,Currency,Created (UTC),Available On (UTC),Description\n"
    for row, message in bad_rows.items():
        with pytest.raises(InvalidRequest, match=message):
            channel.parse_statement((header + row).encode())
    with pytest.raises(InvalidRequest, match="not a Stripe"):
        channel.parse_statement(b"foo,bar\n1,2\n")
    with pytest.raises(InvalidRequest, match="integer"):
        channel.parse_statement(b"id,type,source,amount,fee,currency,created\ntxn_1,charge,ch_1,19.99,0,usd,1\n")
    assert channel.parse_statement(b"") == []


# --- expiry, closing, refund queries, provider refs


def test_session_expires_at_follows_the_reservation_inside_stripes_window() -> None:
    minute = 60
    assert mapping.session_expires_at_s(NOW_S + 2 * 3600, now_s=NOW_S) == NOW_S + 2 * 3600
    # a 15-minute reservation: Stripe takes no less than 30 minutes, plus our one-minute margin
    assert mapping.session_expires_at_s(NOW_S + 15 * minute, now_s=NOW_S) == NOW_S + 31 * minute
    assert mapping.session_expires_at_s(NOW_S - 5, now_s=NOW_S) == NOW_S + 31 * minute
    assert mapping.session_expires_at_s(NOW_S + 3 * 86400, now_s=NOW_S) == NOW_S + 86400 - minute
    params = mapping.checkout_session_params(payment_request(expires_at_s=NOW_S + 900), return_url="https://g.example/",
                                             now_s=NOW_S)
    assert params["expires_at"] == NOW_S + 31 * minute
    assert "expires_at" not in mapping.checkout_session_params(payment_request(), return_url="https://g.example/", now_s=NOW_S)


@pytest.fixture
async def clocked():
    """A channel and a stand-in that share one fixed clock."""
    from apss.clock import TestClock

    standin = StripeStandIn(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET, now_s=lambda: NOW_S)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=standin), timeout=5.0) as http:
        yield StripeChannel(public_url="https://apss.example.test", http=http, clock=TestClock(NOW_S * 1000)), standin


@pytest.mark.anyio
async def test_the_session_is_created_to_expire_with_the_reservation(clocked) -> None:
    channel, standin = clocked
    created = await channel.create_payment(payment_request(expires_at_s=NOW_S + 3600), CREDENTIALS)
    assert standin.sessions[created.provider_ref]["expires_at"] == NOW_S + 3600
    assert dict(parse_qsl(standin.requests[-1].body.decode()))["expires_at"] == str(NOW_S + 3600)


@pytest.mark.anyio
async def test_cancel_expires_an_open_session_and_is_done_when_already_expired(channel, standin) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=1999, currency="USD")
    assert await channel.cancel_payment(query, CREDENTIALS) is None
    assert standin.sessions[created.provider_ref]["status"] == "expired"
    assert standin.expire_calls() == [created.provider_ref]
    other = await channel.create_payment(payment_request(payment_id="pay_other"), CREDENTIALS)
    standin.expire_by_time(other.provider_ref)  # Stripe expired it first, at its expires_at
    await channel.cancel_payment(PaymentQuery(payment_id="pay_other", provider_ref=other.provider_ref, amount=1999,
                                              currency="USD"), CREDENTIALS)
    assert standin.sessions[other.provider_ref]["status"] == "expired"


@pytest.mark.anyio
async def test_cancel_of_a_paid_session_says_it_was_paid(channel, standin) -> None:
    standin.pi_on_create = True
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    assert created.provider_ref.startswith("pi_") and created.provider_refs[0].startswith("cs_")
    standin.pay(created.provider_refs[0])
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=1999, currency="USD")
    with pytest.raises(ProviderDeclined) as paid:  # found through the session that made the pi_
        await channel.cancel_payment(query, CREDENTIALS)
    assert paid.value.provider_code == "checkout_session_complete"
    with pytest.raises(ChannelUnavailable, match="no known session"):
        await channel.cancel_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=None, amount=1999, currency="USD"),
                                     CREDENTIALS)


@pytest.mark.anyio
async def test_query_refund_by_id_and_by_our_refund_id(channel, standin) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    standin.pay(created.provider_ref)
    standin.refund_status = "pending"
    result = await channel.refund(RefundRequest(refund_id="rfd_q", payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                                                amount=500, currency="USD"), CREDENTIALS)
    query = RefundQuery(refund_id="rfd_q", payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                        provider_refund_ref=result.provider_refund_ref, amount=500, currency="USD")
    assert (await channel.query_refund(query, CREDENTIALS)).status == "pending"
    standin.refunds[result.provider_refund_ref].update(status="succeeded")
    assert await channel.query_refund(query, CREDENTIALS) == RefundResult(provider_refund_ref=result.provider_refund_ref,
                                                                          status="succeeded")
    standin.refunds[result.provider_refund_ref].update(status="failed", failure_reason="expired_or_canceled_card")
    unknown_ref = msgspec.structs.replace(query, provider_refund_ref=None)  # the create call timed out
    assert await channel.query_refund(unknown_ref, CREDENTIALS) == RefundResult(
        provider_refund_ref=result.provider_refund_ref, status="failed", failure_code="expired_or_canceled_card")
    never = msgspec.structs.replace(unknown_ref, refund_id="rfd_never")
    assert (await channel.query_refund(never, CREDENTIALS)).status == "pending"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [409, 429, 500, 503])
async def test_busy_and_server_errors_are_unknown_not_refusals(channel, standin, status: int) -> None:
    standin.fail_next.append(status)
    with pytest.raises(ChannelUnavailable) as caught:
        await channel.create_payment(payment_request(), CREDENTIALS)
    assert not isinstance(caught.value, ProviderDeclined)


@pytest.mark.anyio
async def test_a_paid_session_names_its_payment_intent_and_charge(channel, standin) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    assert created.provider_ref.startswith("cs_") and created.provider_refs == []
    intent = standin.pay(created.provider_ref)
    report = await channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                                                      amount=1999, currency="USD"), CREDENTIALS)
    assert report.provider_ref == intent["id"] and intent["id"].startswith("pi_")
    assert report.provider_refs == [created.provider_ref, intent["latest_charge"]]
    completed = standin.signed_event("checkout.session.completed", standin.public_session(created.provider_ref), now_s=NOW_S)
    [event] = await channel.verify_callback(completed, CREDENTIALS)
    assert (event.provider_ref, event.provider_refs) == (intent["id"], [created.provider_ref])
    succeeded = standin.signed_event("payment_intent.succeeded", intent, now_s=NOW_S)
    [event] = await channel.verify_callback(succeeded, CREDENTIALS)
    assert (event.provider_ref, event.provider_refs) == (intent["id"], [intent["latest_charge"]])


# --- saved methods: a subscription's first order, and its off-session renewals


async def _saved_first_payment(channel: StripeChannel, standin: StripeStandIn) -> tuple[str, dict[str, Any]]:
    """A first order paid with its method saved; returns its saved_method_ref and PaymentIntent."""
    created = await channel.create_payment(payment_request(save_method=True), CREDENTIALS)
    form = dict(parse_qsl(standin.requests[-1].body.decode()))
    assert form["customer_creation"] == "always"
    assert form["payment_intent_data[setup_future_usage]"] == "off_session"
    intent = standin.pay(created.provider_ref)
    session = standin.public_session(created.provider_ref)
    assert session["customer"].startswith("cus_") and intent["customer"] == session["customer"]
    completed = standin.signed_event("checkout.session.completed", session, now_s=NOW_S)
    [event] = await channel.verify_callback(completed, CREDENTIALS)
    # the session names its PaymentIntent, not the payment method: the first renewal reads it there
    assert event.saved_method_ref == f"{session['customer']}:{intent['id']}"
    [event] = await channel.verify_callback(standin.signed_event("payment_intent.succeeded", intent, now_s=NOW_S), CREDENTIALS)
    assert event.saved_method_ref == f"{session['customer']}:{intent['payment_method']}"
    report = await channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref,
                                                      amount=1999, currency="USD"), CREDENTIALS)
    assert report.saved_method_ref == event.saved_method_ref
    return event.saved_method_ref, intent


@pytest.mark.anyio
async def test_a_plain_order_saves_nothing(channel: StripeChannel, standin: StripeStandIn) -> None:
    created = await channel.create_payment(payment_request(), CREDENTIALS)
    form = dict(parse_qsl(standin.requests[-1].body.decode()))
    assert "customer_creation" not in form and "payment_intent_data[setup_future_usage]" not in form
    standin.pay(created.provider_ref)
    completed = standin.signed_event("checkout.session.completed", standin.public_session(created.provider_ref), now_s=NOW_S)
    [event] = await channel.verify_callback(completed, CREDENTIALS)
    assert event.saved_method_ref is None


def renewal_request(**overrides: Any) -> PaymentRequest:
    return payment_request(**{"payment_id": "pay_01renewal0000000000000000", "amount": 1999, **overrides})


@pytest.mark.anyio
async def test_a_renewal_charges_the_saved_method_off_session_as_the_sdk_would(channel, standin) -> None:
    ref, first = await _saved_first_payment(channel, standin)
    customer, method = first["customer"], first["payment_method"]
    report = await channel.charge_saved_method(renewal_request(), f"{customer}:{method}", CREDENTIALS)
    assert report.status is PaymentStatus.SUCCEEDED and report.provider_ref.startswith("pi_")
    assert (report.amount, report.currency) == (1999, "USD") and report.saved_method_ref is None
    ours = standin.requests[-1]
    assert (ours.method, ours.path, ours.headers["idempotency-key"]) == ("POST", "/v1/payment_intents",
                                                                         "pay_01renewal0000000000000000")
    form = dict(parse_qsl(ours.body.decode()))
    assert {k: form[k] for k in ("amount", "currency", "customer", "payment_method", "off_session", "confirm")} == {
        "amount": "1999", "currency": "usd", "customer": customer, "payment_method": method,
        "off_session": "true", "confirm": "true"}
    assert form["metadata[apss_payment_id]"] == "pay_01renewal0000000000000000"
    # byte for byte what stripe-python sends for the same parameters
    sdk, capture = _sdk(standin.intents[report.provider_ref])
    params = mapping.off_session_params(renewal_request(), customer=customer, payment_method=method)
    intent = sdk.v1.payment_intents.create(params, {"idempotency_key": "pay_01renewal0000000000000000"})
    method_, url, headers, post_data = capture.calls[0]
    assert (method_.upper(), urlsplit(url).path, post_data) == ("POST", "/v1/payment_intents", ours.body.decode())
    assert headers["Idempotency-Key"] == ours.headers["idempotency-key"]
    assert intent.status == "succeeded"
    # a ref naming the first PaymentIntent (from the session webhook) reaches the same method
    report = await channel.charge_saved_method(renewal_request(payment_id="pay_01renewal0000000000000001"), ref, CREDENTIALS)
    assert report.status is PaymentStatus.SUCCEEDED and standin.off_session_calls()[-1]["payment_method"] == method


@pytest.mark.anyio
@pytest.mark.parametrize(("amount", "code"), [(4041, "stolen_card"), (4002, "insufficient_funds"),
                                               (4065, "authentication_required")])
async def test_an_off_session_decline_is_a_refusal_with_its_decline_code(channel, standin, amount: int, code: str) -> None:
    _, first = await _saved_first_payment(channel, standin)
    with pytest.raises(ProviderDeclined) as caught:
        await channel.charge_saved_method(renewal_request(amount=amount), f"{first['customer']}:{first['payment_method']}",
                                          CREDENTIALS)
    assert caught.value.provider_code == code and SECRET_KEY not in str(caught.value)
    replayed = await _refused(channel.charge_saved_method(renewal_request(amount=amount),
                                                          f"{first['customer']}:{first['payment_method']}", CREDENTIALS))
    assert replayed == code, "the same payment id replays Stripe's first answer"
    assert len(standin.off_session_calls()) == 2


async def _refused(call) -> str | None:
    try:
        await call
    except ProviderDeclined as error:
        return error.provider_code
    return None


@pytest.mark.anyio
async def test_a_ref_that_saved_no_method_is_refused_before_any_call(channel, standin) -> None:
    for ref in ("pi_3MtwBwLkdIwHu7ix28a3tqPa", "cs_test_abc", "cus_only:"):
        with pytest.raises(InvalidRequest):
            await channel.charge_saved_method(renewal_request(), ref, CREDENTIALS)
    assert standin.requests == []
    with pytest.raises(ProviderDeclined):  # a method not attached to the customer: Stripe's 400
        await channel.charge_saved_method(renewal_request(), "cus_test_x:pm_test_y", CREDENTIALS)


@pytest.mark.anyio
async def test_a_risk_rule_asking_for_3ds_reaches_the_session(channel: StripeChannel, standin: StripeStandIn) -> None:
    """require_3ds: `payment_method_options[card][request_three_d_secure]=any` on the Checkout
    Session, accepted by the stand-in, byte-identical to the SDK's request, and a key of the
    SDK's own SessionCreateParams type; a plain order does not send it."""
    from stripe.params.checkout._session_create_params import (
        SessionCreateParamsPaymentMethodOptionsCard,
    )

    created = await channel.create_payment(payment_request(three_ds=True), CREDENTIALS)
    ours = standin.requests[-1]
    form = dict(parse_qsl(ours.body.decode()))
    assert form["payment_method_options[card][request_three_d_secure]"] == "any"
    assert standin.sessions[created.provider_ref]["_request_three_d_secure"] == "any"
    assert "request_three_d_secure" in SessionCreateParamsPaymentMethodOptionsCard.__annotations__
    sdk, capture = _sdk(standin.public_session(created.provider_ref))
    params = mapping.checkout_session_params(payment_request(three_ds=True), return_url=payment_request().return_url or "",
                                             now_s=NOW_S)
    sdk.v1.checkout.sessions.create(params, {"idempotency_key": PAYMENT_ID})
    assert capture.calls[0][3] == ours.body.decode()
    await channel.create_payment(payment_request(payment_id="pay_01plainorder"), CREDENTIALS)
    assert "payment_method_options[card][request_three_d_secure]" not in dict(parse_qsl(standin.requests[-1].body.decode()))
