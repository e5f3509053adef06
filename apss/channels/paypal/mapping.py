"""Pure conversion between PayPal Orders v2 / Payments v2 wire shapes and APSS's neutral types.

Nothing here does I/O. Every PayPal status is listed explicitly (the values are those of
paypal-server-sdk 2.4.0's OrderStatus, CaptureStatus and RefundStatus enums) with an `unknown`
fallback; amounts cross as decimal strings at PayPal and integer minor units inside APSS.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from typing import Any, Literal

import msgspec

from apss.channels.base import (
    CallbackEvent,
    DisputeReport,
    NextAction,
    PaymentCreated,
    PaymentReport,
    PaymentRequest,
    RefundRequest,
    StatementLine,
)
from apss.domain.money import CURRENCY_EXPONENTS
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.errors import CurrencyNotSupported, InvalidRequest

__all__ = [
    "CAPTURE_STATUSES",
    "ORDER_STATUSES",
    "PAYPAL_CURRENCIES",
    "REFUND_STATUSES",
    "STATEMENT_COLUMNS_REQUIRED",
    "Capture",
    "Link",
    "Money",
    "Order",
    "Payments",
    "PurchaseUnit",
    "Refund",
    "StatusDetails",
    "WebhookEnvelope",
    "capture_id_of",
    "created_from_order",
    "events_from_webhook",
    "from_paypal_value",
    "order_body",
    "parse_statement",
    "refund_body",
    "refund_outcome",
    "report_from_order",
    "to_paypal_value",
]

# PayPal's REST currency list (developer.paypal.com/reference/currency-codes) minus HUF and RUB,
# which APSS's ISO table does not carry. No three-decimal currency is accepted by PayPal.
PAYPAL_CURRENCIES = frozenset({
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "ILS", "JPY", "MXN",
    "MYR", "NOK", "NZD", "PHP", "PLN", "SEK", "SGD", "THB", "TWD", "USD",
})

# PayPal refuses decimals for TWD (and HUF) although ISO 4217 gives TWD two: "100" at PayPal is
# NT$100 = 10000 minor units in APSS. Everything else follows the ISO exponent.
_PAYPAL_EXPONENT_OVERRIDES = {"TWD": 0}

_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]{0,17})(?:\.([0-9]{1,3}))?$")


# --- wire types (PayPal adds fields over time, so unknown ones are ignored, never refused) ---


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Money(_Wire):
    currency_code: str
    value: str


class Link(_Wire):
    href: str
    rel: str
    method: str | None = None


class StatusDetails(_Wire):
    reason: str | None = None


class RelatedIds(_Wire):
    order_id: str | None = None


class SupplementaryData(_Wire):
    related_ids: RelatedIds | None = None


class Capture(_Wire):
    id: str
    status: str
    amount: Money | None = None
    custom_id: str | None = None
    invoice_id: str | None = None
    status_details: StatusDetails | None = None
    supplementary_data: SupplementaryData | None = None


class Refund(_Wire):
    id: str
    status: str
    amount: Money | None = None
    custom_id: str | None = None
    invoice_id: str | None = None
    status_details: StatusDetails | None = None


class Payments(_Wire):
    captures: list[Capture] = []
    refunds: list[Refund] = []


class PurchaseUnit(_Wire):
    reference_id: str | None = None
    amount: Money | None = None
    custom_id: str | None = None
    invoice_id: str | None = None
    payments: Payments | None = None


class Order(_Wire):
    id: str
    status: str
    links: list[Link] = []
    purchase_units: list[PurchaseUnit] = []


class DisputedTransaction(_Wire):
    seller_transaction_id: str | None = None
    invoice_number: str | None = None
    custom: str | None = None


class DisputeOutcome(_Wire):
    outcome_code: str | None = None


class Dispute(_Wire):
    dispute_id: str
    dispute_amount: Money | None = None
    reason: str | None = None
    status: str = "OPEN"
    seller_response_due_date: str | None = None
    dispute_outcome: DisputeOutcome | None = None
    disputed_transactions: list[DisputedTransaction] = []


# PayPal dispute statuses, and a resolved dispute's outcome codes, onto ours. A resolution we do
# not know is `lost` (the chargeback stays: nothing is given back on a guess); an open status we do
# not know is `under_review`.
DISPUTE_STATUSES = {"OPEN": "needs_response", "WAITING_FOR_SELLER_RESPONSE": "needs_response",
                    "WAITING_FOR_BUYER_RESPONSE": "under_review", "UNDER_REVIEW": "under_review"}
DISPUTE_OUTCOMES = {"RESOLVED_SELLER_FAVOUR": "won", "CANCELED_BY_BUYER": "won", "DENIED": "won",
                    "RESOLVED_BUYER_FAVOUR": "lost", "RESOLVED_WITH_PAYOUT": "lost", "ACCEPTED": "lost",
                    "REFUNDED": "lost", "PARTIALLY_REFUNDED": "lost", "CHARGEBACK": "lost"}


class WebhookEnvelope(_Wire):
    id: str
    event_type: str
    resource: dict[str, Any] = {}


# --- amounts ---


def _exponents(currency: str) -> tuple[int, int]:
    """(ISO exponent used inside APSS, exponent PayPal's `value` strings use)."""
    iso = CURRENCY_EXPONENTS.get(currency)
    if iso is None:
        raise CurrencyNotSupported(f"currency {currency!r} is not an ISO 4217 code APSS knows", param="currency")
    return iso, _PAYPAL_EXPONENT_OVERRIDES.get(currency, iso)


def to_paypal_value(amount: int, currency: str) -> str:
    """1999 USD -> "19.99"; 1999 JPY -> "1999"; 10000 TWD -> "100". Exact integer arithmetic."""
    assert isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0, amount
    iso, paypal = _exponents(currency)
    scale = 10 ** (iso - paypal)
    if amount % scale:
        raise InvalidRequest(
            f"PayPal takes {currency} without decimals; {amount} minor units is not a whole amount",
            code="amount_precision_not_supported", param="amount",
        )
    units = amount // scale
    if paypal == 0:
        return str(units)
    whole, fraction = divmod(units, 10**paypal)
    return f"{whole}.{fraction:0{paypal}d}"


def from_paypal_value(value: str, currency: str) -> int:
    """"19.99" USD -> 1999. Raises ValueError for a malformed value or more decimals than allowed."""
    iso, paypal = _exponents(currency)
    match = _DECIMAL_RE.match(value)
    if match is None:
        raise ValueError(f"malformed PayPal amount {value!r}")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > paypal:
        raise ValueError(f"PayPal amount {value!r} has more decimals than {currency} allows")
    units = int(whole) * 10**paypal + int(fraction.ljust(paypal, "0") or "0")
    return units * 10 ** (iso - paypal)


def _money_minor(money: Money | None) -> tuple[int | None, str | None]:
    if money is None:
        return None, None
    currency = money.currency_code.upper()
    return from_paypal_value(money.value, currency), currency


# --- statuses ---

_S = PaymentStatus

ORDER_STATUSES: dict[str, PaymentStatus] = {
    "CREATED": _S.REQUIRES_ACTION,
    "SAVED": _S.REQUIRES_ACTION,
    "PAYER_ACTION_REQUIRED": _S.REQUIRES_ACTION,
    # The payer approved but nothing is captured until APSS calls capture: money has not moved.
    "APPROVED": _S.PROCESSING,
    "VOIDED": _S.CANCELED,
    # COMPLETED orders are judged by their capture (below); a COMPLETED order without one is unknown.
    "COMPLETED": _S.UNKNOWN,
}

CAPTURE_STATUSES: dict[str, PaymentStatus] = {
    "COMPLETED": _S.SUCCEEDED,
    # The payment itself succeeded; refunds are tracked as refunds, not as a payment status.
    "PARTIALLY_REFUNDED": _S.SUCCEEDED,
    "REFUNDED": _S.SUCCEEDED,
    "PENDING": _S.PROCESSING,
    "DECLINED": _S.FAILED,
    "FAILED": _S.FAILED,
}

REFUND_STATUSES: dict[str, Literal["pending", "succeeded", "failed"]] = {
    "COMPLETED": "succeeded",
    "PENDING": "pending",
    "FAILED": "failed",
    "CANCELLED": "failed",
}


def _order_status(status: str) -> PaymentStatus:
    return ORDER_STATUSES.get(status, _S.UNKNOWN)


def _capture_status(status: str) -> PaymentStatus:
    return CAPTURE_STATUSES.get(status, _S.UNKNOWN)


def _first_capture(order: Order) -> Capture | None:
    for unit in order.purchase_units:
        if unit.payments is not None and unit.payments.captures:
            return unit.payments.captures[0]
    return None


def capture_id_of(order: Order) -> str | None:
    capture = _first_capture(order)
    return capture.id if capture is not None else None


def report_from_order(order: Order) -> PaymentReport:
    """An order as APSS sees it: the capture decides once there is one."""
    capture = _first_capture(order)
    if capture is not None:
        status = _capture_status(capture.status)
        money = capture.amount
        failure = capture.status_details.reason if capture.status_details else None
    else:
        status = _order_status(order.status)
        money = order.purchase_units[0].amount if order.purchase_units else None
        failure = None
    amount, currency = _money_minor(money)
    if status is not _S.FAILED:
        failure = None
    elif failure is None:
        failure = (capture.status if capture else order.status).lower()
    return PaymentReport(status=status, provider_ref=order.id, amount=amount, currency=currency, failure_code=failure)


def created_from_order(order: Order) -> PaymentCreated:
    """The payer is sent to the `payer-action` link (payment_source flow) or `approve` (legacy)."""
    status = _order_status(order.status)
    url = next((link.href for link in order.links if link.rel in ("payer-action", "approve")), None)
    if status is _S.REQUIRES_ACTION and url is not None:
        return PaymentCreated(provider_ref=order.id, status=status, next_action=NextAction(type="redirect", url=url))
    report = report_from_order(order)
    return PaymentCreated(provider_ref=order.id, status=report.status)


def refund_outcome(refund: Refund) -> tuple[Literal["pending", "succeeded", "failed"], str | None]:
    # An unlisted refund status is not a failure we know of: keep checking (pending).
    status = REFUND_STATUSES.get(refund.status, "pending")
    if status != "failed":
        return status, None
    reason = refund.status_details.reason if refund.status_details else None
    return status, reason or refund.status.lower()


# --- outgoing bodies ---


def order_body(request: PaymentRequest, *, return_url: str, cancel_url: str) -> dict[str, Any]:
    """POST /v2/checkout/orders. `payment_id` is custom_id AND invoice_id: both come back in the
    capture webhook, and invoice_id makes PayPal refuse a second capture for the same payment."""
    assert len(request.payment_id) <= 127 and len(request.order_id) <= 256
    unit: dict[str, Any] = {
        "reference_id": request.order_id,
        "custom_id": request.payment_id,
        "invoice_id": request.payment_id,
        "amount": {"currency_code": request.currency, "value": to_paypal_value(request.amount, request.currency)},
    }
    if request.description:
        unit["description"] = request.description[:127]  # PayPal's maxLength
    # Virtual goods: no shipping address; PAY_NOW makes the approval page the last step.
    # The other three fields are PayPal's defaults, sent explicitly so the body is unambiguous.
    context = {
        "shipping_preference": "NO_SHIPPING",
        "contact_preference": "NO_CONTACT_INFO",
        "return_url": return_url,
        "cancel_url": cancel_url,
        "landing_page": "NO_PREFERENCE",
        "user_action": "PAY_NOW",
        "payment_method_preference": "UNRESTRICTED",
    }
    return {"intent": "CAPTURE", "purchase_units": [unit], "payment_source": {"paypal": {"experience_context": context}}}


def refund_body(request: RefundRequest) -> dict[str, Any]:
    """POST /v2/payments/captures/{id}/refund. custom_id carries our payment_id so the
    PAYMENT.CAPTURE.REFUNDED webhook names the payment; invoice_id carries our refund_id."""
    body: dict[str, Any] = {
        "amount": {"currency_code": request.currency, "value": to_paypal_value(request.amount, request.currency)},
        "custom_id": request.payment_id,
        "invoice_id": request.refund_id,
    }
    if request.reason:
        body["note_to_payer"] = request.reason[:255]
    return body


# --- webhooks ---


def events_from_webhook(envelope: WebhookEnvelope) -> list[CallbackEvent]:
    """The neutral events of one verified webhook. Raises ValueError/msgspec errors on bad shapes.

    CHECKOUT.ORDER.APPROVED yields `payment.approved`: the payer approved and APSS must capture
    (PayPalChannel.capture_payment, called by the services outside any transaction).
    PAYMENT.CAPTURE.PENDING and .REVERSED, and every other event type, yield no event.
    """
    kind = envelope.event_type
    if kind == "CHECKOUT.ORDER.APPROVED":
        return [_approved_event(envelope)]
    if kind == "PAYMENT.CAPTURE.COMPLETED":
        return [_capture_event(envelope, CallbackKind.PAYMENT_SUCCEEDED)]
    if kind in ("PAYMENT.CAPTURE.DENIED", "PAYMENT.CAPTURE.DECLINED"):
        return [_capture_event(envelope, CallbackKind.PAYMENT_FAILED)]
    if kind == "PAYMENT.CAPTURE.REFUNDED":
        return _refund_events(envelope)
    if kind == "CUSTOMER.DISPUTE.CREATED":
        return [_dispute_event(envelope, CallbackKind.DISPUTE_CREATED)]
    if kind == "CUSTOMER.DISPUTE.UPDATED":
        return [_dispute_event(envelope, CallbackKind.DISPUTE_UPDATED)]
    if kind == "CUSTOMER.DISPUTE.RESOLVED":
        return [_dispute_event(envelope, CallbackKind.DISPUTE_CLOSED)]
    return []


def _approved_event(envelope: WebhookEnvelope) -> CallbackEvent:
    order = msgspec.convert(envelope.resource, Order)
    if not order.id:
        raise ValueError("CHECKOUT.ORDER.APPROVED without an order id")
    unit = order.purchase_units[0] if order.purchase_units else None
    payment_id = (unit.custom_id or unit.invoice_id) if unit is not None else None
    return CallbackEvent(event_id=envelope.id, kind=CallbackKind.PAYMENT_APPROVED, payment_id=payment_id,
                         provider_ref=order.id)


def _capture_event(envelope: WebhookEnvelope, kind: CallbackKind) -> CallbackEvent:
    capture = msgspec.convert(envelope.resource, Capture)
    amount, currency = _money_minor(capture.amount)
    related = capture.supplementary_data.related_ids if capture.supplementary_data else None
    # Prefer the order id: that is the provider_ref recorded when the payment was created.
    provider_ref = related.order_id if related is not None and related.order_id else capture.id
    failure = None
    if kind is CallbackKind.PAYMENT_FAILED:
        reason = capture.status_details.reason if capture.status_details else None
        failure = reason or envelope.event_type.rsplit(".", 1)[-1].lower()
    return CallbackEvent(
        event_id=envelope.id, kind=kind, payment_id=capture.custom_id or capture.invoice_id,
        provider_ref=provider_ref, amount=amount, currency=currency, failure_code=failure,
    )


def _refund_events(envelope: WebhookEnvelope) -> list[CallbackEvent]:
    refund = msgspec.convert(envelope.resource, Refund)
    outcome, failure = refund_outcome(refund)
    if outcome == "pending":
        return []
    amount, currency = _money_minor(refund.amount)
    kind = CallbackKind.REFUND_SUCCEEDED if outcome == "succeeded" else CallbackKind.REFUND_FAILED
    # The refund resource names the capture (link rel "up"), not the order, so provider_ref stays
    # empty; our refund_id (invoice_id) and payment_id (custom_id) identify it.
    return [CallbackEvent(
        event_id=envelope.id, kind=kind, payment_id=refund.custom_id, amount=amount, currency=currency,
        failure_code=failure, refund_id=refund.invoice_id, provider_refund_ref=refund.id,
    )]


def _dispute_event(envelope: WebhookEnvelope, kind: CallbackKind) -> CallbackEvent:
    dispute = msgspec.convert(envelope.resource, Dispute)
    amount, currency = _money_minor(dispute.dispute_amount)
    txn = dispute.disputed_transactions[0] if dispute.disputed_transactions else None
    payment_id = (txn.custom or txn.invoice_number) if txn is not None else None
    if dispute.status == "RESOLVED" or kind is CallbackKind.DISPUTE_CLOSED:
        outcome = dispute.dispute_outcome.outcome_code if dispute.dispute_outcome else None
        status = DISPUTE_OUTCOMES.get(outcome or "", "lost")
    else:
        status = DISPUTE_STATUSES.get(dispute.status, "under_review")
    due_by = None
    if dispute.seller_response_due_date:
        try:
            due_by = int(datetime.fromisoformat(dispute.seller_response_due_date.replace("Z", "+00:00")).timestamp())
        except ValueError:
            due_by = None  # an unreadable date: the dispute still counts
    return CallbackEvent(
        event_id=envelope.id, kind=kind, payment_id=payment_id,
        amount=amount, currency=currency, failure_code=dispute.reason,
        dispute=DisputeReport(provider_dispute_id=dispute.dispute_id, status=status, reason=dispute.reason,
                              evidence_due_by_s=due_by),
    )


# --- statements: Settlement Report (STL) / Transaction Detail Report (TRR) CSV ---

STATEMENT_COLUMNS_REQUIRED = (
    "Transaction ID", "Invoice ID", "PayPal Reference ID", "Transaction Event Code",
    "Transaction Initiation Date", "Gross Transaction Amount", "Gross Transaction Currency",
    "Fee Amount", "Fee Debit or Credit",
)
_RECORD_TYPES = frozenset({"RH", "FH", "SH", "CH", "SB", "SF", "SC", "RF", "RC", "FF"})
_STATEMENT_ROWS_MAX = 1_000_000


def _statement_kind(code: str) -> Literal["payment", "refund", "fee", "adjustment", "payout", "other"]:
    if code == "T1107":
        return "refund"
    prefixes: dict[str, Literal["payment", "fee", "adjustment", "payout"]] = {
        "T00": "payment", "T01": "fee", "T04": "payout", "T11": "adjustment", "T12": "adjustment",
    }
    return prefixes.get(code[:3], "other")


def _signed(amount: str, direction: str, *, credit_positive: bool) -> int:
    if not amount.strip().isdigit():
        raise ValueError(f"statement amount {amount!r} is not integer minor units")
    value = int(amount)
    if direction.strip() not in ("CR", "DR", ""):
        raise ValueError(f"statement direction {direction!r} is neither CR nor DR")
    positive = (direction.strip() != "DR") if credit_positive else (direction.strip() == "DR")
    return value if positive else -value


def _statement_time(text: str) -> int | None:
    if not text.strip():
        return None
    return int(datetime.strptime(text.strip(), "%Y/%m/%d %H:%M:%S %z").timestamp())


def _statement_line(row: dict[str, str]) -> StatementLine:
    kind = _statement_kind(row["Transaction Event Code"].strip())
    currency = row["Gross Transaction Currency"].strip().upper()
    if currency not in CURRENCY_EXPONENTS:
        raise ValueError(f"statement currency {currency!r} is not one APSS knows")
    ref_type = row.get("PayPal Reference ID Type", "").strip()
    reference = row["PayPal Reference ID"].strip()
    # A capture row refers to its order (type ODR): that is the provider_ref APSS recorded.
    provider_ref = reference if kind == "payment" and ref_type == "ODR" and reference else row["Transaction ID"].strip()
    custom = row.get("Custom Field", "").strip()
    payment_id = custom or (row["Invoice ID"].strip() if kind == "payment" else "") or None
    return StatementLine(
        provider_ref=provider_ref, kind=kind,
        amount=_signed(row["Gross Transaction Amount"], row.get("Transaction Debit or Credit", "CR"), credit_positive=True),
        # A fee is positive when PayPal charged it (DR) and negative when it was returned (CR).
        fee=_signed(row["Fee Amount"] or "0", row["Fee Debit or Credit"], credit_positive=False),
        currency=currency, occurred_at_s=_statement_time(row["Transaction Initiation Date"]), payment_id=payment_id,
    )


def _statement_rows(data: bytes) -> list[dict[str, str]]:
    """Rows as dicts keyed by the header: STL/TRR files mark it with record type CH and rows
    with SB; a plain CSV export has the header on its first line."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for record in reader:
        if not any(field.strip() for field in record):
            continue
        tag = record[0].strip()
        if tag in _RECORD_TYPES:
            # Only the column header (CH) and section body rows (SB) matter; totals are ignored.
            if tag == "CH":
                header = [" ".join(field.split()) for field in record[1:]]
            elif tag == "SB" and header is not None:
                rows.append(dict(zip(header, record[1:], strict=False)))
        elif header is None:
            header = [" ".join(field.split()) for field in record]
        else:
            rows.append(dict(zip(header, record, strict=False)))
        if len(rows) > _STATEMENT_ROWS_MAX:
            raise ValueError("statement has more rows than APSS reads")
    if header is None or any(column not in header for column in STATEMENT_COLUMNS_REQUIRED):
        raise ValueError(f"statement lacks the columns {', '.join(STATEMENT_COLUMNS_REQUIRED)}")
    return rows


def parse_statement(data: bytes) -> list[StatementLine]:
    try:
        return [_statement_line(row) for row in _statement_rows(data)]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"PayPal statement is malformed: {exc}", code="statement_malformed") from exc
