"""WeChat Pay v3 channel: cross-checks against wechatpayv3 (PyPI), mapping, amounts, flows.

The oracle is wechatpayv3 2.0.4 (`pip install wechatpayv3`), used offline in public-key mode:
its `build_authorization`, `WeChatPay.pay/refund/query` (with `requests` replaced by a
recorder), `WeChatPay.callback`, `Core._verify_signature`, `rsa_sign` and `aes_decrypt`.
"""

from __future__ import annotations

import base64
import json
import time
import types
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import wechatpayv3.core
import wechatpayv3.utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechatpayv3 import WeChatPay, WeChatPayType

from apss.channels.base import (
    CallbackRequest,
    Channel,
    PaymentQuery,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
)
from apss.channels.wechatpay import WechatPayChannel, mapping
from apss.channels.wechatpay import client as wx_client
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
from tests.channels import harness_wechatpay as hw
from tests.channels import standin_wechatpay as standin

NOW_S = 1_764_083_045  # 2025-11-25T15:04:05Z
NONCE = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
PAYMENT_ID = "pay_01m89ng6h9bsa6pt3b8qajdksk"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def harness() -> AsyncIterator[hw.Harness]:
    h = hw.make_harness()
    yield h
    await h.aclose()


@pytest.fixture
def frozen(harness: hw.Harness, monkeypatch: pytest.MonkeyPatch) -> hw.Harness:
    """Our clock, our nonce and the stand-in's clock fixed, so requests are reproducible."""
    harness.channel._clock = TestClock(NOW_S * 1000)
    harness.standin.now_s = lambda: NOW_S
    monkeypatch.setattr(wx_client, "_new_nonce", lambda: NONCE)
    return harness


def _sdk(apiv3_key: str = hw.APIV3_KEY) -> WeChatPay:
    return WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE, mchid=hw.MCHID, private_key=standin.private_pem(hw._key("merchant")),
        cert_serial_no=hw.MERCHANT_SERIAL_NO, appid=hw.APPID, apiv3_key=apiv3_key,
        public_key=standin.public_pem(hw._key("platform")), public_key_id=hw.PUBLIC_KEY_ID,
    )


def _payment(amount: int = 1999, currency: str = "CNY", payment_id: str = PAYMENT_ID) -> PaymentRequest:
    return PaymentRequest(payment_id=payment_id, order_id="ord_01m89ng6h9bsa6pt3b8qajdks0", merchant_id="mch_1",
                          amount=amount, currency=currency, description="大乐透 钻石包 x10",
                          callback_url="https://apss.test/v1/channels/wechatpay/webhook/mch_1")


def _callback(headers: dict[str, str], body: bytes, now_s: int = NOW_S) -> CallbackRequest:
    return CallbackRequest(headers=headers, body=body, now_s=now_s)


class _SdkRecorder:
    """Stands in for `requests` inside wechatpayv3.core: records the request, answers 400 (unverified)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _record(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        return types.SimpleNamespace(status_code=400, text="{}", content=b"{}",
                                     headers={"Content-Type": "application/json"})

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._record("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._record("GET", url, **kwargs)


@pytest.fixture
def sdk_recorder(monkeypatch: pytest.MonkeyPatch) -> _SdkRecorder:
    recorder = _SdkRecorder()
    monkeypatch.setattr(wechatpayv3.core, "requests", recorder)
    monkeypatch.setattr(wechatpayv3.utils, "time", types.SimpleNamespace(time=lambda: float(NOW_S)))
    monkeypatch.setattr(wechatpayv3.utils, "uuid",
                        types.SimpleNamespace(uuid4=lambda: f"{NONCE[:8]}-{NONCE[8:12]}-{NONCE[12:16]}-"
                                              f"{NONCE[16:20]}-{NONCE[20:]}"))
    return recorder


def _assert_same_request(sdk_call: dict[str, Any], ours: standin.Recorded) -> None:
    assert sdk_call["method"] == ours.method
    assert sdk_call["url"] == wx_client.DEFAULT_API_BASE + ours.path  # the SDK always calls production
    sdk_body = json.dumps(sdk_call["json"]).encode() if sdk_call.get("json") is not None else b""
    assert ours.body == sdk_body
    for name in ("Authorization", "Wechatpay-Serial", "Accept", "Content-Type"):
        assert ours.headers[name.lower()] == sdk_call["headers"][name], name


# ---- cross-checks: request signing ----


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v3/pay/transactions/native", '{"description": "\\u5927\\u4e50\\u900f", "amount": {"total": 1}}'),
    ("POST", "/v3/refund/domestic/refunds", '{"reason":"大乐透"}'),
    ("GET", f"/v3/pay/transactions/out-trade-no/{PAYMENT_ID}?mchid={hw.MCHID}", ""),
])
def test_authorization_is_byte_identical_to_sdk_build_authorization(
    method: str, path: str, body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wechatpayv3.utils, "time", types.SimpleNamespace(time=lambda: float(NOW_S)))
    key = hw._key("merchant")
    sdk = wechatpayv3.utils.build_authorization(path, method, hw.MCHID, hw.MERCHANT_SERIAL_NO, key,
                                                data=body or None, nonce_str=NONCE)
    ours = wx_client.build_authorization(method=method, path=path, body=body, timestamp_s=NOW_S, nonce=NONCE,
                                         mchid=hw.MCHID, serial_no=hw.MERCHANT_SERIAL_NO, private_key=key)
    assert ours == sdk
    assert ours.startswith(f'WECHATPAY2-SHA256-RSA2048 mchid="{hw.MCHID}",nonce_str="{NONCE}",signature="')
    assert ours.endswith(f'",timestamp="{NOW_S}",serial_no="{hw.MERCHANT_SERIAL_NO}"')


@pytest.mark.anyio
async def test_create_payment_request_is_byte_identical_to_sdk_pay(frozen: hw.Harness,
                                                                   sdk_recorder: _SdkRecorder) -> None:
    created = await frozen.channel.create_payment(_payment(), frozen.credentials)
    request = _payment()
    _sdk().pay(description=request.description, out_trade_no=PAYMENT_ID,
               amount={"total": 1999, "currency": "CNY"}, notify_url=request.callback_url)
    ours = frozen.standin.requests[-1]
    _assert_same_request(sdk_recorder.calls[-1], ours)
    assert ours.path == "/v3/pay/transactions/native"
    assert json.loads(ours.body) == {
        "notify_url": request.callback_url, "description": "大乐透 钻石包 x10", "out_trade_no": PAYMENT_ID,
        "amount": {"total": 1999, "currency": "CNY"}, "appid": hw.APPID, "mchid": hw.MCHID}
    assert created.provider_ref == PAYMENT_ID


@pytest.mark.anyio
@pytest.mark.parametrize(("flow", "sdk_type", "extra"), [
    ("jsapi", WeChatPayType.JSAPI, {"payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}),
    ("app", WeChatPayType.APP, {}),
    ("h5", WeChatPayType.H5, {"scene_info": {"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}}}),
])
async def test_mobile_flow_requests_are_byte_identical_to_sdk_pay(frozen: hw.Harness, sdk_recorder: _SdkRecorder,
                                                                  flow: str, sdk_type: WeChatPayType,
                                                                  extra: dict[str, Any]) -> None:
    request = msgspec.structs.replace(_payment(), flow=flow, openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" if flow == "jsapi"
                                      else None, payer_ip="203.0.113.7" if flow == "h5" else None)
    created = await frozen.channel.create_payment(request, frozen.credentials)
    _sdk().pay(description=request.description, out_trade_no=PAYMENT_ID, amount={"total": 1999, "currency": "CNY"},
               notify_url=request.callback_url, pay_type=sdk_type, **extra)
    ours = frozen.standin.requests[-1]
    _assert_same_request(sdk_recorder.calls[-1], ours)
    assert ours.path == f"/v3/pay/transactions/{flow}"
    prepay_id = frozen.standin.payments[PAYMENT_ID]["prepay_id"]
    assert created.next_action is not None
    if flow == "h5":
        assert created.next_action.type == "redirect" and f"prepay_id={prepay_id}" in (created.next_action.url or "")
        return
    params = created.next_action.params or {}
    assert created.next_action.type == "sdk_params" and (params.get("package"), params.get("prepayid")) in (
        (f"prepay_id={prepay_id}", None), ("Sign=WXPay", prepay_id))
    signed = ([params["appId"], str(NOW_S), NONCE, f"prepay_id={prepay_id}"] if flow == "jsapi"
              else [params["appid"], str(NOW_S), NONCE, prepay_id])
    assert params["paySign" if flow == "jsapi" else "sign"] == _sdk().sign(signed)


@pytest.mark.anyio
@pytest.mark.parametrize(("flow", "setting", "sdk_type", "extra"), [
    ("app", "app_appid", WeChatPayType.APP, {}),
    ("jsapi", "jsapi_appid", WeChatPayType.JSAPI, {"payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}),
])
async def test_the_app_and_jsapi_flows_pay_with_their_own_appids(frozen: hw.Harness, sdk_recorder: _SdkRecorder,
                                                                 flow: str, setting: str, sdk_type: WeChatPayType,
                                                                 extra: dict[str, Any]) -> None:
    """A studio's mobile app (Open Platform) and its mini-program have appids of their own, bound to
    the one mchid: each flow places its order with its own, and the client SDK's parameters name it."""
    own_appid = "wx" + ("a1" if flow == "app" else "b2") * 8
    frozen.standin.bound_appids = frozenset({own_appid})
    credentials = {**frozen.credentials, setting: own_appid}
    request = msgspec.structs.replace(_payment(), flow=flow,
                                      openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" if flow == "jsapi" else None)
    created = await frozen.channel.create_payment(request, credentials)
    _sdk().pay(description=request.description, out_trade_no=PAYMENT_ID, amount={"total": 1999, "currency": "CNY"},
               notify_url=request.callback_url, pay_type=sdk_type, appid=own_appid, **extra)
    _assert_same_request(sdk_recorder.calls[-1], frozen.standin.requests[-1])
    assert json.loads(frozen.standin.requests[-1].body)["appid"] == own_appid
    params = created.next_action.params or {}
    assert params["appId" if flow == "jsapi" else "appid"] == own_appid
    frozen.standin.pay_with_client_params(flow, params)  # WeChat's client checks the signature and the appid
    assert frozen.standin.payments[PAYMENT_ID]["trade_state"] == "SUCCESS"
    # The Native QR flow still uses `appid`; an appid not bound to the mchid is refused by WeChat.
    native = await frozen.channel.create_payment(msgspec.structs.replace(_payment(), payment_id="pay_native_1"),
                                                 credentials)
    assert native.next_action.type == "qr_code"
    assert json.loads(frozen.standin.requests[-1].body)["appid"] == hw.APPID
    frozen.standin.bound_appids = frozenset()
    with pytest.raises(ProviderDeclined, match="APPID_MCHID_NOT_MATCH"):
        await frozen.channel.create_payment(msgspec.structs.replace(request, payment_id="pay_unbound_1"), credentials)


@pytest.mark.anyio
async def test_a_flow_the_channel_lacks_is_refused_before_any_call(harness: hw.Harness) -> None:
    with pytest.raises(ProviderFlowNotSupported):
        await harness.channel.create_payment(msgspec.structs.replace(_payment(), flow="wap"), harness.credentials)
    assert harness.standin.requests == []


@pytest.mark.anyio
async def test_query_and_refund_requests_are_byte_identical_to_sdk(frozen: hw.Harness,
                                                                    sdk_recorder: _SdkRecorder) -> None:
    await frozen.channel.create_payment(_payment(), frozen.credentials)
    frozen.standin.pay(PAYMENT_ID)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999, currency="CNY")
    await frozen.channel.query_payment(query, frozen.credentials)
    _sdk().query(out_trade_no=PAYMENT_ID)
    _assert_same_request(sdk_recorder.calls[-1], frozen.standin.requests[-1])
    assert frozen.standin.requests[-1].path == f"/v3/pay/transactions/out-trade-no/{PAYMENT_ID}?mchid={hw.MCHID}"

    refund = RefundRequest(refund_id="rfd_01m89ng6h9bsa6pt3b8qajdks1", payment_id=PAYMENT_ID,
                           provider_ref=PAYMENT_ID, amount=500, currency="CNY", reason="玩家申请退款")
    await frozen.channel.refund(refund, frozen.credentials)
    _sdk().refund(out_refund_no=refund.refund_id, amount={"refund": 500, "total": 1999, "currency": "CNY"},
                  out_trade_no=PAYMENT_ID, reason="玩家申请退款")
    _assert_same_request(sdk_recorder.calls[-1], frozen.standin.requests[-1])


def test_standin_accepts_sdk_signed_requests_and_refuses_tampered_ones(sdk_recorder: _SdkRecorder) -> None:
    harness = hw.make_harness()
    harness.standin.now_s = lambda: NOW_S
    _sdk().pay(description="钻石", out_trade_no=PAYMENT_ID, amount={"total": 1}, notify_url="https://a.test/n")
    call = sdk_recorder.calls[-1]
    headers = {k.lower(): v for k, v in call["headers"].items()}
    body = json.dumps(call["json"]).encode()
    path = "/v3/pay/transactions/native"
    assert harness.standin.check_authorization("POST", path, headers, body) is None
    assert harness.standin.check_authorization("POST", path, headers, body.replace(b"1", b"2")) == "signature"
    assert harness.standin.check_authorization("GET", path, headers, body) == "signature"
    harness.standin.now_s = lambda: NOW_S + 301
    assert harness.standin.check_authorization("POST", path, headers, body) == "timestamp or nonce"


@pytest.mark.anyio
async def test_standin_answers_verify_with_sdk_verify_signature(frozen: hw.Harness) -> None:
    answer = await frozen.http.post(f"{hw.API_BASE}/v3/unknown", content=b"")
    assert answer.status_code == 401  # unsigned request refused
    # The SDK checks the answer signature headers (its own casing rules) over the text body.
    sdk_headers = {k.lower(): v for k, v in answer.headers.items()}
    assert _sdk()._core._verify_signature(sdk_headers, answer.text) is True
    assert _sdk()._core._verify_signature(sdk_headers, answer.text + " ") is False


# ---- cross-checks: callbacks ----


def _our_callback(harness: hw.Harness, *, event_id: str = "EV-2018022511223320873", now_s: int = NOW_S,
                  apiv3_key: str = hw.APIV3_KEY) -> tuple[dict[str, str], bytes, dict[str, Any]]:
    plaintext = standin.transaction_plaintext(mchid=hw.MCHID, appid=hw.APPID, out_trade_no=PAYMENT_ID,
                                              trade_state="SUCCESS", total=1999, transaction_id="4200000001")
    headers, body = standin.build_callback(key=harness.platform_key, public_key_id=hw.PUBLIC_KEY_ID,
                                           apiv3_key=apiv3_key, event_id=event_id, event_type="TRANSACTION.SUCCESS",
                                           summary="支付成功", plaintext=plaintext, timestamp_s=now_s,
                                           original_type="transaction")
    return headers, body, plaintext


@pytest.mark.anyio
async def test_callback_we_build_verifies_and_decrypts_with_sdk_and_ours(harness: hw.Harness) -> None:
    headers, body, plaintext = _our_callback(harness)
    result = _sdk().callback(headers, body)
    assert result is not None
    assert result["resource"] == plaintext
    assert result["id"] == "EV-2018022511223320873"
    events = await harness.channel.verify_callback(_callback(headers, body), harness.credentials)
    assert [(e.event_id, e.kind, e.payment_id, e.provider_ref, e.amount, e.currency) for e in events] == [
        ("EV-2018022511223320873", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, PAYMENT_ID, 1999, "CNY")]


@pytest.mark.anyio
async def test_tampered_callback_fails_sdk_and_ours(harness: hw.Harness) -> None:
    headers, body, _ = _our_callback(harness)
    tampered = body.replace("支付成功".encode(), "支付失败".encode())
    assert tampered != body
    assert _sdk().callback(headers, tampered) is None
    with pytest.raises(CallbackRejected):
        await harness.channel.verify_callback(_callback(headers, tampered), harness.credentials)
    one_byte = harness.tamper(_callback(headers, body))
    assert sum(a != b for a, b in zip(one_byte.body, body)) == 1
    assert _sdk().callback(one_byte.headers, one_byte.body) is None
    with pytest.raises(CallbackRejected):
        await harness.channel.verify_callback(one_byte, harness.credentials)


@pytest.mark.anyio
async def test_wrong_apiv3_key_fails_sdk_and_ours(harness: hw.Harness) -> None:
    headers, body, _ = _our_callback(harness, apiv3_key="b" * 32)
    assert _sdk().callback(headers, body) is None  # signature fine, GCM tag fails
    assert _sdk(apiv3_key="b" * 32).callback(headers, body) is not None
    with pytest.raises(CallbackRejected, match="decrypt"):
        await harness.channel.verify_callback(_callback(headers, body), harness.credentials)


def _sdk_built_callback(now_s: int) -> tuple[dict[str, str], bytes]:
    """A callback assembled with wechatpayv3's own primitives (it has no AES encrypt helper:
    AESGCM mirrors its aes_decrypt, and the round trip through aes_decrypt is checked)."""
    plaintext = json.dumps({"mchid": hw.MCHID, "appid": hw.APPID, "out_trade_no": PAYMENT_ID,
                            "transaction_id": "4200000002", "trade_type": "NATIVE", "trade_state": "SUCCESS",
                            "trade_state_desc": "支付成功", "amount": {"total": 100, "payer_total": 100,
                                                                      "currency": "CNY", "payer_currency": "CNY"}})
    nonce, aad = "fdasflkja484", "transaction"
    ciphertext = base64.b64encode(AESGCM(hw.APIV3_KEY.encode()).encrypt(nonce.encode(), plaintext.encode(),
                                                                        aad.encode())).decode()
    assert wechatpayv3.utils.aes_decrypt(nonce, ciphertext, aad, hw.APIV3_KEY) == plaintext
    body = json.dumps({"id": "EV-SDK-1", "create_time": "2026-11-25T23:04:05+08:00", "resource_type":
                       "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                       "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                                    "ciphertext": ciphertext, "associated_data": aad, "nonce": nonce}})
    signature = wechatpayv3.utils.rsa_sign(hw._key("platform"), f"{now_s}\n{NONCE}\n{body}\n")
    headers = {"Wechatpay-Timestamp": str(now_s), "Wechatpay-Nonce": NONCE, "Wechatpay-Signature": signature,
               "Wechatpay-Serial": hw.PUBLIC_KEY_ID, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}
    return headers, body.encode()


@pytest.mark.anyio
async def test_callback_built_with_sdk_primitives_verifies_with_ours(harness: hw.Harness) -> None:
    headers, body = _sdk_built_callback(NOW_S)
    assert _sdk().callback(headers, body) is not None
    lower = {k.lower(): v for k, v in headers.items()}
    events = await harness.channel.verify_callback(_callback(lower, body), harness.credentials)
    assert [(e.event_id, e.kind, e.payment_id, e.amount, e.currency) for e in events] == [
        ("EV-SDK-1", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, 100, "CNY")]
    with pytest.raises(CallbackRejected):
        await harness.channel.verify_callback(_callback(lower, body.replace(b"EV-SDK-1", b"EV-SDK-2")),
                                             harness.credentials)


@pytest.mark.anyio
async def test_signature_type_header(harness: hw.Harness) -> None:
    headers, body, _ = _our_callback(harness)
    del headers["wechatpay-signature-type"]
    with pytest.raises(Exception, match="does not support"):
        _sdk().callback(headers, body)  # the SDK insists on the header; ours takes it as optional
    assert len(await harness.channel.verify_callback(_callback(headers, body), harness.credentials)) == 1
    headers["wechatpay-signature-type"] = "WECHATPAY2-SM2-WITH-SM3"
    with pytest.raises(CallbackRejected, match="signature type"):
        await harness.channel.verify_callback(_callback(headers, body), harness.credentials)


# ---- callbacks: timestamps and other refusals ----


@pytest.mark.anyio
@pytest.mark.parametrize(("skew_s", "accepted"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)])
async def test_callback_timestamp_tolerance(harness: hw.Harness, skew_s: int, accepted: bool) -> None:
    headers, body, _ = _our_callback(harness, now_s=NOW_S + skew_s)
    request = _callback(headers, body, now_s=NOW_S)
    if accepted:
        assert len(await harness.channel.verify_callback(request, harness.credentials)) == 1
    else:
        assert _sdk().callback(headers, body) is not None  # wechatpayv3 does not check the age
        with pytest.raises(CallbackRejected, match="timestamp"):
            await harness.channel.verify_callback(request, harness.credentials)


@pytest.mark.anyio
async def test_harness_stale_is_rejected(harness: hw.Harness) -> None:
    request = await harness.signed_callback(succeeded=True, payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID,
                                            amount=1999, currency="CNY", event_id="EV-1", now_s=NOW_S)
    assert len(await harness.channel.verify_callback(request, harness.credentials)) == 1
    with pytest.raises(CallbackRejected, match="timestamp"):
        await harness.channel.verify_callback(harness.stale(request), harness.credentials)


@pytest.mark.anyio
@pytest.mark.parametrize(("change", "reason"), [
    ("probe", "signature probe"), ("serial", "another key"), ("timestamp_text", "timestamp"),
    ("missing_nonce", "headers missing"), ("other_key", "signature invalid"), ("bad_base64", "signature invalid"),
])
async def test_callback_refusals(harness: hw.Harness, change: str, reason: str) -> None:
    headers, body, _ = _our_callback(harness)
    if change == "probe":
        headers["wechatpay-signature"] = "WECHATPAY/SIGNTEST/" + headers["wechatpay-signature"]
    elif change == "serial":
        headers["wechatpay-serial"] = "PUB_KEY_ID_0000000000000000000000000000000000"
    elif change == "timestamp_text":
        headers["wechatpay-timestamp"] = f" {NOW_S}"
    elif change == "missing_nonce":
        del headers["wechatpay-nonce"]
    elif change == "other_key":
        headers["wechatpay-signature"] = standin.sign_message(hw._key("merchant"), str(NOW_S),
                                                              headers["wechatpay-nonce"], body)
    else:
        headers["wechatpay-signature"] = "%%%" + headers["wechatpay-signature"]
    with pytest.raises(CallbackRejected, match=reason):
        await harness.channel.verify_callback(_callback(headers, body), harness.credentials)


@pytest.mark.anyio
async def test_callback_shape_refusals_after_a_valid_signature(harness: hw.Harness) -> None:
    def signed(envelope: dict[str, Any]) -> CallbackRequest:
        body = json.dumps(envelope, ensure_ascii=False).encode()
        return _callback(standin.signed_headers(key=harness.platform_key, public_key_id=hw.PUBLIC_KEY_ID,
                                                body=body, timestamp_s=NOW_S), body)

    _, body, _ = _our_callback(harness)
    envelope = json.loads(body)
    for bad in ({**envelope, "resource_type": "plain"}, {"id": "EV-1"},
                {**envelope, "resource": {**envelope["resource"], "algorithm": "AES_128_CBC"}}):
        with pytest.raises(CallbackRejected):
            await harness.channel.verify_callback(signed(bad), harness.credentials)
    other_mchid = standin.build_callback(
        key=harness.platform_key, public_key_id=hw.PUBLIC_KEY_ID, apiv3_key=hw.APIV3_KEY, event_id="EV-2",
        event_type="TRANSACTION.SUCCESS", summary="支付成功", timestamp_s=NOW_S, original_type="transaction",
        plaintext=standin.transaction_plaintext(mchid="1999999999", appid=hw.APPID, out_trade_no=PAYMENT_ID,
                                                trade_state="SUCCESS", total=1))
    with pytest.raises(CallbackRejected, match="another merchant"):
        await harness.channel.verify_callback(_callback(*other_mchid), harness.credentials)


@pytest.mark.anyio
async def test_unrelated_notification_is_acknowledged_with_no_events(harness: hw.Harness) -> None:
    headers, body = standin.build_callback(
        key=harness.platform_key, public_key_id=hw.PUBLIC_KEY_ID, apiv3_key=hw.APIV3_KEY, event_id="EV-C1",
        event_type="COMPLAINT.CREATE", summary="产生新投诉", timestamp_s=NOW_S, original_type="complaint",
        plaintext={"complaint_id": "200201820200101080076610000", "action_type": "CREATE_COMPLAINT"})
    assert await harness.channel.verify_callback(_callback(headers, body), harness.credentials) == []


def test_callback_reply() -> None:
    channel = WechatPayChannel(public_url="http://apss.test")
    ok = channel.callback_reply(accepted=True)
    assert (ok.status_code, ok.body) == (204, b"")
    refused = channel.callback_reply(accepted=False)
    assert refused.status_code == 400
    assert refused.media_type == "application/json"
    assert refused.body == '{"code": "FAIL", "message": "失败"}'.encode()


# ---- mapping ----


@pytest.mark.parametrize(("trade_state", "status", "kind"), [
    ("SUCCESS", PaymentStatus.SUCCEEDED, CallbackKind.PAYMENT_SUCCEEDED),
    ("REFUND", PaymentStatus.SUCCEEDED, CallbackKind.PAYMENT_SUCCEEDED),
    ("NOTPAY", PaymentStatus.REQUIRES_ACTION, None),
    ("USERPAYING", PaymentStatus.PROCESSING, None),
    ("CLOSED", PaymentStatus.CANCELED, CallbackKind.PAYMENT_FAILED),
    ("REVOKED", PaymentStatus.CANCELED, CallbackKind.PAYMENT_FAILED),
    ("PAYERROR", PaymentStatus.FAILED, CallbackKind.PAYMENT_FAILED),
    ("SOMETHING_NEW", PaymentStatus.UNKNOWN, None),
])
def test_trade_state_mapping(trade_state: str, status: PaymentStatus, kind: CallbackKind | None) -> None:
    assert mapping.payment_status(trade_state) is status
    assert mapping.callback_kind_for_status(status) is kind
    txn = mapping.Transaction(out_trade_no=PAYMENT_ID, trade_state=trade_state,
                              amount=mapping.Amount(total=1999, currency="CNY"))
    events = mapping.transaction_events("EV-9", txn)
    assert [e.kind for e in events] == ([kind] if kind else [])
    report = mapping.payment_report(txn)
    assert (report.status, report.amount, report.currency, report.provider_ref) == (status, 1999, "CNY", PAYMENT_ID)
    failed = status in (PaymentStatus.FAILED, PaymentStatus.CANCELED)
    assert report.failure_code == (trade_state if failed else None)
    assert [e.failure_code for e in events] == ([trade_state] if kind is CallbackKind.PAYMENT_FAILED else
                                                [None] if kind else [])


@pytest.mark.parametrize(("status", "neutral", "kind"), [
    ("SUCCESS", "succeeded", CallbackKind.REFUND_SUCCEEDED),
    ("PROCESSING", "pending", None),
    ("CLOSED", "failed", CallbackKind.REFUND_FAILED),
    ("ABNORMAL", "failed", CallbackKind.REFUND_FAILED),
    ("SOMETHING_NEW", "pending", None),
])
def test_refund_status_mapping(status: str, neutral: str, kind: CallbackKind | None) -> None:
    assert mapping.refund_status(status) == neutral
    result = mapping.refund_result(mapping.RefundResponse(refund_id="50000001", out_refund_no="rfd_1", status=status))
    assert (result.status, result.provider_refund_ref) == (neutral, "50000001")
    assert result.failure_code == (status if neutral == "failed" else None)
    notice = mapping.RefundNotice(out_trade_no=PAYMENT_ID, out_refund_no="rfd_1", refund_id="50000001",
                                  refund_status=status, amount=mapping.RefundAmount(total=1999, refund=500))
    events = mapping.refund_events("EV-R", notice)
    assert [(e.kind, e.refund_id, e.provider_refund_ref, e.amount, e.currency, e.payment_id) for e in events] == (
        [(kind, "rfd_1", "50000001", 500, "CNY", PAYMENT_ID)] if kind else [])


# ---- amounts ----


@pytest.mark.parametrize(("text", "currency", "minor"), [
    ("10.00", "CNY", 1000), ("0.01", "CNY", 1), ("0", "CNY", 0), ("19.9", "CNY", 1990), ("-0.01", "CNY", -1),
    ("0.06000", "CNY", 6), ("-1.20000", "CNY", -120), ("123456789.12", "CNY", 12345678912),
    ("1500", "JPY", 1500), ("1500.00", "JPY", 1500), ("1.234", "KWD", 1234), ("0.5", "KWD", 500),
])
def test_decimal_to_minor(text: str, currency: str, minor: int) -> None:
    assert mapping.decimal_to_minor(text, currency) == minor


@pytest.mark.parametrize(("text", "currency"), [
    ("0.001", "CNY"), ("0.06001", "CNY"), ("1500.5", "JPY"), ("1.2345", "KWD"), ("1e3", "CNY"), ("", "CNY"),
    ("1,000.00", "CNY"), ("1.00", "XXX"), ("--1", "CNY"), (".5", "CNY"),
])
def test_decimal_to_minor_refuses(text: str, currency: str) -> None:
    with pytest.raises(ValueError):
        mapping.decimal_to_minor(text, currency)


# ---- flows against the stand-in ----


@pytest.mark.anyio
async def test_create_query_pay_callback_flow(harness: hw.Harness) -> None:
    assert isinstance(harness.channel, Channel)
    created = await harness.channel.create_payment(_payment(), harness.credentials)
    assert created.provider_ref == PAYMENT_ID
    assert created.status is PaymentStatus.REQUIRES_ACTION
    assert created.next_action is not None and created.next_action.type == "qr_code"
    assert created.next_action.data == harness.standin.payments[PAYMENT_ID]["code_url"]
    assert created.next_action.data.startswith("weixin://wxpay/bizpayurl?pr=")
    again = await harness.channel.create_payment(_payment(), harness.credentials)
    assert again == created  # same out_trade_no, same parameters: the same code_url

    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999, currency="CNY")
    report = await harness.channel.query_payment(query, harness.credentials)
    assert (report.status, report.amount, report.currency) == (PaymentStatus.REQUIRES_ACTION, 1999, "CNY")

    harness.standin.pay(PAYMENT_ID)
    report = await harness.channel.query_payment(query, harness.credentials)
    assert (report.status, report.provider_ref, report.amount, report.currency) == (
        PaymentStatus.SUCCEEDED, PAYMENT_ID, 1999, "CNY")
    now_s = harness.standin.now_s()
    headers, body = harness.standin.callback_for(PAYMENT_ID, event_id="EV-FLOW-1", timestamp_s=now_s)
    events = await harness.channel.verify_callback(_callback(headers, body, now_s=now_s), harness.credentials)
    assert [(e.event_id, e.kind, e.payment_id, e.amount, e.currency) for e in events] == [
        ("EV-FLOW-1", CallbackKind.PAYMENT_SUCCEEDED, PAYMENT_ID, 1999, "CNY")]

    with pytest.raises(ProviderDeclined, match="ORDERPAID") as paid:
        await harness.channel.create_payment(_payment(), harness.credentials)
    assert paid.value.provider_code == "ORDERPAID"


@pytest.mark.anyio
async def test_create_payment_refusals(harness: hw.Harness) -> None:
    with pytest.raises(CurrencyNotSupported):
        await harness.channel.create_payment(_payment(currency="USD"), harness.credentials)
    assert harness.standin.requests == []
    await harness.channel.create_payment(_payment(), harness.credentials)
    with pytest.raises(ProviderDeclined, match="INVALID_REQUEST") as reused:
        await harness.channel.create_payment(_payment(amount=2000), harness.credentials)
    assert reused.value.provider_code == "INVALID_REQUEST"
    missing = PaymentQuery(payment_id="pay_nothere000000000000000000000", provider_ref=None, amount=1, currency="CNY")
    with pytest.raises(ProviderDeclined) as not_found:
        await harness.channel.query_payment(missing, harness.credentials)
    assert not_found.value.provider_code == "ORDER_NOT_EXIST"


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "result", "notice", "kind"), [
    ("PROCESSING", "pending", "SUCCESS", CallbackKind.REFUND_SUCCEEDED),
    ("SUCCESS", "succeeded", "SUCCESS", CallbackKind.REFUND_SUCCEEDED),
    ("PROCESSING", "pending", "ABNORMAL", CallbackKind.REFUND_FAILED),
    ("CLOSED", "failed", "CLOSED", CallbackKind.REFUND_FAILED),
])
async def test_refund_flow(harness: hw.Harness, answer: str, result: str, notice: str, kind: CallbackKind) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.pay(PAYMENT_ID)
    harness.standin.refund_status = answer
    refund = RefundRequest(refund_id="rfd_01m89ng6h9bsa6pt3b8qajdks1", payment_id=PAYMENT_ID,
                           provider_ref=PAYMENT_ID, amount=500, currency="CNY")
    refunded = await harness.channel.refund(refund, harness.credentials)
    stored = harness.standin.refunds[refund.refund_id]
    assert (refunded.status, refunded.provider_refund_ref) == (result, stored["refund_id"])
    assert json.loads(harness.standin.requests[-1].body) == {
        "out_refund_no": refund.refund_id, "amount": {"refund": 500, "total": 1999, "currency": "CNY"},
        "out_trade_no": PAYMENT_ID}
    now_s = harness.standin.now_s()
    headers, body = harness.standin.refund_callback_for(refund.refund_id, status=notice, event_id="EV-R1",
                                                        timestamp_s=now_s)
    events = await harness.channel.verify_callback(_callback(headers, body, now_s=now_s), harness.credentials)
    assert [(e.event_id, e.kind, e.payment_id, e.refund_id, e.provider_refund_ref, e.amount, e.currency)
            for e in events] == [("EV-R1", kind, PAYMENT_ID, refund.refund_id, stored["refund_id"], 500, "CNY")]
    assert _sdk().callback(headers, body)["resource"]["refund_status"] == notice


@pytest.mark.anyio
async def test_refund_beyond_the_total_is_refused(harness: hw.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.pay(PAYMENT_ID)
    refund = RefundRequest(refund_id="rfd_a", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999,
                           currency="CNY")
    assert (await harness.channel.refund(refund, harness.credentials)).status == "pending"
    again = await harness.channel.refund(refund, harness.credentials)  # same out_refund_no: same refund
    assert again.provider_refund_ref == harness.standin.refunds["rfd_a"]["refund_id"]
    with pytest.raises(ProviderDeclined, match="INVALID_REQUEST"):
        await harness.channel.refund(RefundRequest(refund_id="rfd_b", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID,
                                                   amount=1, currency="CNY"), harness.credentials)


# ---- provider errors ----


@pytest.mark.anyio
async def test_server_error_and_bad_answer_signature_are_unavailable(harness: hw.Harness) -> None:
    harness.standin.fail_next = (500, "SYSTEM_ERROR")
    with pytest.raises(ChannelUnavailable) as failed:
        await harness.channel.create_payment(_payment(), harness.credentials)
    assert not isinstance(failed.value, ChannelTimeout)
    error: Any = failed.value
    assert not isinstance(error, ProviderDeclined) and error.provider_code == "SYSTEM_ERROR"
    harness.standin.break_signature = True
    with pytest.raises(ChannelUnavailable) as unsigned:
        await harness.channel.create_payment(_payment(), harness.credentials)
    assert unsigned.value.code == "channel_signature_invalid"


@pytest.mark.anyio
async def test_wrong_merchant_key_is_refused_by_the_standin(harness: hw.Harness) -> None:
    credentials = {**harness.credentials, "merchant_private_key": standin.private_pem(hw._key("platform"))}
    with pytest.raises(ProviderDeclined, match="401 SIGN_ERROR") as refused:
        await harness.channel.create_payment(_payment(), credentials)
    assert refused.value.provider_code == "SIGN_ERROR"
    assert harness.standin.payments == {}


@pytest.mark.anyio
async def test_timeout_is_channel_timeout_and_connect_error_unavailable() -> None:
    def timing_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    def refusing(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    credentials = hw.make_harness().credentials
    async with httpx.AsyncClient(transport=httpx.MockTransport(timing_out)) as http:
        with pytest.raises(ChannelTimeout):
            await WechatPayChannel(public_url="http://apss.test", http=http).create_payment(_payment(), credentials)
    async with httpx.AsyncClient(transport=httpx.MockTransport(refusing)) as http:
        with pytest.raises(ChannelUnavailable) as unavailable:
            await WechatPayChannel(public_url="http://apss.test", http=http).create_payment(_payment(), credentials)
    assert not isinstance(unavailable.value, ChannelTimeout)


@pytest.mark.anyio
async def test_secrets_stay_out_of_reprs_and_errors(harness: hw.Harness) -> None:
    assert repr(harness.channel) == "WechatPayChannel(public_url='http://apss.test')"
    settings = wx_client._Settings(harness.credentials, outgoing=True)
    assert hw.APIV3_KEY not in repr(settings) and "PRIVATE" not in repr(settings)
    broken = {**harness.credentials, "merchant_private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END"}
    with pytest.raises(ChannelUnavailable) as bad_key:
        await harness.channel.create_payment(_payment(), broken)
    assert "c2VjcmV0" not in str(bad_key.value) and bad_key.value.__cause__ is None
    with pytest.raises(ChannelUnavailable, match="apiv3_key"):
        await harness.channel.verify_callback(_callback({}, b"{}"), {**harness.credentials, "apiv3_key": "short"})


# ---- statement ----

_BILL = (
    "\ufeff" + standin.BILL_HEADER + "\r\n"
    "`2026-11-25 23:04:05,`wx8888888888888888,`1230000109,`0,`,`4200000001,`pay_a,`oUpF8u,`NATIVE,`SUCCESS,"
    "`OTHERS,`CNY,`19.99,`0.00,`0,`0,`0.00,`0.00,`,`,`钻石包, 大,`,`0.12000,`0.60%,`19.99,`0.00,`\r\n"
    "`2026-11-26 08:00:00,`wx8888888888888888,`1230000109,`0,`,`4200000001,`pay_a,`oUpF8u,`NATIVE,`REFUND,"
    "`OTHERS,`CNY,`0.00,`0.00,`50000001,`rfd_a,`5.00,`0.00,`ORIGINAL,`SUCCESS,`钻石包,`,`-0.03000,`0.60%,"
    "`0.00,`5.00,`\r\n"
    "`2026-11-26 09:00:00,`wx8888888888888888,`1230000109,`0,`,`4200000002,`pay_b,`oUpF8u,`MICROPAY,`REVOKED,"
    "`OTHERS,`JPY,`1500,`0,`0,`0,`0,`0,`,`,`金币,`,`0,`0.60%,`1500,`0,`\r\n"
    + standin.BILL_SUMMARY_HEADER + "\r\n`3,`19.99,`5.00,`0.00,`0.09000,`19.99,`5.00\r\n"
)


def test_parse_statement_reads_rows_and_stops_at_the_summary() -> None:
    lines = WechatPayChannel(public_url="http://apss.test").parse_statement(_BILL.encode())
    assert [(x.kind, x.provider_ref, x.payment_id, x.amount, x.fee, x.currency, x.occurred_at_s) for x in lines] == [
        ("payment", "pay_a", "pay_a", 1999, 12, "CNY", 1795619045),
        ("refund", "50000001", "pay_a", 500, -3, "CNY", 1795651200),
        ("other", "pay_b", "pay_b", 1500, 0, "JPY", 1795654800),
    ]


@pytest.mark.parametrize("broken", [
    b"", "`2026-11-25 23:04:05,`wx\r\n".encode(), "交易时间,商户订单号\r\n`a,`b\r\n".encode(),
    _BILL.replace("`0.12000,", "`0.12001,").encode(),
    _BILL.replace("`2026-11-25 23:04:05", "`yesterday").encode(), b"\x1f\x8bnot gzip",
], ids=["empty", "no_header", "missing_columns", "sub_fen_fee", "bad_time", "bad_gzip"])
def test_parse_statement_refuses_malformed_bills(broken: bytes) -> None:
    with pytest.raises(ChannelUnavailable) as malformed:
        mapping.parse_trade_bill(broken)
    assert malformed.value.code == "statement_malformed"


@pytest.mark.anyio
async def test_fetch_trade_bill_from_standin_and_parse(harness: hw.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.pay(PAYMENT_ID)
    await harness.channel.refund(RefundRequest(refund_id="rfd_x1", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID,
                                               amount=500, currency="CNY"), harness.credentials)
    data = await harness.channel.fetch_trade_bill(bill_date="2026-11-25", credentials=harness.credentials)
    assert harness.standin.requests[-1].path.startswith("/v3/billdownload/file?token=")
    lines = harness.channel.parse_statement(data)
    refund_ref = harness.standin.refunds["rfd_x1"]["refund_id"]
    assert [(x.kind, x.provider_ref, x.payment_id, x.amount, x.fee, x.currency) for x in lines] == [
        ("payment", PAYMENT_ID, PAYMENT_ID, 1999, 12, "CNY"), ("refund", refund_ref, PAYMENT_ID, 500, -3, "CNY")]


# ---- expiry, closing, refund queries ----


def test_time_expire_is_rfc3339_in_beijing_time() -> None:
    assert mapping.time_expire(NOW_S) == "2025-11-25T23:04:05+08:00"
    body = mapping.pay_body(msgspec.structs.replace(_payment(), expires_at_s=NOW_S + 900), appid="wx1", mchid="1")
    assert body["time_expire"] == "2025-11-25T23:19:05+08:00"
    assert "time_expire" not in mapping.pay_body(_payment(), appid="wx1", mchid="1")


@pytest.mark.anyio
async def test_the_order_is_created_to_expire_and_closed_on_request(harness: hw.Harness) -> None:
    request = msgspec.structs.replace(_payment(), expires_at_s=int(time.time()) + 900)
    await harness.channel.create_payment(request, harness.credentials)
    assert harness.standin.payments[PAYMENT_ID]["time_expire"] == mapping.time_expire(request.expires_at_s)
    query = PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999, currency="CNY")
    assert await harness.channel.cancel_payment(query, harness.credentials) is None
    assert harness.standin.payments[PAYMENT_ID]["trade_state"] == "CLOSED"
    await harness.channel.cancel_payment(query, harness.credentials)  # closed already: done
    never = PaymentQuery(payment_id="pay_nothere000000000000000000000", provider_ref=None, amount=1, currency="CNY")
    await harness.channel.cancel_payment(never, harness.credentials)  # WeChat never had it: nothing to pay
    assert harness.standin.closes() == [PAYMENT_ID, PAYMENT_ID, never.payment_id]
    assert (await harness.channel.query_payment(query, harness.credentials)).status is PaymentStatus.CANCELED


@pytest.mark.anyio
async def test_closing_a_paid_order_says_it_was_paid(harness: hw.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.pay(PAYMENT_ID)
    with pytest.raises(ProviderDeclined) as paid:
        await harness.channel.cancel_payment(PaymentQuery(payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=1999,
                                                          currency="CNY"), harness.credentials)
    assert paid.value.provider_code == "ORDERPAID"


@pytest.mark.anyio
async def test_query_refund_by_out_refund_no(harness: hw.Harness) -> None:
    await harness.channel.create_payment(_payment(), harness.credentials)
    harness.standin.pay(PAYMENT_ID)
    refund = RefundRequest(refund_id="rfd_q", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID, amount=500, currency="CNY")
    made = await harness.channel.refund(refund, harness.credentials)
    query = RefundQuery(refund_id="rfd_q", payment_id=PAYMENT_ID, provider_ref=PAYMENT_ID,
                        provider_refund_ref=made.provider_refund_ref, amount=500, currency="CNY")
    assert (await harness.channel.query_refund(query, harness.credentials)).status == "pending"
    harness.standin.refunds["rfd_q"]["status"] = "SUCCESS"
    assert await harness.channel.query_refund(query, harness.credentials) == RefundResult(
        provider_refund_ref=made.provider_refund_ref, status="succeeded")
    never = msgspec.structs.replace(query, refund_id="rfd_never", provider_refund_ref=None)
    assert await harness.channel.query_refund(never, harness.credentials) == RefundResult(
        provider_refund_ref="rfd_never", status="failed", failure_code="refund_not_found")


@pytest.mark.anyio
@pytest.mark.parametrize(("raised", "expected"), [
    (httpx.ConnectError("refused"), ChannelUnreachable),
    (httpx.ConnectTimeout("connect timed out"), ChannelUnreachable),
    (httpx.ReadTimeout("read timed out"), ChannelTimeout),
])
async def test_transport_failures_are_unreachable_or_unknown(harness: hw.Harness, raised: Exception,
                                                             expected: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        channel = WechatPayChannel(public_url="https://apss.test", http=http)
        with pytest.raises(ChannelUnavailable) as caught:
            await channel.create_payment(_payment(), harness.credentials)
    assert type(caught.value) is expected
