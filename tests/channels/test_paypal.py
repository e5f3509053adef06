"""PayPal channel: SDK cross-checks, mapping, amounts and every flow against the local stand-in.

Oracles: paypalrestsdk 1.13.3 (webhook message + RSA verification; needs pyOpenSSL<24, so it runs
in its own venv under ~/.cache/apss-test/paypal-oracle, built once) and paypal-server-sdk 2.4.0
(request body models and status enums, installed in the test interpreter).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from apss.channels.base import (
    CallbackRequest,
    Channel,
    PaymentQuery,
    PaymentRequest,
    RefundRequest,
    StatementLine,
)
from apss.channels.paypal import PayPalCertFetcher, PayPalChannel, mapping
from apss.channels.paypal.client import (
    check_cert_url,
    check_paypal_cert,
    signed_message,
)
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    Conflict,
    CurrencyNotSupported,
    InvalidRequest,
    ProviderDeclined,
)
from tests.channels.harness_paypal import (
    Harness,
    injected_fetcher,
    make_harness,
)
from tests.channels.standin_paypal import (
    CERT_URL,
    capture_resource,
    make_signing_cert,
    rfc3339,
    sign_headers,
)

NOW_S = 1_767_225_600  # 2026-01-01T00:00:00Z
PAYMENT_ID = "pay_01m89ng6h9bsa6pt3b8qajdksk"
ORACLE_REQUIREMENTS = ["paypalrestsdk==1.13.3", "pyOpenSSL==23.3.0", "cryptography==41.0.7", "paypal-server-sdk==2.4.0"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = make_harness()
    yield made
    await made.aclose()


def _payment(amount: int = 1999, currency: str = "USD", payment_id: str = PAYMENT_ID) -> PaymentRequest:
    return PaymentRequest(
        payment_id=payment_id, order_id="ord_01m89ng6h9bsa6pt3b8qajdkso", merchant_id="mch_1", amount=amount,
        currency=currency, description="500 Gems – 大乐透", callback_url="https://apss.example/v1/channels/paypal/webhook/mch_1",
        return_url="https://game.example/return",
    )


async def _captured(h: Harness, *, amount: int = 1999, currency: str = "USD") -> str:
    created = await h.channel.create_payment(_payment(amount, currency), h.credentials)
    h.standin.approve(created.provider_ref)
    report = await h.channel.capture_order(created.provider_ref, h.credentials)
    assert report.status is PaymentStatus.SUCCEEDED
    return created.provider_ref


# --- paypalrestsdk oracle (separate venv) ---


def _oracle_python() -> Path:
    """The oracle venv, built once and reused; a build failure fails the test, never skips it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "apss-test"
    venv = cache / "paypal-oracle"
    marker = venv / ".apss-ready"
    python = venv / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "paypal-oracle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not build the same venv at once
        if marker.exists() and marker.read_text() == " ".join(ORACLE_REQUIREMENTS) and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", *ORACLE_REQUIREMENTS]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                pytest.fail(f"cannot build the paypalrestsdk oracle venv at {venv} ({' '.join(step)}):\n{done.stderr[-2000:]}")
        marker.write_text(" ".join(ORACLE_REQUIREMENTS))
    return python


def _run_oracle(request: dict[str, Any]) -> dict[str, Any]:
    script = Path(__file__).with_name("paypal_oracle.py")
    done = subprocess.run(
        [str(_oracle_python()), str(script)], input=json.dumps(request), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"PayPal SDK oracle crashed:\n{done.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _case(request: Any, *, webhook_id: str, cert_pem: bytes, body: bytes | None = None, algo: str = "SHA256withRSA") -> dict[str, Any]:
    return {
        "transmission_id": request.headers["paypal-transmission-id"], "timestamp": request.headers["paypal-transmission-time"],
        "webhook_id": webhook_id, "body": (body if body is not None else request.body).decode("utf-8"),
        "cert_url": request.headers["paypal-cert-url"], "cert_pem": cert_pem.decode(),
        "sig": request.headers["paypal-transmission-sig"], "auth_algo": algo,
    }


@pytest.mark.anyio
async def test_paypalrestsdk_agrees_with_our_message_and_signatures(harness: Harness) -> None:
    webhook_id = harness.credentials["webhook_id"]
    valid = await harness.signed_callback(
        succeeded=True, payment_id=PAYMENT_ID, provider_ref="5O190127TN364715T", amount=1999, currency="USD",
        event_id="WH-2WR32451HC0233532-67976317FL4543714", now_s=NOW_S,
    )
    tampered = harness.tamper(valid)
    other_signer = make_signing_cert("other.paypal.com")
    forged_headers = sign_headers(
        valid.body, signer=other_signer, webhook_id=webhook_id, transmission_time=valid.headers["paypal-transmission-time"],
        transmission_id=valid.headers["paypal-transmission-id"],
    )
    forged = type(valid)(headers=forged_headers, body=valid.body, now_s=valid.now_s)
    evil = make_signing_cert("webhooks.evil.example")
    evil_request = type(valid)(
        headers=sign_headers(valid.body, signer=evil, webhook_id=webhook_id, transmission_time=valid.headers["paypal-transmission-time"]),
        body=valid.body, now_s=valid.now_s,
    )
    pem = harness.signer.pem
    cases = [
        _case(valid, webhook_id=webhook_id, cert_pem=pem),
        _case(tampered, webhook_id=webhook_id, cert_pem=pem),
        _case(valid, webhook_id="WRONG1016473214C", cert_pem=pem),
        _case(forged, webhook_id=webhook_id, cert_pem=pem),
        _case(evil_request, webhook_id=webhook_id, cert_pem=evil.pem),
    ]
    results = _run_oracle({"webhooks": cases})["webhooks"]
    assert len(results) == len(cases)

    ours = signed_message(
        transmission_id=valid.headers["paypal-transmission-id"], transmission_time=valid.headers["paypal-transmission-time"],
        webhook_id=webhook_id, body=valid.body,
    )
    assert results[0]["expected_sig"].encode() == ours
    assert results[1]["expected_sig"].encode() == signed_message(
        transmission_id=tampered.headers["paypal-transmission-id"], transmission_time=tampered.headers["paypal-transmission-time"],
        webhook_id=webhook_id, body=tampered.body,
    )
    assert [r["verify_signature"] for r in results] == [True, False, False, False, True]
    # Full verify: the evil certificate signs correctly but its CN is not *.paypal.com.
    assert [r["verify"] for r in results] == [True, False, False, False, False]

    # Our verifier reaches the same verdicts.
    assert len(await harness.channel.verify_callback(valid, harness.credentials)) == 1
    for request, credentials in [
        (tampered, harness.credentials),
        (valid, {**harness.credentials, "webhook_id": "WRONG1016473214C"}),
        (forged, harness.credentials),
    ]:
        with pytest.raises(CallbackRejected):
            await harness.channel.verify_callback(request, credentials)
    with pytest.raises(CallbackRejected, match="paypal.com name"):
        check_paypal_cert(evil.cert, now=datetime.now(UTC))


# --- paypal-server-sdk models (in the oracle venv) ---


@pytest.mark.anyio
async def test_request_bodies_statuses_and_responses_match_paypal_server_sdk(harness: Harness) -> None:
    order_id = await _captured(harness)
    await harness.channel.refund(
        RefundRequest(refund_id="ref_01m89ng6h9bsa6pt3b8qajdkr1", payment_id=PAYMENT_ID, provider_ref=order_id,
                      amount=500, currency="USD", reason="player asked"),
        harness.credentials,
    )
    create, capture, _get, refund = (json.loads(r["body"]) if r["body"] else None for r in harness.standin.requests)
    spec = {
        "order": {"currency": "USD", "value": "19.99", "reference_id": "ord_01m89ng6h9bsa6pt3b8qajdkso",
                  "description": "500 Gems – 大乐透", "custom_id": PAYMENT_ID, "invoice_id": PAYMENT_ID,
                  "return_url": "https://game.example/return", "cancel_url": "https://game.example/return"},
        "refund": {"currency": "USD", "value": "5.00", "custom_id": PAYMENT_ID,
                   "invoice_id": "ref_01m89ng6h9bsa6pt3b8qajdkr1", "note_to_payer": "player asked"},
        "bodies": {"order": create, "refund": refund, "capture": capture},
        "response": harness.standin._public(order_id),
    }
    sdk = _run_oracle({"models": spec})["models"]
    assert create == sdk["order"]
    assert refund == sdk["refund"]
    assert capture == sdk["capture"] == {}
    # Every field we send survives the SDK's own parser (it drops unknown ones).
    assert sdk["roundtrip"] == {"order": create, "refund": refund}
    # Every PayPal status the SDK knows is listed explicitly in our mapping.
    assert sdk["enums"] == {
        "order": sorted(mapping.ORDER_STATUSES), "capture": sorted(mapping.CAPTURE_STATUSES), "refund": sorted(mapping.REFUND_STATUSES),
    }
    assert sdk["response"] == {"id": order_id, "status": "COMPLETED", "rels": ["self", "payer-action"], "custom_id": PAYMENT_ID, "value": "19.99"}


# --- amounts ---


@pytest.mark.parametrize(("amount", "currency", "value"), [
    (1999, "USD", "19.99"), (0, "USD", "0.00"), (5, "USD", "0.05"), (100, "EUR", "1.00"), (123456789, "GBP", "1234567.89"),
    (1999, "JPY", "1999"), (0, "JPY", "0"), (10000, "TWD", "100"), (1234, "KWD", "1.234"), (5, "KWD", "0.005"),
])
def test_amount_conversion_both_ways(amount: int, currency: str, value: str) -> None:
    assert mapping.to_paypal_value(amount, currency) == value
    assert mapping.from_paypal_value(value, currency) == amount


def test_amount_conversion_round_trips_exactly() -> None:
    for currency in ("USD", "JPY", "KWD"):
        for amount in [*range(2001), 10**15 - 1]:
            assert mapping.from_paypal_value(mapping.to_paypal_value(amount, currency), currency) == amount


@pytest.mark.parametrize(("value", "currency", "amount"), [("19.9", "USD", 1990), ("19", "USD", 1900), ("0.5", "KWD", 500)])
def test_short_decimals_are_padded(value: str, currency: str, amount: int) -> None:
    assert mapping.from_paypal_value(value, currency) == amount


@pytest.mark.parametrize(("value", "currency"), [
    ("19.999", "USD"), ("19.5", "JPY"), ("1.2345", "KWD"), ("100.5", "TWD"), ("-1.00", "USD"), ("1e3", "USD"),
    (" 1.00", "USD"), ("01.00", "USD"), ("1.", "USD"), (".5", "USD"), ("", "USD"), ("1,00", "EUR"),
])
def test_malformed_or_too_precise_amounts_are_refused(value: str, currency: str) -> None:
    with pytest.raises(ValueError):
        mapping.from_paypal_value(value, currency)


def test_twd_needs_whole_dollars_and_unknown_currency_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="without decimals"):
        mapping.to_paypal_value(150, "TWD")
    with pytest.raises(CurrencyNotSupported):
        mapping.to_paypal_value(100, "XXX")


# --- status mapping ---


def _order(status: str, capture: str | None = None, reason: str | None = None) -> mapping.Order:
    payments = None
    if capture is not None:
        details = mapping.StatusDetails(reason=reason) if reason else None
        payments = mapping.Payments(captures=[mapping.Capture(
            id="3C679366HH908993F", status=capture, amount=mapping.Money(currency_code="USD", value="19.99"), status_details=details,
        )])
    unit = mapping.PurchaseUnit(amount=mapping.Money(currency_code="USD", value="19.99"), payments=payments)
    return mapping.Order(id="5O190127TN364715T", status=status, purchase_units=[unit])


@pytest.mark.parametrize(("status", "expected"), [
    ("CREATED", PaymentStatus.REQUIRES_ACTION), ("SAVED", PaymentStatus.REQUIRES_ACTION),
    ("PAYER_ACTION_REQUIRED", PaymentStatus.REQUIRES_ACTION), ("APPROVED", PaymentStatus.PROCESSING),
    ("VOIDED", PaymentStatus.CANCELED), ("COMPLETED", PaymentStatus.UNKNOWN), ("SOMETHING_NEW", PaymentStatus.UNKNOWN),
])
def test_order_status_mapping(status: str, expected: PaymentStatus) -> None:
    report = mapping.report_from_order(_order(status))
    assert (report.status, report.provider_ref, report.amount, report.currency, report.failure_code) == (
        expected, "5O190127TN364715T", 1999, "USD", None)


@pytest.mark.parametrize(("capture", "expected", "failure"), [
    ("COMPLETED", PaymentStatus.SUCCEEDED, None), ("PARTIALLY_REFUNDED", PaymentStatus.SUCCEEDED, None),
    ("REFUNDED", PaymentStatus.SUCCEEDED, None), ("PENDING", PaymentStatus.PROCESSING, None),
    ("DECLINED", PaymentStatus.FAILED, "declined"), ("FAILED", PaymentStatus.FAILED, "failed"),
    ("SOMETHING_NEW", PaymentStatus.UNKNOWN, None),
])
def test_capture_status_mapping(capture: str, expected: PaymentStatus, failure: str | None) -> None:
    report = mapping.report_from_order(_order("COMPLETED", capture))
    assert (report.status, report.amount, report.failure_code) == (expected, 1999, failure)
    declined = mapping.report_from_order(_order("COMPLETED", "DECLINED", reason="PAYER_CANNOT_PAY"))
    assert declined.failure_code == "PAYER_CANNOT_PAY"


@pytest.mark.parametrize(("status", "expected", "failure"), [
    ("COMPLETED", "succeeded", None), ("PENDING", "pending", None), ("FAILED", "failed", "failed"),
    ("CANCELLED", "failed", "cancelled"), ("SOMETHING_NEW", "pending", None),
])
def test_refund_status_mapping(status: str, expected: str, failure: str | None) -> None:
    assert mapping.refund_outcome(mapping.Refund(id="1JU08902781691411", status=status)) == (expected, failure)


# --- create / capture / query / refund against the stand-in ---


@pytest.mark.anyio
async def test_channel_satisfies_the_protocol_and_hides_secrets(harness: Harness) -> None:
    assert isinstance(harness.channel, Channel)
    assert harness.channel.name == "paypal" and harness.channel.test_only is False
    assert "secret" not in repr(harness.channel).lower() and harness.credentials["client_secret"] not in repr(harness.channel)


@pytest.mark.anyio
async def test_create_payment_redirects_to_payer_action_and_is_idempotent(harness: Harness) -> None:
    created = await harness.channel.create_payment(_payment(), harness.credentials)
    assert created.status is PaymentStatus.REQUIRES_ACTION
    assert created.provider_ref in harness.standin.orders
    assert created.next_action is not None and created.next_action.type == "redirect"
    assert created.next_action.url == f"https://www.sandbox.paypal.com/checkoutnow?token={created.provider_ref}"
    assert harness.standin.requests[0]["headers"]["paypal-request-id"] == PAYMENT_ID
    again = await harness.channel.create_payment(_payment(), harness.credentials)
    assert again == created and len(harness.standin.orders) == 1
    assert harness.standin.token_requests == 1  # the access token is cached per client_id


@pytest.mark.anyio
async def test_create_without_return_url_uses_public_url_and_jpy_has_no_decimals(harness: Harness) -> None:
    request = PaymentRequest(
        payment_id="pay_01m89ng6h9bsa6pt3b8qajdkjp", order_id="ord_2", merchant_id="mch_1", amount=1999, currency="JPY",
        description="", callback_url="https://apss.example/cb",
    )
    await harness.channel.create_payment(request, harness.credentials)
    body = json.loads(harness.standin.requests[0]["body"])
    assert body["purchase_units"][0]["amount"] == {"currency_code": "JPY", "value": "1999"}
    assert "description" not in body["purchase_units"][0]
    context = body["payment_source"]["paypal"]["experience_context"]
    assert context["return_url"] == context["cancel_url"] == "https://apss.example"


@pytest.mark.anyio
async def test_create_refuses_currencies_paypal_does_not_take(harness: Harness) -> None:
    with pytest.raises(CurrencyNotSupported):
        await harness.channel.create_payment(_payment(currency="KWD"), harness.credentials)
    assert harness.standin.requests == []


@pytest.mark.anyio
async def test_full_flow_approve_capture_webhooks_query_refund(harness: Harness) -> None:
    h, creds = harness, harness.credentials
    created = await h.channel.create_payment(_payment(), creds)
    order_id = created.provider_ref
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=order_id, amount=1999, currency="USD")
    assert (await h.channel.query_payment(query, creds)).status is PaymentStatus.REQUIRES_ACTION

    h.standin.approve(order_id)
    assert (await h.channel.query_payment(query, creds)).status is PaymentStatus.PROCESSING
    approved = h.standin.webhook(
        "CHECKOUT.ORDER.APPROVED", h.standin._public(order_id), event_id="WH-APPROVED-1", now_s=NOW_S, resource_type="checkout-order"
    )
    [approval] = await h.channel.verify_callback(approved, creds)
    assert (approval.event_id, approval.kind, approval.provider_ref) == ("WH-APPROVED-1", CallbackKind.PAYMENT_APPROVED, order_id)
    assert approval.payment_id == PAYMENT_ID

    report = await h.channel.capture_payment(query, creds)
    assert (report.status, report.provider_ref, report.amount, report.currency) == (PaymentStatus.SUCCEEDED, order_id, 1999, "USD")
    capture_request = h.standin.requests[-1]
    assert capture_request["headers"]["paypal-request-id"] == f"capture-{order_id}"
    assert capture_request["headers"]["prefer"] == "return=representation"
    # A second capture (webhook redelivered, payer returned too) reports the order as it stands.
    assert (await h.channel.capture_order(order_id, creds)).status is PaymentStatus.SUCCEEDED

    completed = h.standin.webhook("PAYMENT.CAPTURE.COMPLETED", h.standin.capture_resource(order_id), event_id="WH-CAPTURE-1", now_s=NOW_S)
    [event] = await h.channel.verify_callback(completed, creds)
    assert (event.event_id, event.kind, event.payment_id, event.provider_ref, event.amount, event.currency) == (
        "WH-CAPTURE-1", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, order_id, 1999, "USD")

    refund = RefundRequest(refund_id="ref_01m89ng6h9bsa6pt3b8qajdkr1", payment_id=PAYMENT_ID, provider_ref=order_id, amount=500, currency="USD")
    result = await h.channel.refund(refund, creds)
    capture_id = h.standin.capture_resource(order_id)["id"]
    assert h.standin.requests[-1]["path"] == f"/v2/payments/captures/{capture_id}/refund"
    assert h.standin.requests[-1]["headers"]["paypal-request-id"] == "ref_01m89ng6h9bsa6pt3b8qajdkr1"
    assert result.status == "succeeded" and result.failure_code is None
    assert (await h.channel.refund(refund, creds)) == result  # replayed, not refunded twice

    refund_resource = h.standin.orders[order_id]["purchase_units"][0]["payments"]["refunds"][0]
    assert len(h.standin.orders[order_id]["purchase_units"][0]["payments"]["refunds"]) == 1
    refunded = h.standin.webhook("PAYMENT.CAPTURE.REFUNDED", refund_resource, event_id="WH-REFUND-1", now_s=NOW_S, resource_type="refund")
    [event] = await h.channel.verify_callback(refunded, creds)
    assert (event.kind, event.payment_id, event.refund_id, event.provider_refund_ref, event.amount, event.currency) == (
        CallbackKind.REFUND_SUCCEEDED, PAYMENT_ID, "ref_01m89ng6h9bsa6pt3b8qajdkr1", result.provider_refund_ref, 500, "USD")
    after = await h.channel.query_payment(query, creds)
    assert (after.status, after.amount) == (PaymentStatus.SUCCEEDED, 1999)

    too_much = RefundRequest(refund_id="ref_01m89ng6h9bsa6pt3b8qajdkr2", payment_id=PAYMENT_ID, provider_ref=order_id, amount=1500, currency="USD")
    with pytest.raises(ProviderDeclined, match="UNPROCESSABLE_ENTITY/REFUND_AMOUNT_EXCEEDED"):
        await h.channel.refund(too_much, creds)


@pytest.mark.anyio
async def test_declined_capture_and_refund_outcomes(harness: Harness) -> None:
    h = harness
    created = await h.channel.create_payment(_payment(), h.credentials)
    h.standin.approve(created.provider_ref)
    h.standin.capture_status = "DECLINED"
    report = await h.channel.capture_order(created.provider_ref, h.credentials)
    assert (report.status, report.failure_code) == (PaymentStatus.FAILED, "DECLINED_BY_RISK_FRAUD_CONTROLS")
    declined = h.standin.webhook("PAYMENT.CAPTURE.DECLINED", h.standin.capture_resource(created.provider_ref), event_id="WH-D", now_s=NOW_S)
    [event] = await h.channel.verify_callback(declined, h.credentials)
    assert (event.kind, event.payment_id, event.provider_ref, event.failure_code) == (
        CallbackKind.PAYMENT_FAILED, PAYMENT_ID, created.provider_ref, "DECLINED_BY_RISK_FRAUD_CONTROLS")

    for status, expected, failure in [("PENDING", "pending", None), ("FAILED", "failed", "ECHECK")]:
        other = harness.__class__()
        order_id = await _captured(other)
        other.standin.refund_status = status
        result = await other.channel.refund(
            RefundRequest(refund_id=f"ref_{status.lower()}", payment_id=PAYMENT_ID, provider_ref=order_id, amount=100, currency="USD"),
            other.credentials,
        )
        assert (result.status, result.failure_code) == (expected, failure)
        await other.aclose()


@pytest.mark.anyio
async def test_refund_before_capture_and_query_edge_cases(harness: Harness) -> None:
    created = await harness.channel.create_payment(_payment(), harness.credentials)
    with pytest.raises(Conflict) as refused:
        await harness.channel.refund(
            RefundRequest(refund_id="ref_1", payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=100, currency="USD"),
            harness.credentials,
        )
    assert refused.value.code == "payment_not_captured"
    unknown = await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=None, amount=1, currency="USD"), harness.credentials)
    assert unknown.status is PaymentStatus.UNKNOWN
    with pytest.raises(ProviderDeclined, match="HTTP 404: RESOURCE_NOT_FOUND/INVALID_RESOURCE_ID"):
        await harness.channel.query_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref="NOPE0000000000000", amount=1, currency="USD"), harness.credentials)
    with pytest.raises(ProviderDeclined, match="ORDER_NOT_APPROVED"):
        await harness.channel.capture_order(created.provider_ref, harness.credentials)
    harness.standin.approve(created.provider_ref)
    harness.standin.fail_next.append((422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "INSTRUMENT_DECLINED"}]}))
    declined = await harness.channel.capture_order(created.provider_ref, harness.credentials, request_id="capture-try-1")
    assert (declined.status, declined.provider_ref, declined.failure_code) == (
        PaymentStatus.FAILED, created.provider_ref, "INSTRUMENT_DECLINED")
    retried = await harness.channel.capture_order(created.provider_ref, harness.credentials, request_id="capture-try-2")
    assert retried.status is PaymentStatus.SUCCEEDED
    assert harness.standin.requests[-1]["headers"]["paypal-request-id"] == "capture-try-2"
    with pytest.raises(ChannelUnavailable, match="lack client_id"):
        await harness.channel.query_payment(
            PaymentQuery(payment_id=PAYMENT_ID, provider_ref=created.provider_ref, amount=1, currency="USD"),
            {"api_base": harness.credentials["api_base"]})


def test_legacy_approve_link_and_order_created_completed() -> None:
    links = [mapping.Link(href="https://www.paypal.com/checkoutnow?token=5O190127TN364715T", rel="approve")]
    created = mapping.created_from_order(mapping.Order(id="5O190127TN364715T", status="CREATED", links=links))
    assert created.next_action is not None and created.next_action.url == links[0].href
    assert created.status is PaymentStatus.REQUIRES_ACTION
    done = mapping.created_from_order(_order("COMPLETED", "COMPLETED"))
    assert (done.status, done.next_action) == (PaymentStatus.SUCCEEDED, None)


# --- errors ---


@pytest.mark.anyio
async def test_provider_errors_are_typed_and_carry_no_secrets(harness: Harness) -> None:
    h = harness
    h.standin.fail_next.append((500, {"name": "INTERNAL_SERVER_ERROR"}))
    with pytest.raises(ChannelUnavailable) as server_error:
        await h.channel.create_payment(_payment(), h.credentials)
    assert not isinstance(server_error.value, ChannelTimeout)
    assert "HTTP 500" in server_error.value.message

    h.standin.fail_next.append((422, {"name": "UNPROCESSABLE_ENTITY", "debug_id": "f00ba4", "details": [{"issue": "PAYEE_ACCOUNT_RESTRICTED"}]}))
    with pytest.raises(ProviderDeclined, match=r"HTTP 422: UNPROCESSABLE_ENTITY/PAYEE_ACCOUNT_RESTRICTED \(debug_id f00ba4\)"):
        await h.channel.create_payment(_payment(), h.credentials)

    bad = {**h.credentials, "client_id": "another-client", "client_secret": "wrong-secret-value"}
    with pytest.raises(ProviderDeclined) as auth_error:
        await h.channel.create_payment(_payment(), bad)
    assert "invalid_client" in auth_error.value.message and "wrong-secret-value" not in str(auth_error.value)

    # A token PayPal no longer honours is dropped, and the next call fetches a fresh one.
    h.standin.tokens.clear()
    with pytest.raises(ProviderDeclined, match="AUTHENTICATION_FAILURE"):
        await h.channel.create_payment(_payment(), h.credentials)
    created = await h.channel.create_payment(_payment(), h.credentials)
    assert created.status is PaymentStatus.REQUIRES_ACTION
    for token in h.standin.tokens:
        assert token not in repr(h.channel)


@pytest.mark.anyio
async def test_timeout_is_channel_timeout_and_connect_error_is_unavailable() -> None:
    def raiser(exc: Exception):
        def handle(request: httpx.Request) -> httpx.Response:
            raise exc
        return handle

    credentials = {"client_id": "c", "client_secret": "s", "webhook_id": "w", "api_base": "https://api-m.standin.paypal.test"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(raiser(httpx.ReadTimeout("slow")))) as http:
        with pytest.raises(ChannelTimeout, match="did not answer"):
            await PayPalChannel(public_url="https://apss.example", http=http).create_payment(_payment(), credentials)
    async with httpx.AsyncClient(transport=httpx.MockTransport(raiser(httpx.ConnectError("refused")))) as http:
        with pytest.raises(ChannelUnavailable) as caught:
            await PayPalChannel(public_url="https://apss.example", http=http).create_payment(_payment(), credentials)
        assert not isinstance(caught.value, ChannelTimeout)


# --- webhook verification ---


async def _signed(h: Harness, *, now_s: int = NOW_S, **overrides: Any) -> Any:
    return await h.signed_callback(
        succeeded=True, payment_id=PAYMENT_ID, provider_ref="5O190127TN364715T", amount=1999, currency="USD",
        event_id="WH-1", now_s=now_s, **overrides,
    )


@pytest.mark.anyio
async def test_contract_style_callbacks(harness: Harness) -> None:
    ok = await _signed(harness)
    [event] = await harness.channel.verify_callback(ok, harness.credentials)
    assert (event.event_id, event.kind, event.payment_id, event.provider_ref, event.amount, event.currency) == (
        "WH-1", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, "5O190127TN364715T", 1999, "USD")
    failed = await harness.signed_callback(succeeded=False, payment_id=PAYMENT_ID, provider_ref="5O190127TN364715T",
                                           amount=1999, currency="USD", event_id="WH-2", now_s=NOW_S)
    [event] = await harness.channel.verify_callback(failed, harness.credentials)
    assert (event.kind, event.payment_id, event.failure_code) == (CallbackKind.PAYMENT_FAILED, PAYMENT_ID, "DECLINED_BY_RISK_FRAUD_CONTROLS")
    stale = harness.stale(ok)
    assert stale is not None
    for bad in (harness.tamper(ok), stale):
        with pytest.raises(CallbackRejected):
            await harness.channel.verify_callback(bad, harness.credentials)
    assert harness.channel.callback_reply(accepted=True).status_code == 200
    assert harness.channel.callback_reply(accepted=False).status_code == 400


@pytest.mark.anyio
@pytest.mark.parametrize(("offset_s", "accepted"), [(0, True), (299, True), (-299, True), (300, True), (301, False), (-301, False), (-86400, False)])
async def test_transmission_time_window(harness: Harness, offset_s: int, accepted: bool) -> None:
    request = await _signed(harness, now_s=NOW_S + offset_s)
    request = type(request)(headers=request.headers, body=request.body, now_s=NOW_S)
    if accepted:
        assert len(await harness.channel.verify_callback(request, harness.credentials)) == 1
    else:
        with pytest.raises(CallbackRejected, match="tolerance"):
            await harness.channel.verify_callback(request, harness.credentials)


@pytest.mark.anyio
async def test_header_algorithm_and_signature_shape_checks(harness: Harness) -> None:
    ok = await _signed(harness)
    with pytest.raises(CallbackRejected, match="webhook_id is not configured"):
        await harness.channel.verify_callback(ok, {**harness.credentials, "webhook_id": ""})
    for name in ok.headers:
        if name.startswith("paypal-"):
            headers = {k: v for k, v in ok.headers.items() if k != name}
            with pytest.raises(CallbackRejected, match=name):
                await harness.channel.verify_callback(type(ok)(headers=headers, body=ok.body, now_s=ok.now_s), harness.credentials)
    for name, value, message in [
        ("paypal-auth-algo", "SHA1withRSA", "algorithm"),
        ("paypal-transmission-sig", "not base64!!", "malformed"),
        ("paypal-transmission-time", "yesterday", "malformed"),
        ("paypal-cert-url", "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-other", "unknown PayPal certificate URL"),
        ("paypal-cert-url", "http://api.sandbox.paypal.com/v1/notifications/certs/x", "https URL"),
        ("paypal-transmission-id", "69cd13f0-d67a-11e5-baa3-778b53f4ae55", "does not match"),
    ]:
        with pytest.raises(CallbackRejected, match=message):
            await harness.channel.verify_callback(
                type(ok)(headers={**ok.headers, name: value}, body=ok.body, now_s=ok.now_s), harness.credentials)


@pytest.mark.anyio
async def test_verified_but_malformed_bodies_are_rejected(harness: Harness) -> None:
    def signed(body: bytes) -> Any:
        headers = sign_headers(body, signer=harness.signer, webhook_id=harness.credentials["webhook_id"], transmission_time=rfc3339(NOW_S))
        return type(ok)(headers=headers, body=body, now_s=NOW_S)

    ok = await _signed(harness)
    for body in [b"not json", b"[]", b'{"event_type":"PAYMENT.CAPTURE.COMPLETED"}']:
        with pytest.raises(CallbackRejected, match="envelope"):
            await harness.channel.verify_callback(signed(body), harness.credentials)
    bad_amount = ok.body.replace(b'"value":"19.99"', b'"value":"19.999"')
    with pytest.raises(CallbackRejected, match="unexpected shape"):
        await harness.channel.verify_callback(signed(bad_amount), harness.credentials)
    no_id = ok.body.replace(b'"id":"3C679366HH908993F",', b"")
    with pytest.raises(CallbackRejected, match="unexpected shape"):
        await harness.channel.verify_callback(signed(no_id), harness.credentials)


@pytest.mark.anyio
async def test_other_event_types(harness: Harness) -> None:
    s = harness.standin
    without_order = capture_resource(capture_id="3C679366HH908993F", order_id=None, payment_id=PAYMENT_ID, value="19.99", currency="USD", status="COMPLETED")
    [event] = await harness.channel.verify_callback(s.webhook("PAYMENT.CAPTURE.COMPLETED", without_order, event_id="WH-A", now_s=NOW_S), harness.credentials)
    assert event.provider_ref == "3C679366HH908993F"  # no related order id: the capture id is all there is
    pending = capture_resource(capture_id="3C679366HH908993F", order_id="5O190127TN364715T", payment_id=PAYMENT_ID, value="19.99", currency="USD", status="PENDING")
    for event_type in ("PAYMENT.CAPTURE.PENDING", "PAYMENT.CAPTURE.REVERSED", "CHECKOUT.ORDER.COMPLETED", "BILLING.PLAN.CREATED"):
        assert await harness.channel.verify_callback(s.webhook(event_type, pending, event_id="WH-P", now_s=NOW_S), harness.credentials) == []
    dispute = {
        "dispute_id": "PP-D-27803", "reason": "MERCHANDISE_OR_SERVICE_NOT_RECEIVED", "status": "OPEN",
        "dispute_amount": {"currency_code": "USD", "value": "19.99"},
        "disputed_transactions": [{"seller_transaction_id": "3C679366HH908993F", "custom": PAYMENT_ID, "invoice_number": PAYMENT_ID}],
    }
    [event] = await harness.channel.verify_callback(s.webhook("CUSTOMER.DISPUTE.CREATED", dispute, event_id="WH-DSP", now_s=NOW_S, resource_type="dispute"), harness.credentials)
    assert (event.event_id, event.kind, event.payment_id, event.amount, event.currency, event.failure_code) == (
        "WH-DSP", CallbackKind.DISPUTE_CREATED, PAYMENT_ID, 1999, "USD", "MERCHANDISE_OR_SERVICE_NOT_RECEIVED")
    assert (event.dispute.provider_dispute_id, event.dispute.status) == ("PP-D-27803", "needs_response")
    for code, status in (("RESOLVED_SELLER_FAVOUR", "won"), ("RESOLVED_BUYER_FAVOUR", "lost"), ("SOMETHING_NEW", "lost")):
        resolved = {**dispute, "status": "RESOLVED", "dispute_outcome": {"outcome_code": code}}
        [closed] = await harness.channel.verify_callback(s.webhook("CUSTOMER.DISPUTE.RESOLVED", resolved, event_id=f"WH-R-{code}", now_s=NOW_S, resource_type="dispute"), harness.credentials)
        assert (closed.kind, closed.dispute.provider_dispute_id, closed.dispute.status) == (CallbackKind.DISPUTE_CLOSED, "PP-D-27803", status)
    pending_refund = {"id": "1JU08902781691411", "status": "PENDING", "amount": {"currency_code": "USD", "value": "1.00"}, "invoice_id": "ref_1", "custom_id": PAYMENT_ID}
    assert await harness.channel.verify_callback(s.webhook("PAYMENT.CAPTURE.REFUNDED", pending_refund, event_id="WH-R", now_s=NOW_S), harness.credentials) == []


# --- the production certificate fetcher ---


@pytest.mark.parametrize(("url", "ok"), [
    ("https://api.paypal.com/v1/notifications/certs/CERT-360caa42", True),
    ("https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42", True),
    ("https://API.PAYPAL.COM/v1/notifications/certs/CERT-1", True),
    ("http://api.paypal.com/v1/notifications/certs/CERT-1", False),
    ("https://paypal.com/cert", False),
    ("https://api.paypal.com.evil.example/cert", False),
    ("https://evilpaypal.com/cert", False),
    ("https://www.paypal.com/v1/notifications/certs/CERT-1", False),
    ("https://api.paypal.com/v1/oauth2/token", False),
    ("https://api.paypal.com:8443/cert", False),
    ("https://user@api.paypal.com/cert", False),
    ("file:///etc/passwd", False),
])
def test_cert_url_policy(url: str, ok: bool) -> None:
    if ok:
        check_cert_url(url)
    else:
        with pytest.raises(CallbackRejected):
            check_cert_url(url)


@pytest.mark.anyio
async def test_default_fetcher_downloads_checks_and_caches(harness: Harness) -> None:
    channel = PayPalChannel(public_url="https://apss.example", http=harness.http)  # no injected fetcher
    request = await _signed(harness)
    assert len(await channel.verify_callback(request, harness.credentials)) == 1
    assert len(await channel.verify_callback(request, harness.credentials)) == 1
    assert harness.standin.cert_fetches == 1

    for signer, message in [(make_signing_cert(valid=False), "not currently valid"), (make_signing_cert("webhooks.evil.example"), "paypal.com name")]:
        harness.standin.signer = signer
        fetcher = PayPalCertFetcher(harness.http)
        with pytest.raises(CallbackRejected, match=message):
            await fetcher(CERT_URL)


@pytest.mark.anyio
async def test_rsa_message_is_pkcs1v15_sha256_over_crc32_text() -> None:
    """Independent of the stand-in: build PayPal's documented example message by hand."""
    signer = make_signing_cert()
    body = '{"id":"WH-1","event_type":"PAYMENT.SALE.COMPLETED","summary":"支付成功","resource":{}}'.encode()
    message = f"69cd13f0-d67a-11e5-baa3-778b53f4ae55|2024-01-01T00:00:01Z|1JE4291016473214C|{zlib.crc32(body) & 0xFFFFFFFF}"
    assert signed_message(transmission_id="69cd13f0-d67a-11e5-baa3-778b53f4ae55", transmission_time="2024-01-01T00:00:01Z",
                          webhook_id="1JE4291016473214C", body=body) == message.encode()
    signature = base64.b64encode(signer.key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    headers = {
        "paypal-transmission-id": "69cd13f0-d67a-11e5-baa3-778b53f4ae55", "paypal-transmission-time": "2024-01-01T00:00:01Z",
        "paypal-transmission-sig": signature, "paypal-cert-url": CERT_URL, "paypal-auth-algo": "SHA256withRSA",
    }
    request = CallbackRequest(headers=headers, body=body, now_s=1_704_067_201)
    async with httpx.AsyncClient() as http:
        channel = PayPalChannel(public_url="https://apss.example", http=http, cert_fetcher=injected_fetcher(signer))
        assert await channel.verify_callback(request, {"webhook_id": "1JE4291016473214C"}) == []
        with pytest.raises(CallbackRejected, match="does not match"):
            await channel.verify_callback(request, {"webhook_id": "1JE4291016473214D"})


# --- statements ---

STL = """\
"RH","2026/01/02 06:00:00 -0800","A","MERCHANT1","011"
"FH",01
"SH","2026/01/01 00:00:00 -0800","2026/01/01 23:59:59 -0800","MERCHANT1",""
"CH","Transaction ID","Invoice ID","PayPal Reference ID","PayPal Reference ID Type","Transaction Event Code","Transaction Initiation Date","Transaction Completion Date","Transaction  Debit or Credit","Gross Transaction Amount","Gross Transaction Currency","Fee Debit or Credit","Fee Amount","Fee Currency","Custom Field","Consumer ID"
"SB","3C679366HH908993F","pay_01m89ng6h9bsa6pt3b8qajdksk","5O190127TN364715T","ODR","T0006","2026/01/01 10:15:00 -0800","2026/01/01 10:15:02 -0800","CR","1999","USD","DR","88","USD","pay_01m89ng6h9bsa6pt3b8qajdksk","buyer@example.com"
"SB","1JU08902781691411","ref_01m89ng6h9bsa6pt3b8qajdkr1","3C679366HH908993F","TXN","T1107","2026/01/01 11:00:00 -0800","2026/01/01 11:00:00 -0800","DR","500","USD","CR","15","USD","pay_01m89ng6h9bsa6pt3b8qajdksk","buyer@example.com"
"SB","7AB12345CD678901E","pay_01m89ng6h9bsa6pt3b8qajdkjp","","","T0006","2026/01/01 12:00:00 +0900","","CR","1999","JPY","DR","0","JPY","","buyer2@example.com"
"SB","9WD12345XY0000000","","","","T0400","2026/01/01 13:00:00 -0800","","DR","10000","USD","CR","","USD","",""
"SB","8FE00000AB0000000","","","","T0100","2026/01/01 14:00:00 -0800","","DR","30","USD","CR","0","USD","",""
"SF","USD","2","1999","500"
"SC","5"
"RF","USD","2","1999","500"
"RC","5"
"FF","5"
"""


def test_settlement_report_is_parsed_exactly() -> None:
    lines = PayPalChannel(public_url="https://apss.example", http=httpx.AsyncClient()).parse_statement(STL.encode())
    assert lines == [
        StatementLine(provider_ref="5O190127TN364715T", kind="payment", amount=1999, fee=88, currency="USD",
                      occurred_at_s=1767291300, payment_id=PAYMENT_ID),
        StatementLine(provider_ref="1JU08902781691411", kind="refund", amount=-500, fee=-15, currency="USD",
                      occurred_at_s=1767294000, payment_id=PAYMENT_ID),
        StatementLine(provider_ref="7AB12345CD678901E", kind="payment", amount=1999, fee=0, currency="JPY",
                      occurred_at_s=1767236400, payment_id="pay_01m89ng6h9bsa6pt3b8qajdkjp"),
        StatementLine(provider_ref="9WD12345XY0000000", kind="payout", amount=-10000, fee=0, currency="USD",
                      occurred_at_s=1767301200, payment_id=None),
        StatementLine(provider_ref="8FE00000AB0000000", kind="fee", amount=-30, fee=0, currency="USD",
                      occurred_at_s=1767304800, payment_id=None),
    ]


def test_plain_csv_with_header_row_and_malformed_statements() -> None:
    plain = "\n".join(line.split(",", 1)[1] for line in STL.splitlines() if line[1:3] in ("CH", "SB"))
    assert mapping.parse_statement(plain.encode()) == mapping.parse_statement(STL.encode())
    for broken in [
        STL.replace('"1999","USD"', '"19.99","USD"'),
        STL.replace('"Fee Debit or Credit",', '"Fee Sign",'),
        STL.replace('"CR","1999","JPY"', '"XX","1999","JPY"'),
        STL.replace('"1999","JPY"', '"1999","ZZZ"'),
        STL.replace("2026/01/01 10:15:00 -0800", "01/01/2026"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            mapping.parse_statement(broken.encode())
        assert caught.value.code == "statement_malformed"


@pytest.mark.anyio
async def test_query_refund_by_id_or_by_our_refund_id(harness: Harness) -> None:
    from apss.channels.base import RefundQuery, RefundResult

    h = harness
    order_id = await _captured(h)
    refund = RefundRequest(refund_id="ref_q", payment_id=PAYMENT_ID, provider_ref=order_id, amount=500, currency="USD")
    result = await h.channel.refund(refund, h.credentials)
    query = RefundQuery(refund_id="ref_q", payment_id=PAYMENT_ID, provider_ref=order_id,
                        provider_refund_ref=result.provider_refund_ref, amount=500, currency="USD")
    assert await h.channel.query_refund(query, h.credentials) == RefundResult(
        provider_refund_ref=result.provider_refund_ref, status="succeeded")
    assert h.standin.requests[-1]["path"] == f"/v2/payments/refunds/{result.provider_refund_ref}"
    without_id = RefundQuery(refund_id="ref_q", payment_id=PAYMENT_ID, provider_ref=order_id, provider_refund_ref=None,
                             amount=500, currency="USD")
    assert (await h.channel.query_refund(without_id, h.credentials)).provider_refund_ref == result.provider_refund_ref
    never = RefundQuery(refund_id="ref_never", payment_id=PAYMENT_ID, provider_ref=order_id, provider_refund_ref=None,
                        amount=500, currency="USD")
    assert (await h.channel.query_refund(never, h.credentials)).status == "pending"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [409, 429])
async def test_busy_answers_are_unknown_not_refusals(harness: Harness, status: int) -> None:
    harness.standin.fail_next.append((status, {"name": "RATE_LIMIT_REACHED"}))
    with pytest.raises(ChannelUnavailable) as caught:
        await harness.channel.create_payment(_payment(), harness.credentials)
    assert not isinstance(caught.value, ProviderDeclined)
