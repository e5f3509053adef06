"""WeChat Pay API v3: request signing, response and callback verification, HTTP calls.

Flows (an order's `channel_options.flow`): `native` (the default: `code_url`, a QR code), `jsapi`
(inside WeChat or a mini-program: a prepay_id for the payer's openid, handed to the page as the
signed `paySign` parameters), `app` (a prepay_id for the Open SDK's PayReq, signed `sign`) and
`h5` (a mobile browser outside WeChat: a redirect to `h5_url`). The client parameters are signed
with the merchant key like a request: RSA-SHA256 over their lines, each followed by LF.

Public-key mode only: responses and callbacks are verified with the WeChat Pay public key
(`platform_public_key`, id `platform_public_key_id` = `PUB_KEY_ID_...`); the older platform
certificate mode (serial numbers, /v3/certificates downloads) is not spoken.

`provider_ref` is our `out_trade_no` (= payment_id): WeChat's `transaction_id` exists only after
the payer paid, and every v3 call used here (query, refund, close) takes `out_trade_no`, so the
transaction_id is never needed; the neutral types have no field for it.

Native orders expire at `time_expire` (the reservation end); the closer closes them earlier with
`POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close` (204). Refunds are queried with
`GET /v3/refund/domestic/refunds/{out_refund_no}`.

Errors: not reached (connect error or connect timeout) -> ChannelUnreachable; no answer in time ->
ChannelTimeout; a 4xx with WeChat's `code` -> ProviderDeclined (provider_code = the code), except
429 FREQUENCY_LIMITED; 5xx, 429 and answers whose signature does not verify -> ChannelUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from apss.channels.base import (
    CallbackEvent,
    CallbackReply,
    CallbackRequest,
    Credentials,
    NextAction,
    PaymentCreated,
    PaymentQuery,
    PaymentReport,
    PaymentRequest,
    RefundQuery,
    RefundRequest,
    RefundResult,
    Setting,
    StatementLine,
    flow_not_supported,
)
from apss.channels.wechatpay import mapping
from apss.clock import Clock, SystemClock
from apss.domain.payments import PaymentStatus
from apss.errors import (
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    CurrencyNotSupported,
    ProviderDeclined,
)

__all__ = [
    "AUTH_SCHEMA",
    "WechatPayChannel",
    "build_authorization",
    "decrypt_resource",
    "sign_lines",
    "verify_signature",
]

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
DEFAULT_API_BASE = "https://api.mch.weixin.qq.com"
# WeChat's sample code rejects callbacks and answers whose timestamp is more than 5 minutes off.
TIMESTAMP_TOLERANCE_S = 300
# WeChat's "verify signature" probes carry deliberately wrong signatures with this prefix.
_PROBE_SIGNATURE_PREFIX = "WECHATPAY/SIGNTEST/"
_HTTP_TIMEOUT_S = 10.0
_BODY_BYTES_MAX = 64 * 1024  # callbacks are ~1 KiB; anything this large is not WeChat's
_APIV3_KEY_BYTES = 32
# Close-order refusals that mean there is nothing left to close.
_CLOSED_ALREADY = frozenset({"ORDER_CLOSED", "ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS"})

_T = TypeVar("_T")


def _new_nonce() -> str:
    # 32 upper-case hex characters, as wechatpayv3 makes them (uuid4 without dashes).
    return secrets.token_hex(16).upper()


def sign_lines(private_key: rsa.RSAPrivateKey, *lines: str) -> str:
    """WeChat's merchant signature: base64 RSA-SHA256 over the lines, each followed by LF."""
    assert lines
    message = "".join(f"{line}\n" for line in lines).encode()
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), SHA256())).decode()


def build_authorization(
    *, method: str, path: str, body: str, timestamp_s: int, nonce: str, mchid: str, serial_no: str,
    private_key: rsa.RSAPrivateKey,
) -> str:
    """The Authorization header: RSA-SHA256 over `METHOD\\nPATH?QUERY\\nTS\\nNONCE\\nBODY\\n`."""
    assert path.startswith("/"), path
    assert method in ("GET", "POST"), method
    signature = sign_lines(private_key, method, path, str(timestamp_s), nonce, body)
    return (
        f'{AUTH_SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp_s}",serial_no="{serial_no}"'
    )


def verify_signature(
    *, public_key: rsa.RSAPublicKey, public_key_id: str, headers: Mapping[str, str], body: bytes,
    now_s: int,
) -> str | None:
    """Check a WeChat-signed message (callback or answer); None if valid, else the reason.

    `headers` have lower-case names. The message is `timestamp\\nnonce\\nbody\\n` over the raw body.
    """
    signature = headers.get("wechatpay-signature", "")
    timestamp = headers.get("wechatpay-timestamp", "")
    nonce = headers.get("wechatpay-nonce", "")
    serial = headers.get("wechatpay-serial", "")
    signature_type = headers.get("wechatpay-signature-type")
    if not (signature and timestamp and nonce and serial):
        return "signature headers missing"
    if signature.startswith(_PROBE_SIGNATURE_PREFIX):
        return "signature probe"
    if signature_type is not None and signature_type != AUTH_SCHEMA:
        return "unsupported signature type"
    # Compared in constant time out of habit; the key id is not secret.
    if not hmac.compare_digest(serial.encode(), public_key_id.encode()):
        return "signed with another key than the configured WeChat Pay public key"
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
        return "timestamp outside the tolerance"
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        public_key.verify(raw_signature, message, padding.PKCS1v15(), SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return "signature invalid"
    return None


def decrypt_resource(resource: mapping.Resource, *, apiv3_key: str) -> bytes:
    """AEAD_AES_256_GCM under the APIv3 key; ValueError when the tag does not match."""
    if resource.algorithm != "AEAD_AES_256_GCM":
        raise ValueError(f"unsupported resource algorithm {resource.algorithm!r}")
    key = apiv3_key.encode()
    assert len(key) == _APIV3_KEY_BYTES
    try:
        data = base64.b64decode(resource.ciphertext, validate=True)
        return AESGCM(key).decrypt(resource.nonce.encode(), data, resource.associated_data.encode())
    except (InvalidTag, binascii.Error) as exc:
        raise ValueError("resource does not decrypt under the APIv3 key") from exc


def _pem(text: str, kind: str) -> bytes:
    # Like wechatpayv3, accept the bare base64 body of a key as well as a full PEM block.
    text = text.strip()
    if not text.startswith("-----BEGIN"):
        text = f"-----BEGIN {kind}-----\n{text}\n-----END {kind}-----"
    return text.encode()


@functools.lru_cache(maxsize=64)
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    key = load_pem_private_key(_pem(pem, "PRIVATE KEY"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return key


@functools.lru_cache(maxsize=64)
def _public_key(pem: str) -> rsa.RSAPublicKey:
    key = load_pem_public_key(_pem(pem, "PUBLIC KEY"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key


class _Settings:
    """One merchant's WeChat Pay settings, keys loaded. Its repr shows no secret."""

    __slots__ = ("mchid", "appid", "app_appid", "jsapi_appid", "serial_no", "private_key", "apiv3_key",
                 "public_key", "public_key_id", "api_base")

    def __init__(self, credentials: Credentials, *, outgoing: bool) -> None:
        def need(name: str) -> str:
            value = credentials.get(name, "")
            if not value:
                raise ChannelUnavailable(f"wechatpay setting '{name}' is missing", code="channel_misconfigured")
            return value

        self.mchid = need("mchid")
        self.public_key_id = need("platform_public_key_id")
        self.apiv3_key = need("apiv3_key")
        if len(self.apiv3_key.encode()) != _APIV3_KEY_BYTES:
            raise ChannelUnavailable("wechatpay setting 'apiv3_key' must be 32 ASCII characters",
                                     code="channel_misconfigured")
        self.public_key = self._load(_public_key, need("platform_public_key"), "platform_public_key")
        self.api_base = (credentials.get("api_base") or DEFAULT_API_BASE).rstrip("/")
        self.appid = credentials.get("appid", "")
        self.serial_no = credentials.get("merchant_serial_no", "")
        self.private_key: rsa.RSAPrivateKey | None = None
        if outgoing:  # callbacks need neither our private key nor our appid
            self.appid = need("appid")
            self.serial_no = need("merchant_serial_no")
            self.private_key = self._load(_private_key, need("merchant_private_key"), "merchant_private_key")
        # The APP flow pays with the mobile app's appid (WeChat Open Platform), JSAPI with the
        # official account's or mini-program's; each falls back to `appid`.
        self.app_appid = credentials.get("app_appid") or self.appid
        self.jsapi_appid = credentials.get("jsapi_appid") or self.appid

    def appid_for(self, flow: str) -> str:
        """The appid an order of `flow` is placed with (and the client SDK's parameters name)."""
        return {"app": self.app_appid, "jsapi": self.jsapi_appid}.get(flow, self.appid)

    @staticmethod
    def _load(loader: Any, pem: str, name: str) -> Any:
        try:
            return loader(pem)
        except (ValueError, TypeError):
            # `from None`: the loader's message could quote key material.
            raise ChannelUnavailable(f"wechatpay setting '{name}' is not a valid RSA key",
                                     code="channel_misconfigured") from None

    def __repr__(self) -> str:
        return f"_Settings(mchid={self.mchid!r}, api_base={self.api_base!r})"


class WechatPayChannel:
    """WeChat Pay v3 Native, JSAPI, APP and H5 pay, refunds, queries and trade bills."""

    name = "wechatpay"
    test_only = False
    flows = mapping.FLOWS
    settings = {
        "mchid": Setting(secret=False), "appid": Setting(secret=False),
        "app_appid": Setting(secret=False, required=False), "jsapi_appid": Setting(secret=False, required=False),
        "merchant_private_key": Setting(secret=True), "merchant_serial_no": Setting(secret=False),
        "apiv3_key": Setting(secret=True), "platform_public_key": Setting(secret=False),
        "platform_public_key_id": Setting(secret=False), "api_base": Setting(secret=False, required=False),
    }

    def __init__(self, *, public_url: str, http: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        self._public_url = public_url.rstrip("/")
        self._http = http if http is not None else httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S)
        self._clock = clock if clock is not None else SystemClock()

    def __repr__(self) -> str:
        return f"WechatPayChannel(public_url={self._public_url!r})"

    # ---- flows ----

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        if request.currency != mapping.CURRENCY:
            raise CurrencyNotSupported(f"wechatpay takes {mapping.CURRENCY} only, not {request.currency}",
                                       param="currency")
        flow = request.flow or "native"
        if flow not in self.flows:  # checkout refuses such an order first
            raise flow_not_supported(self.name, f"the {flow} flow")
        settings = _Settings(credentials, outgoing=True)
        body = mapping.pay_body(request, appid=settings.appid_for(flow), mchid=settings.mchid, flow=flow)
        return PaymentCreated(provider_ref=request.payment_id, status=PaymentStatus.REQUIRES_ACTION,
                              next_action=await self._place(settings, flow, body, return_url=request.return_url))

    async def _place(self, settings: _Settings, flow: str, body: dict[str, Any], *,
                     return_url: str | None) -> NextAction:
        """Place the order in its flow; what the payer's side is given. WeChat answers the same
        out_trade_no with the same parameters with the same code_url / prepay_id / h5_url, so a
        retry after a timeout finds the first payment."""
        path = mapping.PAY_PATHS[flow]
        if flow == "native":
            native = await self._call(settings, "POST", path, body, mapping.NativePayResponse)
            return NextAction(type="qr_code", data=native.code_url)
        if flow == "h5":
            h5 = await self._call(settings, "POST", path, body, mapping.H5PayResponse)
            try:
                return NextAction(type="redirect", url=mapping.h5_redirect_url(h5.h5_url, return_url))
            except ValueError as exc:
                raise ChannelUnavailable(f"wechatpay answered an unusable h5_url: {exc}") from exc
        prepay = await self._call(settings, "POST", path, body, mapping.PrepayResponse)
        if not prepay.prepay_id:
            raise ChannelUnavailable("wechatpay answered no prepay_id")
        assert settings.private_key is not None
        params, signature_name, lines = mapping.client_params(
            flow, appid=settings.appid_for(flow), mchid=settings.mchid, prepay_id=prepay.prepay_id,
            timestamp_s=self._clock.now_ms() // 1000, nonce=_new_nonce())
        params[signature_name] = sign_lines(settings.private_key, *lines)
        return NextAction(type="sdk_params", params=params)

    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        settings = _Settings(credentials, outgoing=False)
        if len(request.body) > _BODY_BYTES_MAX:
            raise CallbackRejected("wechatpay callback body too large")
        # Signature, key id and timestamp first: nothing of the body is read before they pass.
        reason = verify_signature(public_key=settings.public_key, public_key_id=settings.public_key_id,
                                  headers=request.headers, body=request.body, now_s=request.now_s)
        if reason is not None:
            raise CallbackRejected(f"wechatpay callback rejected: {reason}")
        try:
            envelope = msgspec.json.decode(request.body, type=mapping.Notification)
            if envelope.resource_type != "encrypt-resource":
                raise ValueError(f"resource_type {envelope.resource_type!r}")
            plaintext = decrypt_resource(envelope.resource, apiv3_key=settings.apiv3_key)
            return _events(envelope, plaintext, mchid=settings.mchid)
        except (msgspec.DecodeError, ValueError) as exc:
            raise CallbackRejected(f"wechatpay callback rejected: {exc}") from exc

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        if accepted:
            return CallbackReply(status_code=204)
        body = json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False).encode()
        return CallbackReply(status_code=400, body=body, media_type="application/json")

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        if request.currency != mapping.CURRENCY:
            raise CurrencyNotSupported(f"wechatpay refunds {mapping.CURRENCY} only", param="currency")
        settings = _Settings(credentials, outgoing=True)
        # WeChat needs the original order total, which RefundRequest does not carry: ask for it.
        txn = await self._transaction(settings, request.payment_id)
        if txn.amount is None or txn.amount.total is None:
            raise ChannelUnavailable("wechatpay did not report the payment's total")
        # RefundRequest has no callback_url yet; without notify_url WeChat sends refund notices
        # to the URL configured on the merchant platform (results are also found by query).
        notify_url = getattr(request, "callback_url", None)
        body = mapping.refund_body(request, total=txn.amount.total, notify_url=notify_url)
        answer = await self._call(settings, "POST", "/v3/refund/domestic/refunds", body,
                                  mapping.RefundResponse)
        if answer.out_refund_no != request.refund_id:
            raise ChannelUnavailable("wechatpay answered for another refund")
        return mapping.refund_result(answer)

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        settings = _Settings(credentials, outgoing=True)
        txn = await self._transaction(settings, query.payment_id)
        return mapping.payment_report(txn)

    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """Close the order (204). An order WeChat does not have can never be paid: closed too; a
        paid one is ProviderDeclined ORDERPAID (the late-payment policy's)."""
        settings = _Settings(credentials, outgoing=True)
        path = f"/v3/pay/transactions/out-trade-no/{quote(query.payment_id, safe='')}/close"
        try:
            response = await self._send(settings, "POST", path, json.dumps({"mchid": settings.mchid}))
        except ProviderDeclined as exc:
            if exc.provider_code in _CLOSED_ALREADY:
                return
            raise
        self._verify_answer(settings, response)
        if response.status_code != 204:
            raise ChannelUnavailable(f"wechatpay answered {response.status_code} to close order, not 204")

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        settings = _Settings(credentials, outgoing=True)
        path = f"/v3/refund/domestic/refunds/{quote(query.refund_id, safe='')}"
        try:
            answer = await self._call(settings, "GET", path, None, mapping.RefundResponse)
        except ProviderDeclined as exc:
            if exc.provider_code in ("RESOURCE_NOT_EXISTS", "ORDER_NOT_EXIST"):  # WeChat made no such refund
                return RefundResult(provider_refund_ref=query.provider_refund_ref or query.refund_id, status="failed",
                                    failure_code="refund_not_found")
            raise
        if answer.out_refund_no != query.refund_id:
            raise ChannelUnavailable("wechatpay answered for another refund")
        return mapping.refund_result(answer)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        return mapping.parse_trade_bill(data)

    async def fetch_trade_bill(self, *, bill_date: str, credentials: Credentials) -> bytes:
        """The day's trade bill (bill_type=ALL), uncompressed, checked against WeChat's SHA1.

        Not part of the Channel Protocol yet: the bytes it returns feed parse_statement.
        """
        assert len(bill_date) == 10, "bill_date is YYYY-MM-DD"
        settings = _Settings(credentials, outgoing=True)
        query = urlencode({"bill_date": bill_date, "bill_type": "ALL", "tar_type": "GZIP"})
        ticket = await self._call(settings, "GET", f"/v3/bill/tradebill?{query}", None, mapping.BillDownload)
        # The download must go to WeChat's own host: it carries our signed Authorization.
        if not ticket.download_url.startswith(settings.api_base + "/"):
            raise ChannelUnavailable("wechatpay bill download_url points to another host")
        path = ticket.download_url[len(settings.api_base):]
        raw = await self._send(settings, "GET", path, "")
        data = mapping.bill_text(raw.content).encode()
        if ticket.hash_type != "SHA1" or not hmac.compare_digest(
                hashlib.sha1(data).hexdigest(), ticket.hash_value.lower()):
            raise ChannelUnavailable("wechatpay trade bill does not match its hash")
        return data

    # ---- HTTP ----

    async def _transaction(self, settings: _Settings, out_trade_no: str) -> mapping.Transaction:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={settings.mchid}"
        txn = await self._call(settings, "GET", path, None, mapping.Transaction)
        if txn.out_trade_no != out_trade_no:
            raise ChannelUnavailable("wechatpay answered for another payment")
        return txn

    async def _call(self, settings: _Settings, method: str, path: str, payload: dict[str, Any] | None,
                    answer_type: type[_T]) -> _T:
        # json.dumps' defaults (ASCII escapes, ", " separators) are what wechatpayv3 and requests
        # send, so our bodies and signatures can be compared with the SDK's byte for byte.
        body = json.dumps(payload) if payload is not None else ""
        response = await self._send(settings, method, path, body)
        self._verify_answer(settings, response)
        try:
            return msgspec.json.decode(response.content, type=answer_type)
        except msgspec.DecodeError as exc:
            raise ChannelUnavailable(f"wechatpay answer malformed: {exc}") from exc

    def _verify_answer(self, settings: _Settings, response: httpx.Response) -> None:
        reason = verify_signature(public_key=settings.public_key, public_key_id=settings.public_key_id,
                                  headers=response.headers, body=response.content,
                                  now_s=self._clock.now_ms() // 1000)
        if reason is not None:
            raise ChannelUnavailable(f"wechatpay answer not trusted: {reason}", code="channel_signature_invalid")

    async def _send(self, settings: _Settings, method: str, path: str, body: str) -> httpx.Response:
        assert settings.private_key is not None
        authorization = build_authorization(
            method=method, path=path, body=body, timestamp_s=self._clock.now_ms() // 1000,
            nonce=_new_nonce(), mchid=settings.mchid, serial_no=settings.serial_no,
            private_key=settings.private_key,
        )
        headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Wechatpay-Serial": settings.public_key_id,
            "User-Agent": "apss-wechatpay",
        }
        try:
            response = await self._http.request(method, settings.api_base + path, headers=headers,
                                                content=body.encode())
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnreachable(f"wechatpay could not be reached: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(f"wechatpay did not answer {method} {path.split('?')[0]} in time") from exc
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"wechatpay unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise _error(response)
        return response


def _error(response: httpx.Response) -> ChannelUnavailable | ProviderDeclined:
    """WeChat's `{"code", "message"}` error: a 4xx with a code is a definite refusal
    (ProviderDeclined), anything else may have been done (ChannelUnavailable); both keep the code
    as `provider_code`. WeChat's message is cut short: it describes the request, never a secret."""
    try:
        body = msgspec.json.decode(response.content, type=mapping.ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = mapping.ErrorBody()
    message = f"wechatpay answered {response.status_code} {body.code}: {body.message[:200]}"
    if 400 <= response.status_code < 500 and response.status_code != 429 and body.code:
        return ProviderDeclined(message, provider_code=body.code)
    error = ChannelUnavailable(message)
    error.provider_code = body.code  # type: ignore[attr-defined]
    return error


def _events(envelope: mapping.Notification, plaintext: bytes, *, mchid: str) -> list[CallbackEvent]:
    family = envelope.event_type.partition(".")[0]
    if family == "TRANSACTION":
        txn = msgspec.json.decode(plaintext, type=mapping.Transaction)
        _check_mchid(txn.mchid, mchid)
        return mapping.transaction_events(envelope.id, txn)
    if family == "REFUND":
        notice = msgspec.json.decode(plaintext, type=mapping.RefundNotice)
        _check_mchid(notice.mchid, mchid)
        return mapping.refund_events(envelope.id, notice)
    return []  # other notifications (e.g. complaints): acknowledged, nothing applied


def _check_mchid(found: str | None, expected: str) -> None:
    if found is not None and found != expected:
        raise ValueError("callback for another merchant id")
