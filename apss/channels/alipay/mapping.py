"""Pure conversion between Alipay Open Platform wire data and APSS's neutral types.

Nothing here does I/O or touches keys: client.py signs, verifies and talks HTTP, then hands the
verified parameters and response objects to these functions.

Alipay's identifiers: `out_trade_no` is OUR payment id (sent on create, echoed everywhere);
`trade_no` is Alipay's own trade number, which exists only once the buyer has scanned the QR code
or logged in on the cashier page, so it is not known when the payment is created.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import msgspec

from apss.channels.base import CallbackEvent, PaymentReport, RefundResult, StatementLine
from apss.domain.money import CURRENCY_EXPONENTS
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import InvalidRequest

__all__ = [
    "ALIPAY_CURRENCY",
    "CLIENT_METHODS",
    "FLOWS",
    "PRODUCT_CODES",
    "SHANGHAI",
    "CloseResponse",
    "PrecreateResponse",
    "QueryResponse",
    "RefundQueryResponse",
    "RefundResponse",
    "ShapeError",
    "ResponseCommon",
    "alipay_timestamp",
    "decimal_to_minor",
    "minor_to_decimal",
    "notify_events",
    "our_payment_id",
    "parse_statement",
    "query_report",
    "raw_member",
    "notify_sign_content",
    "refund_query_result",
    "request_sign_content",
    "time_expire",
    "timeout_express",
    "trade_status_to_payment_status",
]

# Alipay's domestic acquiring API settles in CNY only (cross-border `trans_currency` is not used).
ALIPAY_CURRENCY = "CNY"
# China Standard Time has had no daylight saving since 1991: a fixed +08:00 offset is exact and
# needs no tz database.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
SUCCESS_CODE = "10000"

# The flows (channel_options.flow), the product code each is sold under, and the method the
# payer's side carries to the gateway (native is precreated by us, client.py).
PRODUCT_CODES: dict[str, str] = {
    "native": "FACE_TO_FACE_PAYMENT",
    "page": "FAST_INSTANT_TRADE_PAY",
    "wap": "QUICK_WAP_PAY",
    "app": "QUICK_MSECURITY_PAY",
}
FLOWS = frozenset(PRODUCT_CODES)
CLIENT_METHODS: dict[str, str] = {
    "page": "alipay.trade.page.pay",
    "wap": "alipay.trade.wap.pay",
    "app": "alipay.trade.app.pay",
}

_OUR_PAYMENT_ID_RE = re.compile(r"^pay_[0-9a-z]{26}$")
_DECIMAL_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_STATEMENT_ROWS_MAX = 200_000


# --- amounts ---------------------------------------------------------------------------------


def decimal_to_minor(text: str, currency: str) -> int:
    """`"19.99"` CNY -> 1999, exactly; more decimals than the currency has is an error."""
    assert currency in CURRENCY_EXPONENTS, currency
    exponent = CURRENCY_EXPONENTS[currency]
    cleaned = text.strip()
    if not _DECIMAL_RE.match(cleaned):
        raise ValueError(f"not a decimal amount: {text!r}")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"not a decimal amount: {text!r}") from exc
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{text!r} has more than {exponent} decimals for {currency}")
    minor = int(scaled)
    assert Decimal(minor).scaleb(-exponent) == value
    return minor


def minor_to_decimal(amount: int, currency: str) -> str:
    """1999 CNY -> `"19.99"`; 5 JPY -> `"5"`; 1234 KWD -> `"1.234"` (integer arithmetic only)."""
    assert isinstance(amount, int) and not isinstance(amount, bool), amount
    assert currency in CURRENCY_EXPONENTS, currency
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**exponent)
    text = f"{sign}{whole}.{fraction:0{exponent}d}" if exponent else f"{sign}{whole}"
    assert decimal_to_minor(text, currency) == amount
    return text


def our_payment_id(out_trade_no: str | None) -> str | None:
    """The out_trade_no when it is one of our payment ids (merchants' other trades are not ours)."""
    if out_trade_no and _OUR_PAYMENT_ID_RE.match(out_trade_no):
        return out_trade_no
    return None


def alipay_timestamp(now_ms: int) -> str:
    """The `timestamp` common parameter: `yyyy-MM-dd HH:mm:ss` in Beijing time."""
    assert now_ms > 0
    return datetime.fromtimestamp(now_ms // 1000, tz=SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


_TIMEOUT_MINUTES_MAX = 15 * 24 * 60  # timeout_express takes 1m..15d


def timeout_express(expires_at_s: int, *, now_s: int) -> str:
    """alipay.trade.precreate's `timeout_express`: whole minutes from now (Alipay counts from when
    the request reaches it), rounded down so the trade never outlives the reservation, 1m..15d."""
    minutes = min(max((expires_at_s - now_s) // 60, 1), _TIMEOUT_MINUTES_MAX)
    assert 1 <= minutes <= _TIMEOUT_MINUTES_MAX
    return f"{minutes}m"


def time_expire(expires_at_s: int) -> str:
    """alipay.trade.page.pay's absolute `time_expire`: `yyyy-MM-dd HH:mm:ss` in Beijing time."""
    assert expires_at_s > 0
    return datetime.fromtimestamp(expires_at_s, tz=SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _parse_shanghai_time(text: str) -> int | None:
    cleaned = text.strip()
    if not cleaned:
        return None
    try:
        parsed = datetime.strptime(cleaned, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return int(parsed.replace(tzinfo=SHANGHAI).timestamp())


# --- signatures (pure string building) -------------------------------------------------------


def request_sign_content(params: Mapping[str, str]) -> str:
    """What a request's `sign` covers: every non-empty param except `sign` (sign_type included),
    sorted by key, joined as `k=v&...` with raw (not URL-encoded) values."""
    items = sorted((key, value) for key, value in params.items() if key != "sign" and value != "")
    return "&".join(f"{key}={value}" for key, value in items)


def notify_sign_content(params: Mapping[str, str], *, skip_empty: bool) -> str:
    """What a notify's `sign` covers: params without `sign` and `sign_type`, sorted, raw values.

    Today's official SDKs skip empty values, older ones and python-alipay-sdk keep them, so the
    caller checks both (reference section 2, step 3).
    """
    items = sorted(
        (key, value)
        for key, value in params.items()
        if key not in ("sign", "sign_type") and not (skip_empty and value == "")
    )
    return "&".join(f"{key}={value}" for key, value in items)


def raw_member(text: str, key: str) -> str | None:
    """The exact raw JSON text of top-level member `key` of the object in `text`, or None.

    Alipay signs a response's `<method>_response` object as the bytes it sent, so it must be cut
    out of the raw body, not re-serialised. json's raw_decode walks value by value, so braces or
    quotes inside strings cannot fool it (python-alipay-sdk's brace counter can be).
    """
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if index >= len(text) or text[index] != "{":
        raise ValueError("the response is not a JSON object")
    index = _skip_space(text, index + 1)
    if index < len(text) and text[index] == "}":
        return None
    while index < len(text):
        name, index = decoder.raw_decode(text, index)
        index = _skip_space(text, index)
        if not isinstance(name, str) or text[index : index + 1] != ":":
            raise ValueError("malformed JSON object")
        start = _skip_space(text, index + 1)
        _, end = decoder.raw_decode(text, start)
        if name == key:
            return text[start:end]
        index = _skip_space(text, end)
        if text[index : index + 1] == "}":
            return None
        if text[index : index + 1] != ",":
            raise ValueError("malformed JSON object")
        index = _skip_space(text, index + 1)
    raise ValueError("unterminated JSON object")


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


# --- synchronous responses -------------------------------------------------------------------


class ResponseCommon(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    msg: str = ""
    sub_code: str = ""
    sub_msg: str = ""


class PrecreateResponse(ResponseCommon, frozen=True, kw_only=True):
    out_trade_no: str = ""
    qr_code: str = ""


class QueryResponse(ResponseCommon, frozen=True, kw_only=True):
    trade_no: str = ""
    out_trade_no: str = ""
    trade_status: str = ""
    total_amount: str = ""


class CloseResponse(ResponseCommon, frozen=True, kw_only=True):
    trade_no: str = ""
    out_trade_no: str = ""


class RefundQueryResponse(ResponseCommon, frozen=True, kw_only=True):
    out_trade_no: str = ""
    out_request_no: str = ""
    refund_amount: str = ""
    refund_status: str = ""  # REFUND_SUCCESS, or empty (also success) when data is returned


class RefundResponse(ResponseCommon, frozen=True, kw_only=True):
    trade_no: str = ""
    out_trade_no: str = ""
    fund_change: str = ""
    refund_fee: str = ""  # cumulative refunded amount of the trade, yuan


# --- statuses --------------------------------------------------------------------------------

_QUERY_STATUSES: dict[str, PaymentStatus] = {
    "WAIT_BUYER_PAY": PaymentStatus.REQUIRES_ACTION,
    "TRADE_SUCCESS": PaymentStatus.SUCCEEDED,
    "TRADE_FINISHED": PaymentStatus.SUCCEEDED,  # paid, and past the refund window
    # Closed unpaid (timeout) or fully refunded: a refunded payment is already succeeded on our
    # side, and the state machine refuses succeeded -> canceled, so this only lands on unpaid ones.
    "TRADE_CLOSED": PaymentStatus.CANCELED,
}


def trade_status_to_payment_status(trade_status: str) -> PaymentStatus:
    """Every Alipay trade_status listed; anything else is `unknown`, never guessed."""
    return _QUERY_STATUSES.get(trade_status, PaymentStatus.UNKNOWN)


def query_report(response: QueryResponse) -> PaymentReport:
    """A successful alipay.trade.query response (code 10000) in neutral terms."""
    assert response.code == SUCCESS_CODE, response.code
    status = trade_status_to_payment_status(response.trade_status)
    amount = decimal_to_minor(response.total_amount, ALIPAY_CURRENCY) if response.total_amount else None
    return PaymentReport(
        status=status,
        provider_ref=response.trade_no or None,
        amount=amount,
        currency=ALIPAY_CURRENCY if amount is not None else None,
        failure_code="trade_closed" if response.trade_status == "TRADE_CLOSED" else None,
    )


# --- notifies --------------------------------------------------------------------------------


class ShapeError(ValueError):
    """A verified notify that lacks what its kind requires (client.py turns it into a rejection)."""


def _required(params: Mapping[str, str], key: str) -> str:
    value = params.get(key, "")
    if not value:
        raise ShapeError(f"the notify has no {key}")
    return value


def _amount(params: Mapping[str, str], key: str) -> int:
    try:
        return decimal_to_minor(_required(params, key), ALIPAY_CURRENCY)
    except ShapeError:
        raise
    except ValueError as exc:
        raise ShapeError(f"the notify's {key} is not a CNY amount") from exc


def _is_refund_notify(params: Mapping[str, str]) -> bool:
    """Alipay reports refunds on the trade's own notify: refund_fee/out_biz_no/gmt_refund set."""
    if params.get("out_biz_no"):
        return True
    refund_fee = params.get("refund_fee", "")
    if not refund_fee:
        return False
    try:
        return decimal_to_minor(refund_fee, ALIPAY_CURRENCY) != 0
    except ValueError:
        return True  # malformed: _refund_event rejects it rather than treating it as a payment


def notify_events(params: Mapping[str, str]) -> list[CallbackEvent]:
    """The neutral events of a VERIFIED notify (signature and app_id already checked).

    trade_status: TRADE_SUCCESS / TRADE_FINISHED -> payment.succeeded, or refund.succeeded when
    the notify carries refund_fee / out_biz_no (partial refund); TRADE_CLOSED -> payment.failed
    (`trade_closed`), or refund.succeeded when it carries refund_fee (full refund);
    WAIT_BUYER_PAY and any unknown status -> [] (acknowledged, nothing applied).
    """
    notify_type = params.get("notify_type", "trade_status_sync")
    if notify_type != "trade_status_sync":
        return []
    event_id = _required(params, "notify_id")
    trade_status = _required(params, "trade_status")
    out_trade_no = _required(params, "out_trade_no")
    common = {
        "event_id": event_id,
        "payment_id": our_payment_id(out_trade_no),
        "provider_ref": params.get("trade_no") or None,
        "currency": ALIPAY_CURRENCY,
    }
    if trade_status in ("TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED") and _is_refund_notify(params):
        return [_refund_event(params, common)]
    if trade_status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        amount = _amount(params, "total_amount")
        return [CallbackEvent(kind=CallbackKind.PAYMENT_SUCCEEDED, amount=amount, **common)]
    if trade_status == "TRADE_CLOSED":
        amount = _amount(params, "total_amount")
        return [
            CallbackEvent(
                kind=CallbackKind.PAYMENT_FAILED, amount=amount, failure_code="trade_closed", **common
            )
        ]
    if trade_status == "WAIT_BUYER_PAY":
        return []
    return []  # unknown trade_status: acknowledged, nothing applied


def _refund_event(params: Mapping[str, str], common: dict[str, object]) -> CallbackEvent:
    # refund_fee is the trade's CUMULATIVE refunded amount (Alipay's notify docs), not this
    # refund's; out_biz_no is the out_request_no we sent, i.e. our refund id.
    out_biz_no = params.get("out_biz_no") or None
    amount = _amount(params, "refund_fee") if params.get("refund_fee") else None
    refund_id = out_biz_no if out_biz_no and out_biz_no.startswith("rfd_") else None
    return CallbackEvent(
        kind=CallbackKind.REFUND_SUCCEEDED,
        amount=amount,
        refund_id=refund_id,
        provider_refund_ref=out_biz_no,
        **common,  # type: ignore[arg-type]
    )


# --- statements ------------------------------------------------------------------------------

# Columns read from the trade bill (业务明细); every other column is ignored.
COL_TRADE_NO = "支付宝交易号"
COL_OUT_TRADE_NO = "商户订单号"
COL_BUSINESS_TYPE = "业务类型"
COL_CREATED = "创建时间"
COL_FINISHED = "完成时间"
COL_ORDER_AMOUNT = "订单金额（元）"
COL_FEE = "服务费（元）"
COL_REFUND_REQUEST_NO = "退款批次号/请求号"
_KINDS = {"交易": "payment", "退款": "refund"}


def _decode_statement(data: bytes) -> str:
    # Alipay's downloads are GBK; some tools re-save them as UTF-8 (with or without a BOM).
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")  # a superset of GBK and GB2312
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the alipay statement is neither UTF-8 nor GBK") from exc


def _normalise_header(name: str) -> str:
    # Some exports use ASCII parentheses: 订单金额(元).
    return name.strip().replace("(元)", "（元）")


def parse_statement(data: bytes) -> list[StatementLine]:
    """Lines of an Alipay trade bill CSV (alipay.data.dataservice.bill.downloadurl.query, trade).

    '#' lines (title, account, totals, export time) are skipped; the first other line is the
    header. amount = 订单金额（元） as Alipay signs it (refund rows are negative); fee =
    服务费（元） negated, so a fee charged is positive and a fee returned on a refund negative.
    """
    text = _decode_statement(data)
    rows = [row for row in csv.reader(io.StringIO(text)) if row and not row[0].lstrip().startswith("#")]
    if not rows:
        return []
    header = [_normalise_header(name) for name in rows[0]]
    needed = (COL_TRADE_NO, COL_OUT_TRADE_NO, COL_BUSINESS_TYPE, COL_ORDER_AMOUNT, COL_FEE)
    missing = [name for name in needed if name not in header]
    if missing:
        raise InvalidRequest(f"the alipay statement has no column {missing[0]}")
    if len(rows) - 1 > _STATEMENT_ROWS_MAX:
        raise InvalidRequest(f"the alipay statement has more than {_STATEMENT_ROWS_MAX} rows")
    return [_statement_line(dict(zip(header, _cells(row, len(header))))) for row in rows[1:]]


def _cells(row: list[str], width: int) -> list[str]:
    # Alipay pads ids with a tab (so spreadsheets keep them as text) and values with spaces.
    if len(row) != width:
        raise InvalidRequest(f"an alipay statement row has {len(row)} columns, the header {width}")
    return [cell.strip() for cell in row]


def _statement_line(row: dict[str, str]) -> StatementLine:
    kind = _KINDS.get(row[COL_BUSINESS_TYPE], "other")
    try:
        amount = decimal_to_minor(row[COL_ORDER_AMOUNT] or "0", ALIPAY_CURRENCY)
        fee = -decimal_to_minor(row[COL_FEE] or "0", ALIPAY_CURRENCY)
    except ValueError as exc:
        raise InvalidRequest(f"an alipay statement amount is not CNY: {exc}") from exc
    trade_no = row[COL_TRADE_NO]
    # A refund row repeats the trade's 支付宝交易号; its own reference is the out_request_no we
    # sent, which is also what refund() reports as provider_refund_ref.
    refund_no = row.get(COL_REFUND_REQUEST_NO, "")
    provider_ref = refund_no if kind == "refund" and refund_no else trade_no
    if not provider_ref:
        raise InvalidRequest("an alipay statement row has no 支付宝交易号")
    occurred = _parse_shanghai_time(row.get(COL_FINISHED, "")) or _parse_shanghai_time(
        row.get(COL_CREATED, "")
    )
    return StatementLine(
        provider_ref=provider_ref,
        kind=kind,  # type: ignore[arg-type]
        amount=amount,
        fee=fee,
        currency=ALIPAY_CURRENCY,
        occurred_at_s=occurred,
        payment_id=our_payment_id(row[COL_OUT_TRADE_NO]),
    )


def refund_query_result(response: RefundQueryResponse, *, refund_id: str) -> RefundResult:
    """alipay.trade.fastpay.refund.query: data returned with refund_status REFUND_SUCCESS (or
    empty, in older answers) is a refund made; no data means Alipay made none for this
    out_request_no (its docs: retry the refund with the same one) - nothing moved: failed."""
    if response.out_request_no != refund_id or not response.refund_amount:
        return RefundResult(provider_refund_ref=refund_id, status="failed", failure_code="refund_not_found")
    match response.refund_status:
        case "REFUND_SUCCESS" | "":
            return RefundResult(provider_refund_ref=refund_id, status="succeeded")
        case _:
            return RefundResult(provider_refund_ref=refund_id, status="pending")
