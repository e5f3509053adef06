"""Pure conversion between WeChat Pay API v3 wire types and APSS's neutral types.

No I/O here. Every WeChat status is listed explicitly, with an `unknown` fallback that never
guesses (PaymentStatus.UNKNOWN, a pending refund, or no callback event).
Wire shapes: reference/payment-protocols.md section 3 and the WeChat Pay v3 API docs.
"""

from __future__ import annotations

import gzip
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from apss.channels.base import (
    CallbackEvent,
    PaymentReport,
    PaymentRequest,
    RefundRequest,
    RefundResult,
    StatementLine,
)
from apss.domain.money import CURRENCY_EXPONENTS
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import ChannelUnavailable

__all__ = [
    "CURRENCY",
    "Notification",
    "RefundNotice",
    "RefundResponse",
    "Resource",
    "Transaction",
    "callback_kind_for_status",
    "bill_text",
    "decimal_to_minor",
    "FLOWS",
    "PAY_PATHS",
    "client_params",
    "h5_redirect_url",
    "pay_body",
    "parse_trade_bill",
    "payment_report",
    "payment_status",
    "refund_body",
    "time_expire",
    "refund_events",
    "refund_result",
    "refund_status",
    "transaction_events",
]

# Native pay through the domestic v3 API settles in CNY only (cross-border merchants use the
# separate global API, which this adapter does not speak).
CURRENCY = "CNY"

# WeChat limits `description` to 127 characters; longer text is refused with PARAM_ERROR.
_DESCRIPTION_CHARS_MAX = 127
# WeChat limits the refund `reason` to 80 characters.
_REFUND_REASON_CHARS_MAX = 80


# ---- wire types (WeChat adds fields over time, so unknown fields are tolerated) ----


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Amount(_Wire, kw_only=True):
    total: int | None = None
    payer_total: int | None = None
    currency: str | None = None
    payer_currency: str | None = None


class Transaction(_Wire, kw_only=True):
    """A transaction: the query answer and the decrypted TRANSACTION.* callback resource."""

    mchid: str | None = None
    appid: str | None = None
    out_trade_no: str
    transaction_id: str | None = None  # exists only once the payer has paid
    trade_type: str | None = None
    trade_state: str
    trade_state_desc: str | None = None
    success_time: str | None = None
    amount: Amount | None = None


class RefundAmount(_Wire, kw_only=True):
    total: int
    refund: int
    payer_total: int | None = None
    payer_refund: int | None = None
    currency: str | None = None  # absent in refund notices: domestic refunds are CNY


class RefundNotice(_Wire, kw_only=True):
    """The decrypted REFUND.* callback resource."""

    mchid: str | None = None
    out_trade_no: str
    transaction_id: str | None = None
    out_refund_no: str
    refund_id: str
    refund_status: str
    success_time: str | None = None
    amount: RefundAmount


class RefundResponse(_Wire, kw_only=True):
    """The answer to POST /v3/refund/domestic/refunds (and to a refund query)."""

    refund_id: str
    out_refund_no: str
    out_trade_no: str | None = None
    status: str
    amount: RefundAmount | None = None


class NativePayResponse(_Wire, kw_only=True):
    code_url: str


class PrepayResponse(_Wire, kw_only=True):
    """The answer to a JSAPI or APP order: the prepay_id the payer's client SDK pays."""

    prepay_id: str


class H5PayResponse(_Wire, kw_only=True):
    h5_url: str


class Resource(_Wire, kw_only=True):
    original_type: str | None = None
    algorithm: str
    ciphertext: str
    associated_data: str = ""
    nonce: str


class Notification(_Wire, kw_only=True):
    """The callback envelope; only `resource` is encrypted."""

    id: str
    create_time: str | None = None
    event_type: str
    resource_type: str
    summary: str | None = None
    resource: Resource


class ErrorBody(_Wire, kw_only=True):
    code: str = "UNKNOWN"
    message: str = ""


class BillDownload(_Wire, kw_only=True):
    download_url: str
    hash_type: str
    hash_value: str


# ---- statuses ----

# trade_state -> neutral status. REFUND means "paid, then (partly) refunded": the payment itself
# succeeded; refunds are tracked on their own. CLOSED (closed unpaid) and REVOKED (micropay
# reversed) leave nothing to pay; PAYERROR is a failed micropay attempt.
_TRADE_STATES: dict[str, PaymentStatus] = {
    "SUCCESS": PaymentStatus.SUCCEEDED,
    "REFUND": PaymentStatus.SUCCEEDED,
    "NOTPAY": PaymentStatus.REQUIRES_ACTION,
    "USERPAYING": PaymentStatus.PROCESSING,
    "CLOSED": PaymentStatus.CANCELED,
    "REVOKED": PaymentStatus.CANCELED,
    "PAYERROR": PaymentStatus.FAILED,
}

_REFUND_STATUSES: dict[str, Literal["pending", "succeeded", "failed"]] = {
    "SUCCESS": "succeeded",
    "PROCESSING": "pending",
    "CLOSED": "failed",
    "ABNORMAL": "failed",  # the payer's card/account could not take it; needs manual handling
}


def payment_status(trade_state: str) -> PaymentStatus:
    return _TRADE_STATES.get(trade_state, PaymentStatus.UNKNOWN)


def refund_status(status: str) -> Literal["pending", "succeeded", "failed"]:
    # An unknown refund status is "not known yet": pending, never a guessed success or failure.
    return _REFUND_STATUSES.get(status, "pending")


def callback_kind_for_status(status: PaymentStatus) -> CallbackKind | None:
    """The event a transaction callback in this status means; None: acknowledge, apply nothing."""
    if status is PaymentStatus.SUCCEEDED:
        return CallbackKind.PAYMENT_SUCCEEDED
    if status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        return CallbackKind.PAYMENT_FAILED
    return None  # requires_action, processing, unknown: nothing final to apply


# ---- requests ----


_BEIJING = timezone(timedelta(hours=8))


def time_expire(expires_at_s: int) -> str:
    """v3's `time_expire`: RFC 3339 with an offset, in Beijing time (2018-06-08T10:34:56+08:00)."""
    assert expires_at_s > 0
    return datetime.fromtimestamp(expires_at_s, tz=_BEIJING).isoformat()


# The flows (channel_options.flow) and where each order is placed. Native is the default.
PAY_PATHS: dict[str, str] = {
    "native": "/v3/pay/transactions/native",  # code_url, shown as a QR code
    "jsapi": "/v3/pay/transactions/jsapi",  # prepay_id for WeixinJSBridge / wx.requestPayment
    "app": "/v3/pay/transactions/app",  # prepay_id for the Open SDK's PayReq
    "h5": "/v3/pay/transactions/h5",  # h5_url, opened in the payer's mobile browser
}
FLOWS = frozenset(PAY_PATHS)
# h5_info.type: "Wap" is a mobile web page (the other values, iOS and Android, name native apps
# that open the page, and are paid with APP instead).
_H5_TYPE = "Wap"


def pay_body(request: PaymentRequest, *, appid: str, mchid: str, flow: str = "native") -> dict[str, Any]:
    """POST /v3/pay/transactions/{flow}; keys in wechatpayv3's order so bodies match byte for
    byte. `time_expire` is the reservation end: WeChat refuses the payer after it."""
    assert request.currency == CURRENCY, request.currency
    assert request.amount > 0 and flow in FLOWS, flow
    body: dict[str, Any] = {
        "notify_url": request.callback_url,
        "description": request.description[:_DESCRIPTION_CHARS_MAX] or request.payment_id,
        "out_trade_no": request.payment_id,
        "amount": {"total": request.amount, "currency": CURRENCY},
    }
    if flow == "jsapi":
        assert request.openid, "checkout refuses jsapi without an openid"
        body["payer"] = {"openid": request.openid}
    if flow == "h5":
        assert request.payer_ip, "checkout refuses h5 without the payer's ip"
        body["scene_info"] = {"payer_client_ip": request.payer_ip, "h5_info": {"type": _H5_TYPE}}
    if request.expires_at_s is not None:
        body["time_expire"] = time_expire(request.expires_at_s)
    body["appid"] = appid
    body["mchid"] = mchid
    return body


def client_params(flow: str, *, appid: str, mchid: str, prepay_id: str, timestamp_s: int,
                  nonce: str) -> tuple[dict[str, str], str, tuple[str, ...]]:
    """What the payer's client SDK takes for a prepay_id, unsigned: (params, the name of the
    signature parameter, the lines the merchant key signs, each followed by LF when signed).

    jsapi (WeixinJSBridge getBrandWCPayRequest, mini-programs' wx.requestPayment): appId,
    timeStamp, nonceStr, package=prepay_id=..., signType=RSA, paySign over appId, timeStamp,
    nonceStr, package. app (the Open SDK's PayReq): appid, partnerid (the mchid), prepayid,
    package=Sign=WXPay, noncestr, timestamp, sign over appid, timestamp, noncestr, prepayid.
    """
    assert prepay_id and timestamp_s > 0 and nonce
    timestamp = str(timestamp_s)
    if flow == "jsapi":
        package = f"prepay_id={prepay_id}"
        params = {"appId": appid, "timeStamp": timestamp, "nonceStr": nonce, "package": package, "signType": "RSA"}
        return params, "paySign", (appid, timestamp, nonce, package)
    assert flow == "app", flow
    params = {"appid": appid, "partnerid": mchid, "prepayid": prepay_id, "package": "Sign=WXPay",
              "noncestr": nonce, "timestamp": timestamp}
    return params, "sign", (appid, timestamp, nonce, prepay_id)


def h5_redirect_url(h5_url: str, return_url: str | None) -> str:
    """Where the payer's browser goes: the h5_url, with WeChat's `redirect_url` (URL-encoded,
    as WeChat asks) when the order has a return_url, so the payer comes back after paying."""
    if not h5_url.startswith("https://") and not h5_url.startswith("http://"):
        raise ValueError("an h5_url is a web address")
    if not return_url:
        return h5_url
    separator = "&" if "?" in h5_url else "?"
    return f"{h5_url}{separator}redirect_url={quote(return_url, safe='')}"


def refund_body(request: RefundRequest, *, total: int, notify_url: str | None) -> dict[str, Any]:
    """POST /v3/refund/domestic/refunds; keys in wechatpayv3's order (see native_pay_body)."""
    assert 0 < request.amount <= total, (request.amount, total)
    body: dict[str, Any] = {}
    if notify_url:
        body["notify_url"] = notify_url
    body["out_refund_no"] = request.refund_id
    body["amount"] = {"refund": request.amount, "total": total, "currency": CURRENCY}
    body["out_trade_no"] = request.payment_id
    if request.reason:
        body["reason"] = request.reason[:_REFUND_REASON_CHARS_MAX]
    return body


# ---- answers and callbacks ----


def payment_report(txn: Transaction) -> PaymentReport:
    status = payment_status(txn.trade_state)
    amount = txn.amount
    failed = status in (PaymentStatus.FAILED, PaymentStatus.CANCELED)
    return PaymentReport(
        status=status,
        provider_ref=txn.out_trade_no,
        amount=amount.total if amount else None,
        currency=(amount.currency or CURRENCY).upper() if amount and amount.total is not None else None,
        failure_code=txn.trade_state if failed else None,
    )


def refund_result(answer: RefundResponse) -> RefundResult:
    status = refund_status(answer.status)
    return RefundResult(
        provider_refund_ref=answer.refund_id,
        status=status,
        failure_code=answer.status if status == "failed" else None,
    )


def transaction_events(event_id: str, txn: Transaction) -> list[CallbackEvent]:
    status = payment_status(txn.trade_state)
    kind = callback_kind_for_status(status)
    if kind is None:
        return []
    amount = txn.amount
    if amount is None or amount.total is None:
        raise ValueError("a transaction callback carries amount.total")
    return [
        CallbackEvent(
            event_id=event_id,
            kind=kind,
            payment_id=txn.out_trade_no,  # our payment_id, sent as out_trade_no
            provider_ref=txn.out_trade_no,  # the provider_ref create_payment returned
            amount=amount.total,
            currency=(amount.currency or CURRENCY).upper(),
            failure_code=txn.trade_state if kind is CallbackKind.PAYMENT_FAILED else None,
        )
    ]


def refund_events(event_id: str, notice: RefundNotice) -> list[CallbackEvent]:
    status = refund_status(notice.refund_status)
    if status == "pending":
        return []
    succeeded = status == "succeeded"
    return [
        CallbackEvent(
            event_id=event_id,
            kind=CallbackKind.REFUND_SUCCEEDED if succeeded else CallbackKind.REFUND_FAILED,
            payment_id=notice.out_trade_no,
            provider_ref=notice.out_trade_no,
            amount=notice.amount.refund,
            currency=(notice.amount.currency or CURRENCY).upper(),
            failure_code=None if succeeded else notice.refund_status,
            refund_id=notice.out_refund_no,  # our refund_id, sent as out_refund_no
            provider_refund_ref=notice.refund_id,
        )
    ]


# ---- amounts ----

_DECIMAL_RE = re.compile(r"^(-?)(\d+)(?:\.(\d+))?$")


def decimal_to_minor(text: str, currency: str) -> int:
    """Exact decimal string ("10.00", "-0.01", "0.06000") -> integer minor units; never float.

    Digits beyond the currency's exponent are allowed only when they are zeros: the bill prints
    fees with five decimals ("0.06000") although they are whole fen. Anything else is refused.
    """
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise ValueError(f"unknown currency {currency!r}")
    match = _DECIMAL_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a decimal amount: {text!r}")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if fraction[exponent:].strip("0"):
        raise ValueError(f"{text!r} has more decimals than {currency} allows ({exponent})")
    minor = int(whole) * 10**exponent + int((fraction[:exponent]).ljust(exponent, "0") or "0")
    assert minor >= 0
    return -minor if sign else minor


# ---- trade bill (GET /v3/bill/tradebill, bill_type=ALL) ----

# The columns read, by their header name (the bill's column order has changed over the years,
# so the header row, not a position, decides). Optional ones are newer columns.
_COL_TIME = "交易时间"
_COL_TRANSACTION_ID = "微信订单号"
_COL_OUT_TRADE_NO = "商户订单号"
_COL_STATE = "交易状态"
_COL_CURRENCY = "货币种类"
_COL_SETTLEMENT_AMOUNT = "应结订单金额"
_COL_REFUND_ID = "微信退款单号"
_COL_OUT_REFUND_NO = "商户退款单号"
_COL_REFUND_AMOUNT = "退款金额"
_COL_FEE = "手续费"
_COL_ORDER_AMOUNT = "订单金额"  # optional: total before non-settling coupons
_COL_REFUND_APPLIED = "申请退款金额"  # optional: the refund as requested
_REQUIRED_COLUMNS = (
    _COL_TIME, _COL_TRANSACTION_ID, _COL_OUT_TRADE_NO, _COL_STATE, _COL_CURRENCY,
    _COL_SETTLEMENT_AMOUNT, _COL_REFUND_ID, _COL_OUT_REFUND_NO, _COL_REFUND_AMOUNT, _COL_FEE,
)
_BILL_ROWS_MAX = 2_000_000  # a day of a very large merchant; more is a malformed file
_BEIJING = timezone(timedelta(hours=8))  # bill times are China Standard Time, no zone printed

_BILL_KINDS: dict[str, Literal["payment", "refund", "other"]] = {
    "SUCCESS": "payment",
    "REFUND": "refund",
    "REVOKED": "other",  # a reversed micropay: no money moved
}


def bill_text(data: bytes) -> str:
    """The bill as text, gunzipped when it came compressed."""
    if data[:2] == b"\x1f\x8b":  # tar_type=GZIP downloads
        data = gzip.decompress(data)
    return data.decode("utf-8-sig")


def _bill_fields(line: str) -> list[str]:
    # Every value is prefixed by a backtick so spreadsheets keep it as text; splitting on ",`"
    # keeps commas inside product names intact.
    assert line.startswith("`")
    return line[1:].split(",`")


def _bill_time_s(text: str) -> int | None:
    if not text:
        return None
    parsed = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=_BEIJING)
    return int(parsed.timestamp())


def _bill_line(row: dict[str, str]) -> StatementLine:
    currency = (row[_COL_CURRENCY] or CURRENCY).upper()
    state = row[_COL_STATE]
    kind = _BILL_KINDS.get(state, "other")
    if kind == "refund":
        amount_text = row.get(_COL_REFUND_APPLIED) or row[_COL_REFUND_AMOUNT]
        provider_ref = row[_COL_REFUND_ID]
    else:
        amount_text = row.get(_COL_ORDER_AMOUNT) or row[_COL_SETTLEMENT_AMOUNT]
        provider_ref = row[_COL_OUT_TRADE_NO]
    return StatementLine(
        provider_ref=provider_ref,
        kind=kind,
        # Signed as WeChat prints it: refund amounts are positive; their fee is negative.
        amount=decimal_to_minor(amount_text, currency),
        fee=decimal_to_minor(row[_COL_FEE] or "0", currency),
        currency=currency,
        occurred_at_s=_bill_time_s(row[_COL_TIME]),
        payment_id=row[_COL_OUT_TRADE_NO] or None,
    )


def parse_trade_bill(data: bytes) -> list[StatementLine]:
    """The trade bill: a header row, backtick-prefixed detail rows, then two summary rows."""
    try:
        lines = [line for line in bill_text(data).splitlines() if line.strip()]
        if not lines or lines[0].startswith("`"):
            raise ValueError("the bill has no header row")
        header = [name.strip() for name in lines[0].split(",")]
        missing = [name for name in _REQUIRED_COLUMNS if name not in header]
        if missing:
            raise ValueError(f"the bill lacks the columns {missing}")
        statement: list[StatementLine] = []
        for line in lines[1:]:
            if not line.startswith("`"):
                break  # "总交易单数,..." starts the summary: detail rows are over
            fields = _bill_fields(line)
            if len(fields) < len(header):
                raise ValueError(f"bill row {len(statement) + 1} has {len(fields)} fields")
            statement.append(_bill_line(dict(zip(header, (f.strip() for f in fields)))))
            if len(statement) > _BILL_ROWS_MAX:
                raise ValueError("the bill has too many rows")
    except (ValueError, OSError, EOFError) as exc:  # OSError/EOFError: a broken gzip stream
        raise ChannelUnavailable(f"wechatpay trade bill malformed: {exc}", code="statement_malformed") from exc
    return statement
