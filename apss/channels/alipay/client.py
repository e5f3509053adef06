"""The Alipay Open Platform channel: RSA2-signed gateway calls and RSA2-verified notifies.

Flows (an order's `channel_options.flow`): `native`, `alipay.trade.precreate` (QR code, the
default; it expires after `timeout_express` minutes); `page`, `alipay.trade.page.pay` (redirect to
the desktop cashier; also metadata `alipay_flow=page`); `wap`, `alipay.trade.wap.pay` (redirect to
the mobile cashier); `app`, `alipay.trade.app.pay` (the signed order string the Alipay SDK takes,
as `sdk_params.order_string`). The last three expire at `time_expire`, Beijing time, and are
never sent by us: the payer's browser or the SDK carries the signed request to the gateway. Then
`alipay.trade.refund`, `alipay.trade.refund`, `alipay.trade.query`,
`alipay.trade.close` and `alipay.trade.fastpay.refund.query`. Every request is signed with the
app private key; every response's `<method>_response` object is verified, byte for byte as
received, with the Alipay public key.

Errors: not reached (connect error or connect timeout) -> ChannelUnreachable; no answer in time ->
ChannelTimeout; HTTP other than 200, an unreadable or unsigned answer, `20000` (service
unavailable) or `ACQ.SYSTEM_ERROR` -> ChannelUnavailable (unknown); any other signed business
failure (`40004` with its sub_code, `40002`...) -> ProviderDeclined with the sub_code.

provider_ref: create returns our payment id (= out_trade_no) because Alipay assigns its
`trade_no` only when the buyer scans or logs in; notifies and queries report the real trade_no
as provider_ref, so the core can record it then. refund and query always address the trade by
out_trade_no, which works before and after trade_no exists.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

import httpx
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apss.channels.alipay import mapping
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
    "AlipayChannel",
    "DEFAULT_API_BASE",
    "load_private_key",
    "load_public_key",
    "rsa2_sign",
    "rsa2_verify",
    "signed_query",
]

DEFAULT_API_BASE = "https://openapi.alipay.com/gateway.do"
_HTTP_TIMEOUT_S = 10.0
_NOTIFY_BYTES_MAX = 64 * 1024  # a trade notify is ~1-2 KiB; anything near this is not Alipay
_NOTIFY_FIELDS_MAX = 100
_RESPONSE_BYTES_MAX = 1024 * 1024
_SUBJECT_CHARS_MAX = 256  # Alipay's limit for biz_content.subject
_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gb18030", "gb2312": "gb18030", "gb18030": "gb18030"}
_TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
_TRADE_STATUS_ERROR = "ACQ.TRADE_STATUS_ERROR"
# Answers that mean "Alipay could not say" rather than "Alipay refused": the outcome is unknown.
_UNKNOWN_CODES = frozenset({"20000"})
_UNKNOWN_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"})


# --- keys and RSA2 ---------------------------------------------------------------------------


def _pem_or_der(text: str) -> tuple[bytes, bool]:
    """(bytes, is_pem): Alipay's console hands out keys as bare base64 without PEM armour."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode(), True
    try:
        return base64.b64decode("".join(stripped.split()), validate=True), False
    except (binascii.Error, ValueError) as exc:
        raise ValueError("neither PEM nor base64") from exc


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """PEM (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`) or bare base64 DER."""
    try:
        raw, is_pem = _pem_or_der(text)
        key = (serialization.load_pem_private_key if is_pem else serialization.load_der_private_key)(
            raw, None
        )
    except (ValueError, TypeError) as exc:
        # The message never quotes the key: it is a secret.
        raise ChannelUnavailable("alipay credentials: app_private_key is not a readable private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ChannelUnavailable("alipay credentials: app_private_key is not an RSA key")
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """PEM `BEGIN PUBLIC KEY` or the bare base64 SubjectPublicKeyInfo Alipay's console shows."""
    try:
        raw, is_pem = _pem_or_der(text)
        key = (serialization.load_pem_public_key if is_pem else serialization.load_der_public_key)(raw)
    except (ValueError, TypeError) as exc:
        raise ChannelUnavailable(
            "alipay credentials: alipay_public_key is not a readable public key"
        ) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ChannelUnavailable("alipay credentials: alipay_public_key is not an RSA key")
    return key


def rsa2_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """RSA2 = RSASSA-PKCS1-v1_5 over SHA-256, standard base64 (deterministic)."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def signed_query(params: Mapping[str, str]) -> str:
    """A signed request as one form-encoded string: sorted, `sign` last, values quote_plus'ed.
    The query of a page/wap cashier URL and the app SDK's order string (python-alipay-sdk's
    sign_data builds the same)."""
    ordered = sorted((key, value) for key, value in params.items() if key != "sign")
    return urlencode([*ordered, ("sign", params["sign"])])


def rsa2_verify(key: rsa.RSAPublicKey, message: bytes, sign: str) -> bool:
    try:
        signature = base64.b64decode(sign, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


class _Settings:
    """One call's credentials, keys loaded. Never repr'd with its contents."""

    __slots__ = ("app_id", "api_base", "_private_key_text", "_public_key_text")

    def __init__(self, credentials: Credentials) -> None:
        missing = [
            key for key in ("app_id", "app_private_key", "alipay_public_key") if not credentials.get(key)
        ]
        if missing:
            raise ChannelUnavailable(f"alipay credentials: {missing[0]} is not set")
        self.app_id = credentials["app_id"]
        self.api_base = credentials.get("api_base") or DEFAULT_API_BASE
        self._private_key_text = credentials["app_private_key"]
        self._public_key_text = credentials["alipay_public_key"]

    def __repr__(self) -> str:
        return f"_Settings(app_id={self.app_id!r}, api_base={self.api_base!r})"

    def private_key(self) -> rsa.RSAPrivateKey:
        return load_private_key(self._private_key_text)

    def public_key(self) -> rsa.RSAPublicKey:
        return load_public_key(self._public_key_text)


# --- the channel -----------------------------------------------------------------------------


class AlipayChannel:
    name = "alipay"
    test_only = False
    flows = mapping.FLOWS
    settings = {
        "app_id": Setting(secret=False), "app_private_key": Setting(secret=True),
        "alipay_public_key": Setting(secret=False), "api_base": Setting(secret=False, required=False),
    }

    def __init__(
        self, *, public_url: str, http: httpx.AsyncClient | None = None, clock: Clock | None = None
    ) -> None:
        self._public_url = public_url
        self._http = http if http is not None else httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S)
        self._clock = clock if clock is not None else SystemClock()

    def __repr__(self) -> str:  # credentials are per call and never stored; nothing secret here
        return f"AlipayChannel(public_url={self._public_url!r})"

    # --- requests ---

    def signed_params(
        self,
        settings: _Settings,
        *,
        method: str,
        biz_content: Mapping[str, str],
        extra: Mapping[str, str] = {},
    ) -> dict[str, str]:
        """The common parameters plus biz_content, with `sign` over all of them (sign_type too)."""
        params = {
            "app_id": settings.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": mapping.alipay_timestamp(self._clock.now_ms()),
            "version": "1.0",
            # Compact JSON with UTF-8 text as is (msgspec); Alipay parses it, we sign its exact text.
            "biz_content": msgspec.json.encode(dict(biz_content)).decode("utf-8"),
            **extra,
        }
        params = {key: value for key, value in params.items() if value}
        params["sign"] = rsa2_sign(
            settings.private_key(), mapping.request_sign_content(params).encode("utf-8")
        )
        assert all(params.values())
        return params

    async def _call(self, settings: _Settings, params: Mapping[str, str]) -> dict[str, object]:
        """POST a signed request; return the verified `<method>_response` object as a dict."""
        method = params["method"]
        try:
            response = await self._http.post(
                settings.api_base,
                content=urlencode(params).encode("ascii"),
                headers={"content-type": "application/x-www-form-urlencoded;charset=utf-8"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnreachable(f"alipay {method} could not connect ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(f"alipay {method} timed out; the outcome is unknown") from exc
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"alipay {method} failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise ChannelUnavailable(f"alipay {method} answered HTTP {response.status_code}")
        if len(response.content) > _RESPONSE_BYTES_MAX:
            raise ChannelUnavailable(f"alipay {method} answered more than {_RESPONSE_BYTES_MAX} bytes")
        return self._verified_response(settings, method, response.content)

    def _verified_response(self, settings: _Settings, method: str, body: bytes) -> dict[str, object]:
        try:
            text = body.decode("utf-8")
            document = json.loads(text)
            raw = mapping.raw_member(text, method.replace(".", "_") + "_response")
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChannelUnavailable(f"alipay {method} answered something that is not JSON") from exc
        if raw is None:
            # Gateway-level failures (bad app id, bad signature) come as `error_response`.
            error = document.get("error_response") if isinstance(document, dict) else None
            raise ChannelUnavailable(f"alipay {method} failed: {_describe_error(error)}")
        result = json.loads(raw)
        if not isinstance(result, dict):
            raise ChannelUnavailable(f"alipay {method} answered a {method}_response that is no object")
        sign = document.get("sign")
        if not isinstance(sign, str) or not rsa2_verify(settings.public_key(), raw.encode("utf-8"), sign):
            if result.get("code") != mapping.SUCCESS_CODE:
                # An unsigned failure is still a failure (never trusted for anything more).
                raise ChannelUnavailable(
                    f"alipay {method} failed (unsigned answer): {_describe_error(result)}"
                )
            raise ChannelUnavailable(f"alipay {method} answer is not signed by the alipay_public_key")
        return result

    @staticmethod
    def _decode(
        method: str, result: Mapping[str, object], kind: type[mapping.ResponseCommon]
    ) -> mapping.ResponseCommon:
        try:
            return msgspec.convert(result, kind)
        except msgspec.ValidationError as exc:
            raise ChannelUnavailable(f"alipay {method} answer has an unexpected shape: {exc}") from exc

    # --- Channel Protocol ---

    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        if request.currency != mapping.ALIPAY_CURRENCY:
            raise CurrencyNotSupported(f"alipay takes CNY only, not {request.currency}", param="currency")
        assert request.amount > 0, request.amount
        # The older way to ask for the cashier page, metadata alipay_flow=page, still works.
        flow = request.flow or ("page" if request.metadata.get("alipay_flow") == "page" else "native")
        if flow not in self.flows:  # checkout refuses such an order first
            raise flow_not_supported(self.name, f"the {flow} flow")
        settings = _Settings(credentials)
        biz_content = {
            "out_trade_no": request.payment_id,
            "total_amount": mapping.minor_to_decimal(request.amount, request.currency),
            "subject": (request.description or request.order_id)[:_SUBJECT_CHARS_MAX],
            "product_code": mapping.PRODUCT_CODES[flow],
        }
        if request.expires_at_s is not None:  # each API documents its own expiry field
            if flow == "native":
                biz_content["timeout_express"] = mapping.timeout_express(request.expires_at_s,
                                                                         now_s=self._clock.now_ms() // 1000)
            else:
                biz_content["time_expire"] = mapping.time_expire(request.expires_at_s)
        if flow == "wap" and request.return_url:
            biz_content["quit_url"] = request.return_url  # where a payer who gives up goes back to
        extra = {"notify_url": request.callback_url}
        if flow == "native":
            action = await self._precreate(settings, request, biz_content=biz_content, extra=extra)
        else:
            if flow in ("page", "wap"):
                extra["return_url"] = request.return_url or ""
            # Nothing is sent from here: the buyer's browser (page, wap) or the Alipay SDK in the
            # game's app carries the signed request to the gateway.
            query = signed_query(self.signed_params(settings, method=mapping.CLIENT_METHODS[flow],
                                                    biz_content=biz_content, extra=extra))
            action = (NextAction(type="sdk_params", params={"order_string": query}) if flow == "app"
                      else NextAction(type="redirect", url=f"{settings.api_base}?{query}"))
        return PaymentCreated(provider_ref=request.payment_id, status=PaymentStatus.REQUIRES_ACTION, next_action=action)

    async def _precreate(self, settings: _Settings, request: PaymentRequest, *, biz_content: Mapping[str, str],
                         extra: Mapping[str, str]) -> NextAction:
        params = self.signed_params(
            settings, method="alipay.trade.precreate", biz_content=biz_content, extra=extra
        )
        result = await self._call(settings, params)
        answer = self._decode("alipay.trade.precreate", result, mapping.PrecreateResponse)
        assert isinstance(answer, mapping.PrecreateResponse)
        _raise_unless_success("alipay.trade.precreate", answer)
        if answer.out_trade_no != request.payment_id or not answer.qr_code:
            raise ChannelUnavailable("alipay.trade.precreate answered for another trade or without a qr_code")
        return NextAction(type="qr_code", data=answer.qr_code)

    async def verify_callback(
        self, request: CallbackRequest, credentials: Credentials
    ) -> list[CallbackEvent]:
        """Verify the RSA2 sign first; then app_id; then convert. Alipay's notifies carry no
        signed timestamp (notify_time is informative only), so there is no staleness window:
        replays are absorbed by de-duplication on notify_id."""
        settings = _Settings(credentials)
        params = _parse_notify(request.body)
        _verify_notify(settings.public_key(), params)
        if params.get("app_id") != settings.app_id:
            raise CallbackRejected("the alipay notify is for another app_id")
        try:
            return mapping.notify_events(params)
        except ValueError as exc:
            raise CallbackRejected(f"the alipay notify is malformed: {exc}") from exc

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        # Exactly `success` stops Alipay's retries; anything else (conventionally `fail`) retries.
        return CallbackReply(
            status_code=200, body=b"success" if accepted else b"fail", media_type="text/plain"
        )

    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult:
        if request.currency != mapping.ALIPAY_CURRENCY:
            raise CurrencyNotSupported(f"alipay takes CNY only, not {request.currency}", param="currency")
        assert request.amount > 0, request.amount
        settings = _Settings(credentials)
        biz_content = {
            "out_trade_no": request.payment_id,
            "refund_amount": mapping.minor_to_decimal(request.amount, request.currency),
            # Alipay's idempotency key for refunds: a retry with the same one refunds once.
            "out_request_no": request.refund_id,
        }
        if request.reason:
            biz_content["refund_reason"] = request.reason[:256]
        params = self.signed_params(settings, method="alipay.trade.refund", biz_content=biz_content)
        answer = self._decode(
            "alipay.trade.refund", await self._call(settings, params), mapping.RefundResponse
        )
        assert isinstance(answer, mapping.RefundResponse)
        _raise_unless_success("alipay.trade.refund", answer)
        # fund_change=N also answers a retry of a refund already made: only a query can tell, so
        # it is `pending` (the refund notify or a later check settles it), never `failed`.
        status = "succeeded" if answer.fund_change == "Y" else "pending"
        return RefundResult(provider_refund_ref=request.refund_id, status=status)

    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        settings = _Settings(credentials)
        params = self.signed_params(
            settings, method="alipay.trade.query", biz_content={"out_trade_no": query.payment_id}
        )
        answer = self._decode("alipay.trade.query", await self._call(settings, params), mapping.QueryResponse)
        assert isinstance(answer, mapping.QueryResponse)
        if answer.sub_code == _TRADE_NOT_EXIST:
            # Alipay records a trade only once the buyer scans the QR code or logs in on the
            # cashier page: until then nobody can have paid, so the payment still awaits the payer.
            return PaymentReport(status=PaymentStatus.REQUIRES_ACTION)
        _raise_unless_success("alipay.trade.query", answer)
        if answer.out_trade_no and answer.out_trade_no != query.payment_id:
            raise ChannelUnavailable("alipay.trade.query answered for another trade")
        try:
            return mapping.query_report(answer)
        except ValueError as exc:
            raise ChannelUnavailable(f"alipay.trade.query answer has a bad amount: {exc}") from exc

    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """alipay.trade.close. A trade Alipay does not know (the QR was never scanned) can never be
        paid: closed. ACQ.TRADE_STATUS_ERROR means closed already or paid: the trade is read back,
        and a paid one is ProviderDeclined `trade_paid` (the late-payment policy's)."""
        settings = _Settings(credentials)
        params = self.signed_params(settings, method="alipay.trade.close", biz_content={"out_trade_no": query.payment_id})
        answer = self._decode("alipay.trade.close", await self._call(settings, params), mapping.CloseResponse)
        if answer.code == mapping.SUCCESS_CODE or answer.sub_code == _TRADE_NOT_EXIST:
            return
        if answer.sub_code != _TRADE_STATUS_ERROR:
            _raise_unless_success("alipay.trade.close", answer)
        report = await self.query_payment(query, credentials)
        if report.status is PaymentStatus.CANCELED:
            return
        if report.status is PaymentStatus.SUCCEEDED:
            raise ProviderDeclined(f"alipay trade {query.payment_id} was paid", provider_code="trade_paid")
        raise ChannelUnavailable(f"alipay.trade.close refused a trade that is {report.status.value}")

    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult:
        """alipay.trade.fastpay.refund.query by out_trade_no and our refund id (out_request_no)."""
        settings = _Settings(credentials)
        biz_content = {"out_trade_no": query.payment_id, "out_request_no": query.refund_id}
        params = self.signed_params(settings, method="alipay.trade.fastpay.refund.query", biz_content=biz_content)
        answer = self._decode("alipay.trade.fastpay.refund.query", await self._call(settings, params),
                              mapping.RefundQueryResponse)
        assert isinstance(answer, mapping.RefundQueryResponse)
        _raise_unless_success("alipay.trade.fastpay.refund.query", answer)
        return mapping.refund_query_result(answer, refund_id=query.refund_id)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        return mapping.parse_statement(data)


# --- helpers ---------------------------------------------------------------------------------


def _describe_error(error: object) -> str:
    if not isinstance(error, dict):
        return "no response object"
    parts = [f"{key}={error[key]}" for key in ("code", "msg", "sub_code", "sub_msg") if error.get(key)]
    return " ".join(parts) or "no error code"


def _raise_unless_success(method: str, answer: mapping.ResponseCommon) -> None:
    """A signed failure is Alipay's definite refusal, unless it says it could not tell."""
    if answer.code == mapping.SUCCESS_CODE:
        return
    message = f"alipay {method} failed: {_describe_error(msgspec.structs.asdict(answer))}"
    if answer.code in _UNKNOWN_CODES or answer.sub_code in _UNKNOWN_SUB_CODES:
        raise ChannelUnavailable(message)
    raise ProviderDeclined(message, provider_code=answer.sub_code or answer.code)


def _parse_notify(body: bytes) -> dict[str, str]:
    """Form-decode the notify in its declared charset; duplicate keys are refused as ambiguous."""
    if len(body) > _NOTIFY_BYTES_MAX:
        raise CallbackRejected(f"the alipay notify is larger than {_NOTIFY_BYTES_MAX} bytes")
    try:
        # latin-1 never fails: a first pass only to read the (ASCII) charset parameter.
        text = body.decode("latin-1")
        first = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=_NOTIFY_FIELDS_MAX))
        charset = _CHARSETS.get(first.get("charset", "utf-8").lower())
        if charset is None:
            raise CallbackRejected("the alipay notify declares an unsupported charset")
        pairs = parse_qsl(
            body.decode(charset),
            keep_blank_values=True,
            strict_parsing=True,
            encoding=charset,
            errors="strict",
            max_num_fields=_NOTIFY_FIELDS_MAX,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise CallbackRejected("the alipay notify is not a form in its charset") from exc
    params = dict(pairs)
    if len(params) != len(pairs):
        raise CallbackRejected("the alipay notify repeats a parameter")
    return params


def _verify_notify(key: rsa.RSAPublicKey, params: Mapping[str, str]) -> None:
    """RSA2 over the sorted params without sign/sign_type: skip-empty first, then keep-empty."""
    sign = params.get("sign", "")
    if not sign:
        raise CallbackRejected("the alipay notify has no sign")
    if params.get("sign_type") != "RSA2":
        # RSA (SHA-1) is legacy; a missing sign_type is not what Alipay sends.
        raise CallbackRejected("the alipay notify is not signed with RSA2")
    charset = _CHARSETS[params.get("charset", "utf-8").lower()]
    for skip_empty in (True, False):
        content = mapping.notify_sign_content(params, skip_empty=skip_empty)
        if rsa2_verify(key, content.encode(charset), sign):
            return
    raise CallbackRejected("the alipay notify sign does not verify")
