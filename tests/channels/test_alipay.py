"""The Alipay channel: cross-checked against python-alipay-sdk 3.4.0 (`from alipay import AliPay`)
and exercised end to end against the local stand-in (tests/channels/standin_alipay.py)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from alipay import AliPay  # python-alipay-sdk: the oracle for signing and verifying

from apss.channels.alipay import AlipayChannel, mapping
from apss.channels.alipay.client import (
    load_private_key,
    load_public_key,
    rsa2_sign,
    rsa2_verify,
)
from apss.channels.base import (
    CallbackRequest,
    PaymentQuery,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
)
from apss.clock import TestClock
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    ProviderDeclined,
    ProviderFlowNotSupported,
)
from tests.channels.harness_alipay import API_BASE, APP_ID, make_harness
from tests.channels.standin_alipay import AlipayStandin, generate_keys, sign_notify

PAYMENT_ID = "pay_01m89ng6h9bsa6pt3b8qajdksk"
REFUND_ID = "rfd_01m89ng6h9bsa6pt3b8qajdkzz"
# 2026-11-25 15:04:05 UTC = 23:04:05 in Shanghai.
NOW_MS = 1795619045000
NOW_S = NOW_MS // 1000


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def keys():
    return generate_keys()


def _sdk_as_merchant(keys, private_key: str | None = None) -> AliPay:
    """The SDK configured as the merchant: signs with the app key, verifies with Alipay's."""
    return AliPay(
        appid=APP_ID,
        app_private_key_string=private_key or keys.app_private_pkcs1,
        alipay_public_key_string=keys.alipay_public_pem,
        sign_type="RSA2",
    )


def _sdk_as_alipay(keys) -> AliPay:
    """The SDK holding Alipay's private key: its signing code plays Alipay signing a notify."""
    return AliPay(
        appid=APP_ID,
        app_private_key_string=keys.alipay_private_pkcs1,
        alipay_public_key_string=keys.alipay_public_pem,
        sign_type="RSA2",
    )


def _credentials(keys, **overrides):
    return {
        "app_id": APP_ID,
        "app_private_key": keys.app_private_pkcs8,
        "alipay_public_key": keys.alipay_public_bare,
        "api_base": API_BASE,
        **overrides,
    }


def _channel(app, *, timeout_s: float = 5.0) -> AlipayChannel:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=timeout_s)
    return AlipayChannel(public_url="https://apss.example", http=http, clock=TestClock(NOW_MS))


def _standin(keys) -> AlipayStandin:
    return AlipayStandin(app_id=APP_ID, keys=keys, now_s=lambda: NOW_S)


def _payment(**overrides) -> PaymentRequest:
    fields = {
        "payment_id": PAYMENT_ID,
        "order_id": "ord_01m89ng6h9bsa6pt3b8qajdkaa",
        "merchant_id": "mch_01m89ng6h9bsa6pt3b8qajdkbb",
        "amount": 1999,
        "currency": "CNY",
        "description": "大乐透 2.1 & 钻石×100",
        "callback_url": "https://apss.example/v1/channels/alipay/webhook/mch_01m89ng6h9bsa6pt3b8qajdkbb",
        **overrides,
    }
    return PaymentRequest(**fields)


def _notify_params(**overrides) -> dict[str, str]:
    params = {
        "notify_time": "2026-11-25 23:04:05",
        "notify_type": "trade_status_sync",
        "notify_id": "ac05099524730693a8b330c5ecf72da9786",
        "app_id": APP_ID,
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": "2026112522001404070200176844",
        "out_trade_no": PAYMENT_ID,
        "buyer_id": "2088102122524333",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "19.99",
        "subject": "大乐透2.1",
        "body": "a+b=c 100% & more",
        "gmt_payment": "2026-11-25 23:04:05",
    }
    params.update(overrides)
    return params


def _callback(body: bytes) -> CallbackRequest:
    return CallbackRequest(
        headers={"content-type": "application/x-www-form-urlencoded"}, body=body, now_s=NOW_S
    )


async def _verify(keys, body: bytes, **credential_overrides):
    channel = AlipayChannel(public_url="https://apss.example", http=httpx.AsyncClient())
    return await channel.verify_callback(_callback(body), _credentials(keys, **credential_overrides))


# --- request signatures against python-alipay-sdk --------------------------------------------


@pytest.mark.parametrize("private_format", ["pkcs8", "pkcs1"])
def test_request_sign_matches_the_sdk_sign_data(keys, private_format):
    private_pem = keys.app_private_pkcs8 if private_format == "pkcs8" else keys.app_private_pkcs1
    channel = AlipayChannel(
        public_url="https://apss.example", http=httpx.AsyncClient(), clock=TestClock(NOW_MS)
    )
    settings = _settings(keys, app_private_key=private_pem)
    biz = {
        "out_trade_no": PAYMENT_ID,
        "total_amount": "19.99",
        "subject": "大乐透 2.1 & x=y",
        "product_code": "FACE_TO_FACE_PAYMENT",
    }
    ours = channel.signed_params(
        settings,
        method="alipay.trade.precreate",
        biz_content=biz,
        extra={"notify_url": "https://a.example/n?x=1"},
    )
    assert ours["timestamp"] == "2026-11-25 23:04:05"  # Beijing time
    assert ours["biz_content"] == json.dumps(biz, ensure_ascii=False, separators=(",", ":"))
    unsigned = {key: value for key, value in ours.items() if key != "sign"}
    sdk_string = _sdk_as_merchant(keys, private_pem).sign_data(dict(unsigned))
    sdk_params = dict(parse_qsl(sdk_string))
    assert sdk_params["sign"] == ours["sign"]  # RSA2 PKCS1v15 is deterministic: byte-identical
    # The page flow's query string is exactly the SDK's signed string (sorted, quote_plus'd).
    assert urlencode([*sorted(unsigned.items()), ("sign", ours["sign"])]) == sdk_string


def _settings(keys, **overrides):
    from apss.channels.alipay.client import _Settings

    return _Settings(_credentials(keys, **overrides))


def test_sdk_verifies_our_rsa2_and_we_verify_the_sdks(keys):
    message = 'app_id=1&biz_content={"a":"支付"}&sign_type=RSA2'
    ours = rsa2_sign(load_private_key(keys.alipay_private_pkcs8), message.encode())
    merchant = _sdk_as_merchant(keys)
    assert merchant._verify(message, ours) is True
    assert merchant._verify(message + "x", ours) is False
    theirs = _sdk_as_alipay(keys)._sign(message)
    assert theirs == ours
    public = load_public_key(keys.alipay_public_bare)
    assert rsa2_verify(public, message.encode(), theirs) is True
    assert rsa2_verify(load_public_key(keys.alipay_public_pem), message.encode(), theirs) is True
    assert rsa2_verify(public, message.encode(), "not base64!") is False


def test_bad_keys_are_reported_without_quoting_them(keys):
    with pytest.raises(ChannelUnavailable) as caught:
        load_private_key("-----BEGIN PRIVATE KEY-----\nMIIBsecretsecret\n-----END PRIVATE KEY-----")
    assert "secret" not in str(caught.value)
    with pytest.raises(ChannelUnavailable):
        load_public_key("bm90IGEga2V5")


# --- notifies: cross-checks -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_notify_signed_by_the_sdk_verifies_with_ours(keys):
    params = _notify_params()
    # python-alipay-sdk's signing code (keep-empty convention, sign_type excluded as Alipay does).
    sign = _sdk_as_alipay(keys)._sign("&".join(f"{k}={v}" for k, v in sorted(params.items())))
    body = urlencode({**params, "sign_type": "RSA2", "sign": sign}).encode()
    events = await _verify(keys, body)
    assert len(events) == 1
    event = events[0]
    assert event.kind == CallbackKind.PAYMENT_SUCCEEDED
    assert (event.event_id, event.payment_id, event.provider_ref) == (
        params["notify_id"],
        PAYMENT_ID,
        params["trade_no"],
    )
    assert (event.amount, event.currency) == (1999, "CNY")


@pytest.mark.parametrize("skip_empty", [True, False])
def test_our_notify_signer_verifies_under_sdk_verify(keys, skip_empty):
    body = sign_notify(keys.alipay_private, _notify_params(), skip_empty=skip_empty)
    data = dict(parse_qsl(body.decode()))
    signature = data.pop("sign")
    assert _sdk_as_merchant(keys).verify(data, signature) is True


@pytest.mark.anyio
async def test_tampered_total_amount_fails_ours_and_the_sdk(keys):
    body = sign_notify(keys.alipay_private, _notify_params())
    tampered = body.replace(b"total_amount=19.99", b"total_amount=99.99")
    assert tampered != body
    data = dict(parse_qsl(tampered.decode()))
    signature = data.pop("sign")
    assert _sdk_as_merchant(keys).verify(data, signature) is False
    with pytest.raises(CallbackRejected):
        await _verify(keys, tampered)


@pytest.mark.anyio
async def test_an_empty_param_verifies_under_both_conventions(keys):
    params = _notify_params(seller_email="", passback_params="")
    skipped = sign_notify(keys.alipay_private, params, skip_empty=True)  # today's Java SDK
    kept = sign_notify(keys.alipay_private, params, skip_empty=False)  # older SDKs, python-alipay-sdk
    assert skipped != kept
    for body in (skipped, kept):
        events = await _verify(keys, body)
        assert [event.amount for event in events] == [1999]
    # The SDK keeps empties: it accepts only the keep-empty signature, which is why we try both.
    for body, expected in ((skipped, False), (kept, True)):
        data = dict(parse_qsl(body.decode(), keep_blank_values=True))
        signature = data.pop("sign")
        assert _sdk_as_merchant(keys).verify(data, signature) is expected


@pytest.mark.anyio
async def test_a_one_byte_change_anywhere_signed_is_rejected(keys):
    body = sign_notify(keys.alipay_private, _notify_params())
    for needle, replacement in (
        (b"TRADE_SUCCESS", b"TRADE_SUCCESs"),
        (PAYMENT_ID.encode(), PAYMENT_ID[:-1].encode() + b"x"),
    ):
        with pytest.raises(CallbackRejected):
            await _verify(keys, body.replace(needle, replacement))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(sign_type="RSA"),
        lambda d: d.pop("sign_type"),
        lambda d: d.pop("sign"),
        lambda d: d.update(sign="AAAA"),
        lambda d: d.update(extra_param="added after signing"),
    ],
    ids=["rsa1", "no-sign-type", "no-sign", "bad-sign", "unsigned-extra-param"],
)
async def test_notifies_that_cannot_be_trusted_are_rejected(keys, mutate):
    data = dict(parse_qsl(sign_notify(keys.alipay_private, _notify_params()).decode()))
    mutate(data)
    with pytest.raises(CallbackRejected):
        await _verify(keys, urlencode(data).encode())


@pytest.mark.anyio
async def test_other_app_wrong_key_and_garbage_are_rejected(keys):
    other = sign_notify(keys.alipay_private, _notify_params(app_id="2021999999999999"))
    with pytest.raises(CallbackRejected, match="app_id"):
        await _verify(keys, other)
    signed_by_app_key = sign_notify(keys.app_private, _notify_params())
    with pytest.raises(CallbackRejected):
        await _verify(keys, signed_by_app_key)
    for garbage in (b"\xff\xfe", b"a=1&a=2", b"x" * 70_000):
        with pytest.raises(CallbackRejected):
            await _verify(keys, garbage)


@pytest.mark.anyio
async def test_a_gbk_notify_is_verified_over_gbk_bytes(keys):
    params = _notify_params(charset="gbk")
    body = sign_notify(keys.alipay_private, params, charset="gbk")
    assert b"%B4%F3" in body  # 大 in GBK, not UTF-8
    events = await _verify(keys, body)
    assert [event.kind for event in events] == [CallbackKind.PAYMENT_SUCCEEDED]


# --- notifies: mapping ------------------------------------------------------------------------


def _events(**overrides):
    return mapping.notify_events(_notify_params(**overrides))


def test_every_trade_status_in_a_notify():
    (paid,) = _events(trade_status="TRADE_SUCCESS")
    (finished,) = _events(trade_status="TRADE_FINISHED")
    assert paid.kind == finished.kind == CallbackKind.PAYMENT_SUCCEEDED
    (closed,) = _events(trade_status="TRADE_CLOSED")
    assert (closed.kind, closed.failure_code, closed.amount) == (
        CallbackKind.PAYMENT_FAILED,
        "trade_closed",
        1999,
    )
    assert _events(trade_status="WAIT_BUYER_PAY") == []
    assert _events(trade_status="SOMETHING_NEW") == []
    assert _events(notify_type="batch_trans_notify") == []


def test_refund_notifies():
    (partial,) = _events(
        trade_status="TRADE_SUCCESS",
        refund_fee="5.50",
        out_biz_no=REFUND_ID,
        gmt_refund="2026-11-25 23:10:00",
    )
    assert partial.kind == CallbackKind.REFUND_SUCCEEDED
    assert (partial.amount, partial.currency, partial.refund_id, partial.provider_refund_ref) == (
        550,
        "CNY",
        REFUND_ID,
        REFUND_ID,
    )
    assert partial.payment_id == PAYMENT_ID
    (full,) = _events(trade_status="TRADE_CLOSED", refund_fee="19.99", out_biz_no=REFUND_ID)
    assert (full.kind, full.amount) == (CallbackKind.REFUND_SUCCEEDED, 1999)
    (zero_fee,) = _events(trade_status="TRADE_SUCCESS", refund_fee="0.00")
    assert zero_fee.kind == CallbackKind.PAYMENT_SUCCEEDED
    with pytest.raises(mapping.ShapeError):
        _events(refund_fee="1.234")


def test_notify_shape_errors():
    for missing in ("notify_id", "trade_status", "out_trade_no", "total_amount"):
        params = _notify_params()
        params.pop(missing)
        with pytest.raises(mapping.ShapeError):
            mapping.notify_events(params)
    (foreign,) = _events(out_trade_no="merchant-own-order-42")
    assert foreign.payment_id is None


def test_callback_reply_is_exactly_what_alipay_wants():
    channel = AlipayChannel(public_url="https://apss.example", http=httpx.AsyncClient())
    ok = channel.callback_reply(accepted=True)
    assert (ok.status_code, ok.body, ok.media_type) == (200, b"success", "text/plain")
    retry = channel.callback_reply(accepted=False)
    assert (retry.status_code, retry.body) == (200, b"fail")


# --- amounts and statuses ---------------------------------------------------------------------


def test_amount_conversions():
    assert mapping.decimal_to_minor("19.99", "CNY") == 1999
    assert mapping.decimal_to_minor("0.01", "CNY") == 1
    assert mapping.decimal_to_minor("100", "CNY") == 10000
    assert mapping.decimal_to_minor("-0.12", "CNY") == -12
    assert mapping.decimal_to_minor("5", "JPY") == 5
    assert mapping.decimal_to_minor("1.234", "KWD") == 1234
    assert mapping.decimal_to_minor("0.10", "KWD") == 100
    assert mapping.minor_to_decimal(1999, "CNY") == "19.99"
    assert mapping.minor_to_decimal(5, "CNY") == "0.05"
    assert mapping.minor_to_decimal(0, "CNY") == "0.00"
    assert mapping.minor_to_decimal(-12, "CNY") == "-0.12"
    assert mapping.minor_to_decimal(500, "JPY") == "500"
    assert mapping.minor_to_decimal(1234, "KWD") == "1.234"
    for bad, currency in (
        ("1.999", "CNY"),
        ("1.5", "JPY"),
        ("1.2345", "KWD"),
        ("1e3", "CNY"),
        ("+1.00", "CNY"),
        ("", "CNY"),
        ("1,00", "CNY"),
        ("NaN", "CNY"),
    ):
        with pytest.raises(ValueError):
            mapping.decimal_to_minor(bad, currency)
    assert isinstance(mapping.decimal_to_minor("19.99", "CNY"), int)


def test_every_query_trade_status():
    expected = {
        "WAIT_BUYER_PAY": PaymentStatus.REQUIRES_ACTION,
        "TRADE_SUCCESS": PaymentStatus.SUCCEEDED,
        "TRADE_FINISHED": PaymentStatus.SUCCEEDED,
        "TRADE_CLOSED": PaymentStatus.CANCELED,
        "": PaymentStatus.UNKNOWN,
        "TRADE_PENDING_SOMETHING": PaymentStatus.UNKNOWN,
    }
    for trade_status, status in expected.items():
        assert mapping.trade_status_to_payment_status(trade_status) == status


def test_raw_member_cuts_the_exact_signed_text():
    text = '{ "x_response" : {"msg":"a}b\\"{","n":{"k":[1,{"z":"}"}]}} , "sign":"S=="}'
    assert mapping.raw_member(text, "x_response") == '{"msg":"a}b\\"{","n":{"k":[1,{"z":"}"}]}}'
    assert mapping.raw_member(text, "sign") == '"S=="'
    assert mapping.raw_member(text, "y_response") is None
    assert mapping.raw_member("{}", "x") is None
    with pytest.raises(ValueError):
        mapping.raw_member("[1]", "x")


# --- flows against the stand-in ---------------------------------------------------------------


@pytest.mark.anyio
async def test_precreate_gives_a_qr_code_and_its_response_verifies_under_the_sdk(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    created = await channel.create_payment(_payment(), _credentials(keys))
    trade = standin.trades[PAYMENT_ID]
    assert created.provider_ref == PAYMENT_ID
    assert created.status == PaymentStatus.REQUIRES_ACTION
    assert created.next_action is not None and created.next_action.type == "qr_code"
    assert created.next_action.data == trade.qr_code
    request = standin.requests[-1]
    assert request["method"] == "alipay.trade.precreate"
    assert request["notify_url"] == _payment().callback_url
    assert json.loads(request["biz_content"]) == {
        "out_trade_no": PAYMENT_ID,
        "total_amount": "19.99",
        "subject": "大乐透 2.1 & 钻石×100",
        "product_code": "FACE_TO_FACE_PAYMENT",
    }
    # A retry with the same payment id finds the same trade (Alipay's idempotency on out_trade_no).
    again = await channel.create_payment(_payment(), _credentials(keys))
    assert again.next_action == created.next_action and len(standin.trades) == 1
    # The SDK's response check accepts what the stand-in signs (so the stand-in signs like Alipay).
    params = dict(request)
    status, raw = standin._dispatch(params)
    verified = _sdk_as_merchant(keys)._verify_and_return_sync_response(raw, "alipay_trade_precreate_response")
    assert verified["qr_code"] == trade.qr_code


@pytest.mark.anyio
async def test_a_pretty_printed_response_is_verified_over_its_raw_text(keys):
    standin = _standin(keys)
    standin.pretty = True
    created = await _channel(standin).create_payment(_payment(), _credentials(keys))
    assert created.next_action.data == standin.trades[PAYMENT_ID].qr_code


@pytest.mark.anyio
async def test_page_flow_redirects_with_a_signed_url_the_gateway_accepts(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    request = _payment(metadata={"alipay_flow": "page"}, return_url="https://shop.example/done")
    created = await channel.create_payment(request, _credentials(keys))
    assert standin.requests == []  # no server call: the buyer's browser carries the request
    assert created.next_action.type == "redirect" and created.provider_ref == PAYMENT_ID
    url = created.next_action.url
    assert url.startswith(API_BASE + "?")
    query = dict(parse_qsl(url.split("?", 1)[1]))
    assert query["method"] == "alipay.trade.page.pay" and query["return_url"] == "https://shop.example/done"
    assert json.loads(query["biz_content"])["product_code"] == "FAST_INSTANT_TRADE_PAY"
    unsigned = {key: value for key, value in query.items() if key != "sign"}
    assert url.split("?", 1)[1] == _sdk_as_merchant(keys).sign_data(unsigned)
    cashier = await channel._http.get(url)
    assert cashier.status_code == 200, cashier.text
    assert standin.trades[PAYMENT_ID].total_amount == "19.99"


@pytest.mark.anyio
@pytest.mark.parametrize(("flow", "method", "product_code"), [
    ("page", "alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    ("wap", "alipay.trade.wap.pay", "QUICK_WAP_PAY"),
    ("app", "alipay.trade.app.pay", "QUICK_MSECURITY_PAY"),
])
async def test_client_flows_sign_what_the_sdk_signs_and_call_nothing(keys, flow, method, product_code):
    standin = _standin(keys)
    created = await _channel(standin).create_payment(_payment(flow=flow, expires_at_s=1_764_083_945),
                                                     _credentials(keys))
    assert standin.requests == []
    action = created.next_action
    signed = action.params["order_string"] if flow == "app" else action.url.split("?", 1)[1]
    assert (action.type, flow == "app") in (("sdk_params", True), ("redirect", False))
    query = dict(parse_qsl(signed))
    biz = json.loads(query["biz_content"])
    assert (query["method"], biz["product_code"], biz["time_expire"]) == (method, product_code, "2025-11-25 23:19:05")
    assert "timeout_express" not in biz
    assert signed == _sdk_as_merchant(keys).sign_data({k: v for k, v in query.items() if k != "sign"})


@pytest.mark.anyio
async def test_a_flow_alipay_lacks_is_refused_before_any_call(keys):
    standin = _standin(keys)
    with pytest.raises(ProviderFlowNotSupported):
        await _channel(standin).create_payment(_payment(flow="jsapi", openid="o1"), _credentials(keys))
    assert standin.requests == []


@pytest.mark.anyio
async def test_callback_query_refund_round_trip(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    credentials = _credentials(keys)
    await channel.create_payment(_payment(), credentials)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999, currency="CNY")
    assert (
        await channel.query_payment(query, credentials)
    ).status == PaymentStatus.REQUIRES_ACTION  # not scanned
    standin.scan(PAYMENT_ID)
    waiting = await channel.query_payment(query, credentials)
    assert waiting.status == PaymentStatus.REQUIRES_ACTION and waiting.amount == 1999
    trade = standin.pay(PAYMENT_ID)
    (event,) = await channel.verify_callback(
        _callback(standin.notify(PAYMENT_ID, notify_id="n1", now_s=NOW_S)), credentials
    )
    assert (event.kind, event.payment_id, event.provider_ref, event.amount) == (
        CallbackKind.PAYMENT_SUCCEEDED,
        PAYMENT_ID,
        trade.trade_no,
        1999,
    )
    paid = await channel.query_payment(query, credentials)
    assert (paid.status, paid.provider_ref, paid.amount, paid.currency) == (
        PaymentStatus.SUCCEEDED,
        trade.trade_no,
        1999,
        "CNY",
    )
    refund = RefundRequest(
        refund_id=REFUND_ID,
        payment_id=PAYMENT_ID,
        provider_ref=trade.trade_no,
        amount=550,
        currency="CNY",
        reason="玩家申请",
    )
    result = await channel.refund(refund, credentials)
    assert (result.status, result.provider_refund_ref) == ("succeeded", REFUND_ID)
    assert json.loads(standin.requests[-1]["biz_content"]) == {
        "out_trade_no": PAYMENT_ID,
        "refund_amount": "5.50",
        "out_request_no": REFUND_ID,
        "refund_reason": "玩家申请",
    }
    retried = await channel.refund(refund, credentials)
    assert retried.status == "pending"  # fund_change=N: already refunded, or not; never "failed"
    assert standin.trades[PAYMENT_ID].refunds == {REFUND_ID: "5.50"}
    (refunded,) = await channel.verify_callback(
        _callback(standin.notify(PAYMENT_ID, notify_id="n2", now_s=NOW_S)), credentials
    )
    assert (refunded.kind, refunded.amount, refunded.refund_id) == (
        CallbackKind.REFUND_SUCCEEDED,
        550,
        REFUND_ID,
    )


@pytest.mark.anyio
async def test_a_closed_trade_queries_as_canceled_and_notifies_failed(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    await channel.create_payment(_payment(), _credentials(keys))
    standin.close(PAYMENT_ID)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=None, amount=1999, currency="CNY")
    report = await channel.query_payment(query, _credentials(keys))
    assert (report.status, report.failure_code) == (PaymentStatus.CANCELED, "trade_closed")
    (event,) = await channel.verify_callback(
        _callback(standin.notify(PAYMENT_ID, notify_id="n3", now_s=NOW_S)), _credentials(keys)
    )
    assert (event.kind, event.failure_code) == (CallbackKind.PAYMENT_FAILED, "trade_closed")


@pytest.mark.anyio
async def test_provider_errors(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    standin.force = {
        "code": "40004",
        "msg": "Business Failed",
        "sub_code": "ACQ.TRADE_HAS_CLOSE",
        "sub_msg": "交易已关闭",
    }
    with pytest.raises(ProviderDeclined, match="40004.*ACQ.TRADE_HAS_CLOSE") as caught:  # signed: definite
        await channel.create_payment(_payment(), _credentials(keys))
    assert caught.value.provider_code == "ACQ.TRADE_HAS_CLOSE"
    for unknown in ({"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error"},
                    {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.SYSTEM_ERROR"}):
        standin.force = unknown
        with pytest.raises(ChannelUnavailable) as caught:
            await channel.create_payment(_payment(), _credentials(keys))
        assert type(caught.value) is ChannelUnavailable, "Alipay could not tell: the outcome is unknown"
    with pytest.raises(ProviderDeclined, match="isv.invalid-signature"):  # the gateway refuses our sign
        await channel.create_payment(
            _payment(), _credentials(keys, app_private_key=keys.alipay_private_pkcs8)
        )
    with pytest.raises(ProviderDeclined, match="isv.invalid-app-id"):
        await channel.create_payment(_payment(), _credentials(keys, app_id="2021000000000999"))
    standin.corrupt_sign = True
    with pytest.raises(ChannelUnavailable, match="not signed"):
        await channel.create_payment(_payment(), _credentials(keys))
    standin.corrupt_sign = False
    with pytest.raises(ChannelUnavailable, match="not signed"):  # verified with the wrong Alipay key
        await channel.create_payment(_payment(), _credentials(keys, alipay_public_key=keys.app_public_pem))
    with pytest.raises(CurrencyNotSupported):
        await channel.create_payment(_payment(currency="USD"), _credentials(keys))
    with pytest.raises(ChannelUnavailable, match="app_id is not set"):
        await channel.create_payment(_payment(), _credentials(keys, app_id=""))


@pytest.mark.anyio
async def test_a_slow_gateway_is_a_timeout_with_unknown_outcome(keys):
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer in time", request=request)

    channel = AlipayChannel(public_url="x", http=httpx.AsyncClient(transport=httpx.MockTransport(slow)))
    with pytest.raises(ChannelTimeout):
        await channel.create_payment(_payment(), _credentials(keys))
    with pytest.raises(ChannelTimeout):
        await channel.refund(
            RefundRequest(
                refund_id=REFUND_ID, payment_id=PAYMENT_ID, provider_ref="t", amount=1, currency="CNY"
            ),
            _credentials(keys),
        )

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    down = AlipayChannel(public_url="x", http=httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    with pytest.raises(ChannelUnreachable):  # never reached Alipay: nothing was done there
        await down.create_payment(_payment(), _credentials(keys))


def test_repr_shows_no_secrets(keys):
    channel = AlipayChannel(public_url="https://apss.example", http=httpx.AsyncClient())
    settings = _settings(keys)
    for text in (repr(channel), repr(settings)):
        assert "PRIVATE" not in text and keys.alipay_public_bare[:40] not in text


# --- statements -------------------------------------------------------------------------------

_BILL_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
    "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
    "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)


def _bill_row(trade_no, out_trade_no, kind, amount, fee, refund_no=""):
    cells = [
        f"{trade_no}\t",
        f"{out_trade_no}\t",
        kind,
        "钻石×100",
        "2026-11-25 23:00:00",
        "2026-11-25 23:04:05",
        "",
        "",
        "",
        "",
        "buy***@example.com",
        amount,
        amount,
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "",
        "0.00",
        "0.00",
        f"{refund_no}\t" if refund_no else "",
        fee,
        "0.00",
        "",
    ]
    return ",".join(cells)


def _bill() -> str:
    return (
        "\n".join(
            [
                "#支付宝业务明细查询",
                "#账号：[20889xxxxxxx0156]",
                "#起始日期：[2026年11月25日 00:00:00]   终止日期：[2026年11月26日 00:00:00]",
                "#-----------------------------------------业务明细列表----------------------------------------",
                _BILL_HEADER,
                _bill_row("2026112522001404070200176844", PAYMENT_ID, "交易", "19.99", "-0.12"),
                _bill_row("2026112522001404070200176844", PAYMENT_ID, "退款", "-5.50", "0.03", REFUND_ID),
                _bill_row("2026112522001404070200176999", "shop-order-7", "交易", "100.00", "-0.60"),
                "#-----------------------------------------业务明细列表结束------------------------------------",
                "#交易合计：2笔，商家实收：119.99元，",
                "#退款合计：1笔，商家实收：-5.50元，",
                "#导出时间：[2026年11月26日 10:09:34]",
            ]
        )
        + "\n"
    )


@pytest.mark.parametrize("encoding", ["gbk", "utf-8", "utf-8-sig"])
def test_statement_parsing(encoding):
    channel = AlipayChannel(public_url="https://apss.example", http=httpx.AsyncClient())
    lines = channel.parse_statement(_bill().encode(encoding))
    assert len(lines) == 3
    payment, refund, foreign = lines
    assert (
        payment.kind,
        payment.provider_ref,
        payment.payment_id,
        payment.amount,
        payment.fee,
        payment.currency,
    ) == ("payment", "2026112522001404070200176844", PAYMENT_ID, 1999, 12, "CNY")
    assert payment.occurred_at_s == NOW_S  # 完成时间 in Beijing time
    assert (refund.kind, refund.provider_ref, refund.payment_id, refund.amount, refund.fee) == (
        "refund",
        REFUND_ID,
        PAYMENT_ID,
        -550,
        -3,
    )
    assert (foreign.payment_id, foreign.amount, foreign.fee) == (None, 10000, 60)


def test_statement_errors():
    with pytest.raises(Exception, match="no column"):
        mapping.parse_statement("#x\na,b\n1,2\n".encode())
    with pytest.raises(Exception, match="columns"):
        mapping.parse_statement((_BILL_HEADER + "\n1,2\n").encode())
    with pytest.raises(Exception, match="not CNY"):
        mapping.parse_statement(
            (_BILL_HEADER + "\n" + _bill_row("1", "x", "交易", "1.234", "0") + "\n").encode()
        )
    assert mapping.parse_statement(b"#only comments\n") == []


# --- the contract harness ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_harness_callbacks(keys):
    harness = make_harness()
    try:
        created = await harness.channel.create_payment(_payment(amount=100), harness.credentials)
        assert created.next_action.type == "qr_code"
        for succeeded, kind in ((True, CallbackKind.PAYMENT_SUCCEEDED), (False, CallbackKind.PAYMENT_FAILED)):
            request = await harness.signed_callback(
                succeeded=succeeded,
                payment_id=PAYMENT_ID,
                provider_ref=created.provider_ref,
                amount=100,
                currency="CNY",
                event_id=f"evt-{succeeded}",
                now_s=NOW_S,
            )
            (event,) = await harness.channel.verify_callback(request, harness.credentials)
            assert (event.kind, event.payment_id, event.amount, event.currency, event.event_id) == (
                kind,
                PAYMENT_ID,
                100,
                "CNY",
                f"evt-{succeeded}",
            )
            with pytest.raises(CallbackRejected):
                await harness.channel.verify_callback(harness.tamper(request), harness.credentials)
            assert harness.stale(request) is None
    finally:
        await harness.aclose()


# --- expiry, closing, refund queries ----------------------------------------------------------

def test_expiry_fields_for_precreate_and_page_pay():
    assert mapping.timeout_express(NOW_S + 15 * 60, now_s=NOW_S) == "15m"
    assert mapping.timeout_express(NOW_S + 15 * 60 + 59, now_s=NOW_S) == "15m"  # never past the reservation
    assert mapping.timeout_express(NOW_S + 10, now_s=NOW_S) == "1m"  # Alipay's minimum
    assert mapping.timeout_express(NOW_S + 40 * 86400, now_s=NOW_S) == f"{15 * 24 * 60}m"  # and maximum
    # 2026-11-25T15:04:05Z is 23:04:05 in Beijing
    assert mapping.time_expire(1795619045) == "2026-11-25 23:04:05"


@pytest.mark.anyio
async def test_both_flows_send_the_reservation_end(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    await channel.create_payment(_payment(expires_at_s=NOW_S + 900), _credentials(keys))
    assert standin.trades[PAYMENT_ID].timeout_express == "15m"
    page = await channel.create_payment(_payment(payment_id="pay_01m89ng6h9bsa6pt3b8qajdkpg", expires_at_s=NOW_S + 900,
                                                 metadata={"alipay_flow": "page"}), _credentials(keys))
    biz = json.loads(dict(parse_qsl(page.next_action.url.split("?", 1)[1]))["biz_content"])
    assert biz["time_expire"] == mapping.time_expire(NOW_S + 900) and "timeout_express" not in biz
    assert (await channel._http.get(page.next_action.url)).status_code == 200, "the gateway takes the signed field"


@pytest.mark.anyio
async def test_close_a_trade_scanned_or_not_and_refuse_a_paid_one(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    credentials = _credentials(keys)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999, currency="CNY")
    await channel.create_payment(_payment(), credentials)
    assert await channel.cancel_payment(query, credentials) is None  # never scanned: TRADE_NOT_EXIST is closed
    standin.scan(PAYMENT_ID)
    await channel.cancel_payment(query, credentials)
    assert standin.trades[PAYMENT_ID].status == "TRADE_CLOSED"
    await channel.cancel_payment(query, credentials)  # already closed: done
    assert standin.closes() == [PAYMENT_ID] * 3
    paid_id = "pay_01m89ng6h9bsa6pt3b8qajdkpd"
    await channel.create_payment(_payment(payment_id=paid_id), credentials)
    standin.pay(paid_id)
    with pytest.raises(ProviderDeclined) as paid:
        await channel.cancel_payment(PaymentQuery(payment_id=paid_id, provider_ref=paid_id, amount=1999, currency="CNY"),
                                     credentials)
    assert paid.value.provider_code == "trade_paid"


@pytest.mark.anyio
async def test_query_refund_finds_a_refund_made_and_none_for_one_never_made(keys):
    standin = _standin(keys)
    channel = _channel(standin)
    credentials = _credentials(keys)
    await channel.create_payment(_payment(), credentials)
    standin.pay(PAYMENT_ID)
    await channel.refund(RefundRequest(refund_id=REFUND_ID, payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=500,
                                       currency="CNY"), credentials)
    query = RefundQuery(refund_id=REFUND_ID, payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, provider_refund_ref=None,
                        amount=500, currency="CNY")
    assert await channel.query_refund(query, credentials) == RefundResult(provider_refund_ref=REFUND_ID, status="succeeded")
    never = RefundQuery(refund_id="rfd_never", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, provider_refund_ref=None,
                        amount=500, currency="CNY")
    assert await channel.query_refund(never, credentials) == RefundResult(
        provider_refund_ref="rfd_never", status="failed", failure_code="refund_not_found")
