"""Pure conversion between Stripe's wire shapes and APSS's neutral channel types.

Amounts: APSS keeps ISO 4217 minor units (apss.domain.money.CURRENCY_EXPONENTS); Stripe's
`amount` is "the currency's smallest unit" with Stripe's own exceptions (docs.stripe.com/currencies):
- zero-decimal currencies (JPY, KRW, CLP, UGX, VND, XAF, XOF, PYG...) travel as whole units, as in ISO;
- ISK is zero-decimal in ISO but stays two-decimal in Stripe's API for backwards compatibility,
  so 5 ISK travels as 500 and a Stripe ISK amount must be a multiple of 100;
- three-decimal currencies (BHD, JOD, KWD, OMR, TND) travel in thousandths, but the last digit
  must be 0 (Stripe rejects 5124 KWD-thousandths); we refuse such amounts instead of rounding;
- IQD and LYD (three-decimal in ISO) are not Stripe presentment currencies: refused.
Currencies are lower-case on the wire and upper-case in APSS.

Statements (`parse_statement`) accept a CSV with a header row in one of three shapes:
1. the Dashboard's balance-transaction export ("Balance change from activity"): `id, Type, Source,
   Amount, Fee, Net, Currency, Created (UTC), Available On (UTC), Description, ...`, amounts in
   DECIMAL major units (`19.99`, `-5.00`);
2. the itemized balance report (`balance_change_from_activity.itemized.*`): `balance_transaction_id,
   created_utc, currency, gross, fee, net, reporting_category, source_id, ...`, DECIMAL amounts;
3. the API's BalanceTransaction field names: `id, type, source, amount, fee, net, currency,
   created, reporting_category`, amounts in Stripe's INTEGER wire units, `created` in unix seconds.
A header with the lower-case field `amount` (shape 3) means integer units; `Amount` or `gross`
means decimal. Optional columns `payment_metadata[apss_payment_id]`, `metadata[apss_payment_id]`
or `apss_payment_id (metadata)` fill StatementLine.payment_id. The row kind comes from `type`
(else `reporting_category`); provider_ref is the source (ch_/pi_/re_/po_...) or else the
balance-transaction id (txn_...). Column names are matched case-insensitively.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

import msgspec

from apss.channels.base import (
    CallbackEvent,
    DisputeReport,
    NextAction,
    PaymentCreated,
    PaymentReport,
    PaymentRequest,
    RefundRequest,
    RefundResult,
    StatementLine,
)
from apss.domain.money import CURRENCY_EXPONENTS
from apss.domain.payments import CallbackKind, PaymentStatus

__all__ = [
    "DISPUTE_STATUSES",
    "Dispute",
    "dispute_status",
    "PAYMENT_ID_KEY",
    "REFUND_ID_KEY",
    "CheckoutSession",
    "Event",
    "PaymentIntent",
    "PaymentIntentSearch",
    "Refund",
    "RefundList",
    "StripeError",
    "checkout_session_params",
    "decimal_to_minor",
    "error_code",
    "error_summary",
    "events_from",
    "form_encode",
    "from_stripe_amount",
    "payment_created",
    "payment_intent_report",
    "payment_intent_status",
    "SessionList",
    "closed_session",
    "refund_params",
    "refund_result",
    "off_session_params",
    "saved_method_ref",
    "search_query",
    "split_saved_method_ref",
    "session_expires_at_s",
    "session_report",
    "statement_lines",
    "stripe_takes_currency",
    "to_stripe_amount",
]

PAYMENT_ID_KEY = "apss_payment_id"
REFUND_ID_KEY = "apss_refund_id"
_STATEMENT_ROWS_MAX = 500_000

# Stripe's amount is whole units where ISO has decimals only for these (see module docstring).
_WIRE_FACTOR = {"ISK": 100}
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
_NOT_AT_STRIPE = frozenset({"IQD", "LYD"})
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
# Checkout takes `expires_at` from 30 minutes to 24 hours after creation; a minute's margin on
# each side keeps our clock's skew and the request's transit inside Stripe's window.
_SESSION_EXPIRY_S_MIN = 30 * 60
_SESSION_EXPIRY_S_MAX = 24 * 3600
_SESSION_EXPIRY_MARGIN_S = 60


# --- wire types. Not forbid_unknown_fields: Stripe adds fields to its objects without a
# version bump, and a strict decoder would turn every addition into an outage.

class _Wire(msgspec.Struct, frozen=True):
    pass  # msgspec's kw_only covers only a class's own fields: each subclass declares it


class LastPaymentError(_Wire, kw_only=True):
    type: str | None = None
    code: str | None = None
    decline_code: str | None = None


class PaymentIntent(_Wire, kw_only=True):
    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    metadata: dict[str, str] = {}
    last_payment_error: LastPaymentError | None = None
    latest_charge: str | None = None  # ch_, once a charge was attempted
    customer: str | None = None  # cus_
    payment_method: str | None = None  # pm_, once the payer gave one
    setup_future_usage: str | None = None  # "off_session" when the method was saved for renewals


class CheckoutSession(_Wire, kw_only=True):
    id: str
    currency: str | None = None
    amount_total: int | None = None
    url: str | None = None
    status: str | None = None
    payment_status: str | None = None
    # A pi_ id, an expanded PaymentIntent (`expand[]=payment_intent`), or null: with recent API
    # versions a mode=payment session has no PaymentIntent until the payer confirms.
    payment_intent: str | PaymentIntent | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] = {}
    expires_at: int | None = None
    customer: str | None = None  # cus_, set when it completes (customer_creation=always)


class SessionList(_Wire, kw_only=True):
    data: list[CheckoutSession] = []


class Refund(_Wire, kw_only=True):
    id: str
    amount: int
    currency: str
    status: str | None = None
    payment_intent: str | None = None
    charge: str | None = None
    failure_reason: str | None = None
    metadata: dict[str, str] = {}


class _RefundList(_Wire, kw_only=True):
    data: list[Refund] = []


class _Charge(_Wire, kw_only=True):
    id: str
    payment_intent: str | None = None
    metadata: dict[str, str] = {}
    # Not included by default since API version 2022-11-15: then charge.refunded carries no refund.
    refunds: _RefundList | None = None


class _EvidenceDetails(_Wire, kw_only=True):
    due_by: int | None = None


class Dispute(_Wire, kw_only=True):
    id: str
    amount: int
    currency: str
    charge: str | None = None
    payment_intent: str | None = None
    reason: str | None = None
    status: str = "needs_response"
    evidence_details: _EvidenceDetails | None = None


# Every Stripe dispute status, onto ours (apss/domain/disputes.py). `warning_*` are inquiries (no
# money moved); `prevented` and a closed inquiry took nothing: won. Appeals follow a lost dispute,
# which stays lost here. A status Stripe adds later is `under_review`: open, nothing booked on it.
DISPUTE_STATUSES: dict[str, str] = {
    "needs_response": "needs_response", "under_review": "under_review", "won": "won", "lost": "lost",
    "warning_needs_response": "needs_response", "warning_under_review": "under_review", "warning_closed": "won",
    "prevented": "won", "appeal_needs_response": "lost", "appeal_under_review": "lost",
}


def dispute_status(status: str) -> str:
    return DISPUTE_STATUSES.get(status, "under_review")


class _EventData(_Wire, kw_only=True):
    object: msgspec.Raw


class Event(_Wire, kw_only=True):
    id: str
    object: str
    type: str
    data: _EventData


class _ErrorBody(_Wire, kw_only=True):
    type: str | None = None
    code: str | None = None
    decline_code: str | None = None
    param: str | None = None


class StripeError(_Wire, kw_only=True):
    error: _ErrorBody


class PaymentIntentSearch(_Wire, kw_only=True):
    data: list[PaymentIntent]


class RefundList(_Wire, kw_only=True):
    data: list[Refund] = []


# --- amounts


def stripe_takes_currency(currency: str) -> bool:
    return currency in CURRENCY_EXPONENTS and currency not in _NOT_AT_STRIPE


def to_stripe_amount(amount: int, currency: str) -> int:
    """APSS minor units -> Stripe's `amount`; ValueError for what Stripe cannot take."""
    assert isinstance(amount, int) and amount >= 0, amount
    if not stripe_takes_currency(currency):
        raise ValueError(f"Stripe does not take the currency {currency}")
    if currency in _THREE_DECIMAL and amount % 10 != 0:
        raise ValueError(f"Stripe takes {currency} amounts in multiples of 10 thousandths only")
    wire = amount * _WIRE_FACTOR.get(currency, 1)
    assert wire >= amount
    return wire


def from_stripe_amount(wire: int, wire_currency: str) -> tuple[int, str]:
    """Stripe's (`amount`, lower-case `currency`) -> APSS (minor units, upper-case code)."""
    currency = wire_currency.upper()
    if not stripe_takes_currency(currency):
        raise ValueError(f"unexpected currency {wire_currency!r} from Stripe")
    factor = _WIRE_FACTOR.get(currency, 1)
    if wire % factor != 0:
        raise ValueError(f"a Stripe {currency} amount must be a multiple of {factor}")
    return wire // factor, currency


_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")


def decimal_to_minor(text: str, currency: str) -> int:
    """`"19.99"` major units -> 1999 minor units, exactly; ValueError on too many decimals."""
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise ValueError(f"unknown currency {currency!r}")
    cleaned = text.strip()
    if not _DECIMAL_RE.match(cleaned):
        raise ValueError(f"not a decimal amount: {text!r}")
    try:
        scaled = Decimal(cleaned).scaleb(exponent)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only plain decimals
        raise ValueError(f"not a decimal amount: {text!r}") from exc
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{text!r} has more decimals than {currency} allows ({exponent})")
    return int(scaled)


# --- outgoing requests


def form_encode(params: Mapping[str, Any]) -> str:
    """Stripe's nested form encoding (`a[b][0][c]=v`), byte-identical to stripe-python's
    `urlencode(list(_api_encode(params)))` with brackets left literal, as it sends them."""
    pairs = list(_flatten("", params))
    return urlencode(pairs).replace("%5B", "[").replace("%5D", "]")


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _flatten(f"{prefix}[{key}]" if prefix else str(key), sub)
    elif isinstance(value, (list, tuple)):
        for index, sub in enumerate(value):
            yield from _flatten(f"{prefix}[{index}]", sub)
    elif value is None:
        return  # Stripe's encoder omits None: "not sent", not "empty"
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    else:
        assert isinstance(value, (str, int)), type(value)
        yield prefix, str(value)


def session_expires_at_s(expires_at_s: int, *, now_s: int) -> int:
    """Checkout's `expires_at` for a reservation ending at `expires_at_s`: never earlier than
    Stripe's 30-minute minimum (the payer may then pay a little after the reservation ended: the
    closer expires the session when the order ends, and a late payment meets the late-payment
    policy), never later than its 24-hour maximum."""
    earliest_s = now_s + _SESSION_EXPIRY_S_MIN + _SESSION_EXPIRY_MARGIN_S
    latest_s = now_s + _SESSION_EXPIRY_S_MAX - _SESSION_EXPIRY_MARGIN_S
    chosen_s = min(max(expires_at_s, earliest_s), latest_s)
    assert now_s + _SESSION_EXPIRY_S_MIN < chosen_s < now_s + _SESSION_EXPIRY_S_MAX
    return chosen_s


def checkout_session_params(request: PaymentRequest, *, return_url: str, now_s: int) -> dict[str, Any]:
    """The nested parameters of `POST /v1/checkout/sessions` for one APSS payment."""
    assert request.amount > 0 and return_url
    wire_amount = to_stripe_amount(request.amount, request.currency)
    ours = {PAYMENT_ID_KEY: request.payment_id, "apss_order_id": request.order_id}
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [{
            "price_data": {
                "currency": request.currency.lower(),
                "unit_amount": wire_amount,
                "product_data": {"name": request.description or request.order_id},
            },
            "quantity": 1,
        }],
        "success_url": return_url,
        "cancel_url": return_url,
        "client_reference_id": request.payment_id,
        "metadata": ours,
        # Copied onto the PaymentIntent, so payment_intent.* events echo our payment id.
        "payment_intent_data": {"metadata": {PAYMENT_ID_KEY: request.payment_id}},
    }
    if request.expires_at_s is not None:
        params["expires_at"] = session_expires_at_s(request.expires_at_s, now_s=now_s)
    if request.save_method:
        # A subscription's first order: Checkout creates a Customer (a mode=payment session makes
        # none unless told) and attaches the payment method to it for off-session renewals.
        params["customer_creation"] = "always"
        params["payment_intent_data"]["setup_future_usage"] = "off_session"
    if request.three_ds:
        # A risk rule asked for 3-D Secure: Stripe runs it whenever the card supports it.
        params["payment_method_options"] = {"card": {"request_three_d_secure": "any"}}
    return params


def off_session_params(request: PaymentRequest, *, customer: str, payment_method: str) -> dict[str, Any]:
    """`POST /v1/payment_intents` for a renewal: confirmed at once on the saved method, the
    payer absent (`off_session`), with our ids in metadata so payment_intent.* events map back."""
    assert request.amount > 0 and customer.startswith("cus_") and payment_method.startswith("pm_")
    return {
        "amount": to_stripe_amount(request.amount, request.currency),
        "currency": request.currency.lower(),
        "customer": customer,
        "payment_method": payment_method,
        "off_session": True,
        "confirm": True,
        "description": request.description or request.order_id,
        "metadata": {PAYMENT_ID_KEY: request.payment_id, "apss_order_id": request.order_id},
    }


def saved_method_ref(*, customer: str | None, intent: str | PaymentIntent | None) -> str | None:
    """The neutral saved_method_ref of a paid payment that saved its method: `cus_...:pm_...`.
    A webhook's Checkout Session names its PaymentIntent but not the payment method: then
    `cus_...:pi_...`, and the first renewal reads the method from that PaymentIntent."""
    if isinstance(intent, PaymentIntent):
        if intent.setup_future_usage != "off_session":
            return None
        customer = intent.customer or customer
        method = intent.payment_method or intent.id
    else:
        method = intent
    if not customer or not method:
        return None
    return f"{customer}:{method}"


def split_saved_method_ref(ref: str) -> tuple[str, str]:
    """(`cus_...`, `pm_...` or `pi_...`); ValueError for anything else (a ref made before
    renewals were supported is a bare pi_/cs_ id: it saved no method)."""
    customer, _, method = ref.partition(":")
    if not customer.startswith("cus_") or not method.startswith(("pm_", "pi_")):
        raise ValueError("not a saved stripe payment method (cus_...:pm_...)")
    return customer, method


def refund_params(request: RefundRequest, *, payment_intent: str) -> dict[str, Any]:
    assert payment_intent.startswith("pi_"), payment_intent
    params: dict[str, Any] = {
        "payment_intent": payment_intent,
        "amount": to_stripe_amount(request.amount, request.currency),
        "metadata": {REFUND_ID_KEY: request.refund_id, PAYMENT_ID_KEY: request.payment_id},
    }
    # Stripe's `reason` is an enum; free text goes to metadata (500 chars at most there).
    if request.reason in _REFUND_REASONS:
        params["reason"] = request.reason
    elif request.reason:
        params["metadata"]["apss_reason"] = request.reason[:500]
    return params


_PAYMENT_ID_RE = re.compile(r"^[a-z0-9_]{1,64}$")


def search_query(payment_id: str) -> str:
    """Stripe Search for the PaymentIntent carrying our id (quotes are safe: ids are [a-z0-9_])."""
    assert _PAYMENT_ID_RE.match(payment_id), payment_id
    return f"metadata['{PAYMENT_ID_KEY}']:'{payment_id}'"


# --- answers


def payment_created(session: CheckoutSession, *, amount: int, currency: str) -> PaymentCreated:
    """provider_ref is the PaymentIntent id (pi_) when Stripe already made one (older API
    versions), else the session id (cs_): events still map back through metadata, and refund
    and query resolve a cs_ to its PaymentIntent."""
    if session.url is None:
        raise ValueError("the checkout session has no url")
    if session.amount_total is not None and session.currency is not None:
        if from_stripe_amount(session.amount_total, session.currency) != (amount, currency):
            raise ValueError("the checkout session's amount or currency differs from ours")
    ref = _intent_id(session.payment_intent) or session.id
    created = PaymentCreated(
        provider_ref=ref,
        status=PaymentStatus.REQUIRES_ACTION,
        next_action=NextAction(type="redirect", url=session.url),
        # The session id is kept beside a pi_ ref: expiring the session needs it.
        provider_refs=[session.id] if ref != session.id else [],
    )
    assert created.provider_ref
    return created


def _intent_id(value: str | PaymentIntent | None) -> str | None:
    if isinstance(value, PaymentIntent):
        return value.id
    return value


def _failure_code(intent: PaymentIntent) -> str | None:
    error = intent.last_payment_error
    if error is None:
        return None
    return error.decline_code or error.code or error.type or "payment_failed"


def payment_intent_status(intent: PaymentIntent) -> PaymentStatus:
    """Every PaymentIntent.status, plus the `unknown` fallback."""
    match intent.status:
        case "requires_payment_method":
            # The first state, and also where a declined attempt returns to: with an error
            # recorded it is a failure (the payer may still retry, and FAILED may still succeed).
            if intent.last_payment_error is not None:
                return PaymentStatus.FAILED
            return PaymentStatus.REQUIRES_ACTION
        case "requires_confirmation" | "requires_action":
            return PaymentStatus.REQUIRES_ACTION
        case "processing":
            return PaymentStatus.PROCESSING
        case "requires_capture":
            # Authorized, not captured: no money has moved yet (APSS uses automatic capture).
            return PaymentStatus.PROCESSING
        case "canceled":
            return PaymentStatus.CANCELED
        case "succeeded":
            return PaymentStatus.SUCCEEDED
        case _:
            return PaymentStatus.UNKNOWN


def payment_intent_report(intent: PaymentIntent) -> PaymentReport:
    status = payment_intent_status(intent)
    wire = intent.amount_received if status is PaymentStatus.SUCCEEDED else intent.amount
    amount, currency = from_stripe_amount(wire, intent.currency)
    return PaymentReport(
        status=status,
        provider_ref=intent.id,
        amount=amount,
        currency=currency,
        failure_code=_failure_code(intent) if status is PaymentStatus.FAILED else None,
        provider_refs=[intent.latest_charge] if intent.latest_charge else [],
        saved_method_ref=saved_method_ref(customer=None, intent=intent) if status is PaymentStatus.SUCCEEDED else None,
    )


def _session_status(session: CheckoutSession) -> PaymentStatus:
    """Every Checkout Session (status, payment_status) pair, plus the `unknown` fallback."""
    match (session.status, session.payment_status):
        case ("open", _):
            return PaymentStatus.REQUIRES_ACTION
        case ("complete", "paid" | "no_payment_required"):
            return PaymentStatus.SUCCEEDED
        case ("complete", "unpaid"):
            # Completed with a delayed method (bank debit): the money is still on its way.
            return PaymentStatus.PROCESSING
        case ("expired", _):
            return PaymentStatus.CANCELED
        case _:
            return PaymentStatus.UNKNOWN


def session_report(session: CheckoutSession) -> PaymentReport:
    if isinstance(session.payment_intent, PaymentIntent):
        report = payment_intent_report(session.payment_intent)  # the finer-grained of the two
        saved = saved_method_ref(customer=session.customer, intent=session.payment_intent)
        return msgspec.structs.replace(report, provider_refs=[session.id, *report.provider_refs],
                                       saved_method_ref=saved if report.status is PaymentStatus.SUCCEEDED else None)
    amount = currency = None
    if session.amount_total is not None and session.currency is not None:
        amount, currency = from_stripe_amount(session.amount_total, session.currency)
    return PaymentReport(
        status=_session_status(session),
        provider_ref=session.payment_intent or session.id,
        amount=amount,
        currency=currency,
        provider_refs=[session.id] if session.payment_intent else [],
        saved_method_ref=saved_method_ref(customer=session.customer, intent=session.payment_intent)
        if _session_status(session) is PaymentStatus.SUCCEEDED else None,
    )


def closed_session(session: CheckoutSession) -> bool:
    """After an expire was refused: True when the session is closed without a payment (already
    expired: nothing left to do), False while it is still open. A completed session was paid:
    ValueError, for the caller to say so (it is the late-payment policy's, not the closer's)."""
    match session.status:
        case "expired":
            return True
        case "complete":
            raise ValueError("the checkout session is complete: the payer paid")
        case _:
            return False


def refund_result(refund: Refund) -> RefundResult:
    """Every Refund.status, plus the fallback: an unknown status is still pending."""
    match refund.status:
        case "succeeded":
            return RefundResult(provider_refund_ref=refund.id, status="succeeded")
        case "failed":
            code = refund.failure_reason or "refund_failed"
            return RefundResult(provider_refund_ref=refund.id, status="failed", failure_code=code)
        case "canceled":
            return RefundResult(provider_refund_ref=refund.id, status="failed", failure_code="canceled")
        case "pending" | "requires_action":
            return RefundResult(provider_refund_ref=refund.id, status="pending")
        case _:
            # Never guessed final: the refund.updated event or a later query settles it.
            return RefundResult(provider_refund_ref=refund.id, status="pending")


def error_summary(body: bytes) -> str:
    """`type/code/decline_code/param` of a Stripe error body. Stripe's `message` is left out: it
    may quote a (masked) key or card details, and exception messages must carry no secret."""
    try:
        error = msgspec.json.decode(body, type=StripeError).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "unreadable error body"
    parts = [error.type, error.code, error.decline_code, error.param]
    return "/".join(_token(p) for p in parts if p) or "no error code"


def error_code(body: bytes) -> str:
    """The most specific code of a Stripe error body (decline_code, code, then type)."""
    try:
        error = msgspec.json.decode(body, type=StripeError).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "stripe_error"
    return _token(error.decline_code or error.code or error.type or "stripe_error")


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\[\]-]", "?", text)[:80]


# --- events


def events_from(event: Event) -> list[CallbackEvent]:
    """Neutral events for one verified Stripe event; [] for types APSS does not act on.
    Raises ValueError / msgspec errors when an acted-on event has the wrong shape."""
    handler = _HANDLERS.get(event.type)
    if handler is None:
        return []
    events = handler(event.id, event.data.object)
    assert all(e.event_id.startswith(event.id) for e in events)
    return events


def _our_payment_id(*metadatas: Mapping[str, str]) -> str | None:
    for metadata in metadatas:
        if metadata.get(PAYMENT_ID_KEY):
            return metadata[PAYMENT_ID_KEY]
    return None


def _session_completed(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    session = msgspec.json.decode(raw, type=CheckoutSession)
    # "unpaid" means a delayed method is still settling: async_payment_succeeded follows.
    if session.payment_status not in ("paid", "no_payment_required"):
        return []
    return [_session_event(event_id, session, CallbackKind.PAYMENT_SUCCEEDED)]


def _session_async_failed(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    session = msgspec.json.decode(raw, type=CheckoutSession)
    return [_session_event(event_id, session, CallbackKind.PAYMENT_FAILED)]


def _session_async_succeeded(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    session = msgspec.json.decode(raw, type=CheckoutSession)
    return [_session_event(event_id, session, CallbackKind.PAYMENT_SUCCEEDED)]


def _session_event(event_id: str, session: CheckoutSession, kind: CallbackKind) -> CallbackEvent:
    if session.amount_total is None or session.currency is None:
        raise ValueError("a checkout session event without amount_total or currency")
    amount, currency = from_stripe_amount(session.amount_total, session.currency)
    failure = "async_payment_failed" if kind is CallbackKind.PAYMENT_FAILED else None
    intent = _intent_id(session.payment_intent)
    return CallbackEvent(
        event_id=event_id,
        kind=kind,
        payment_id=_our_payment_id(session.metadata) or session.client_reference_id,
        provider_ref=intent or session.id,
        amount=amount,
        currency=currency,
        failure_code=failure,
        provider_refs=[session.id] if intent else [],
        saved_method_ref=saved_method_ref(customer=session.customer, intent=session.payment_intent)
        if kind is CallbackKind.PAYMENT_SUCCEEDED else None,
    )


def _intent_succeeded(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    intent = msgspec.json.decode(raw, type=PaymentIntent)
    amount, currency = from_stripe_amount(intent.amount_received or intent.amount, intent.currency)
    return [CallbackEvent(
        event_id=event_id,
        kind=CallbackKind.PAYMENT_SUCCEEDED,
        payment_id=_our_payment_id(intent.metadata),
        provider_ref=intent.id,
        amount=amount,
        currency=currency,
        provider_refs=[intent.latest_charge] if intent.latest_charge else [],
        saved_method_ref=saved_method_ref(customer=None, intent=intent),
    )]


def _intent_failed(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    intent = msgspec.json.decode(raw, type=PaymentIntent)
    amount, currency = from_stripe_amount(intent.amount, intent.currency)
    return [CallbackEvent(
        event_id=event_id,
        kind=CallbackKind.PAYMENT_FAILED,
        payment_id=_our_payment_id(intent.metadata),
        provider_ref=intent.id,
        amount=amount,
        currency=currency,
        failure_code=_failure_code(intent) or "payment_failed",
    )]


def _refund_event(event_id: str, refund: Refund, *, charge_metadata: Mapping[str, str]) -> CallbackEvent | None:
    result = refund_result(refund)
    if result.status == "pending":
        return None
    amount, currency = from_stripe_amount(refund.amount, refund.currency)
    return CallbackEvent(
        event_id=event_id,
        kind=CallbackKind.REFUND_SUCCEEDED if result.status == "succeeded" else CallbackKind.REFUND_FAILED,
        payment_id=_our_payment_id(refund.metadata, charge_metadata),
        provider_ref=refund.payment_intent or refund.charge,
        amount=amount,
        currency=currency,
        failure_code=result.failure_code,
        refund_id=refund.metadata.get(REFUND_ID_KEY),
        provider_refund_ref=refund.id,
    )


def _refund_object(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    refund = msgspec.json.decode(raw, type=Refund)
    event = _refund_event(event_id, refund, charge_metadata={})
    return [] if event is None else [event]


def _charge_refunded(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
    charge = msgspec.json.decode(raw, type=_Charge)
    refunds = charge.refunds.data if charge.refunds is not None else []
    events = []
    for refund in refunds:
        # One Stripe event may carry several refunds; each neutral event needs its own id
        # for de-duplication, stable across redeliveries of the same Stripe event.
        event = _refund_event(f"{event_id}:{refund.id}", refund, charge_metadata=charge.metadata)
        if event is not None:
            events.append(event)
    return events


def _dispute_event(kind: CallbackKind) -> Callable[[str, msgspec.Raw], list[CallbackEvent]]:
    """charge.dispute.created / .updated / .closed: the dispute object, in neutral terms."""

    def convert(event_id: str, raw: msgspec.Raw) -> list[CallbackEvent]:
        dispute = msgspec.json.decode(raw, type=Dispute)
        amount, currency = from_stripe_amount(dispute.amount, dispute.currency)
        due_by = dispute.evidence_details.due_by if dispute.evidence_details else None
        return [CallbackEvent(
            event_id=event_id,
            kind=kind,
            provider_ref=dispute.payment_intent or dispute.charge,
            provider_refs=[dispute.charge] if dispute.charge and dispute.payment_intent else [],
            amount=amount,
            currency=currency,
            failure_code=dispute.reason,
            dispute=DisputeReport(provider_dispute_id=dispute.id, status=dispute_status(dispute.status),
                                  reason=dispute.reason, evidence_due_by_s=due_by,
                                  inquiry=dispute.status.startswith("warning_")),
        )]

    return convert


_HANDLERS: dict[str, Callable[[str, msgspec.Raw], list[CallbackEvent]]] = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": _session_async_succeeded,
    "checkout.session.async_payment_failed": _session_async_failed,
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "charge.refunded": _charge_refunded,
    "charge.refund.updated": _refund_object,
    "refund.created": _refund_object,
    "refund.updated": _refund_object,
    "refund.failed": _refund_object,
    "charge.dispute.created": _dispute_event(CallbackKind.DISPUTE_CREATED),
    "charge.dispute.updated": _dispute_event(CallbackKind.DISPUTE_UPDATED),
    "charge.dispute.closed": _dispute_event(CallbackKind.DISPUTE_CLOSED),
}


# --- statements

_KINDS: dict[str, str] = {
    **dict.fromkeys(("charge", "payment"), "payment"),
    **dict.fromkeys(("refund", "payment_refund"), "refund"),
    **dict.fromkeys(("stripe_fee", "stripe_fx_fee", "application_fee", "tax_fee", "fee"), "fee"),
    **dict.fromkeys((
        "adjustment", "refund_failure", "payment_failure_refund", "payment_reversal", "dispute",
        "dispute_reversal", "other_adjustment", "reserve_transaction", "reserved_funds",
        "partial_capture_reversal",
    ), "adjustment"),
    **dict.fromkeys((
        "payout", "payout_cancel", "payout_failure", "payout_reversal",
        "payout_minimum_balance_hold", "payout_minimum_balance_release",
    ), "payout"),
}

_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "balance_transaction_id"),
    "type": ("type",),
    "category": ("reporting_category",),
    "source": ("source", "source_id"),
    "amount": ("amount", "gross"),
    "fee": ("fee",),
    "currency": ("currency",),
    "created": ("created (utc)", "created_utc", "created"),
    "payment_id": (
        "payment_metadata[apss_payment_id]", "metadata[apss_payment_id]", "apss_payment_id (metadata)",
    ),
}


def statement_lines(data: bytes) -> list[StatementLine]:
    """Parse a Stripe balance-transaction CSV (see the module docstring); ValueError names the line."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header = next(reader, None)
    if header is None:
        return []
    columns = _columns(header)
    integer_units = "amount" in [h.strip() for h in header]  # the API's field name, lower-case
    lines: list[StatementLine] = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(lines) >= _STATEMENT_ROWS_MAX:
            raise ValueError(f"more than {_STATEMENT_ROWS_MAX} statement rows")
        try:
            lines.append(_statement_line(row, columns, integer_units=integer_units))
        except (ValueError, IndexError) as exc:
            raise ValueError(f"statement line {number}: {exc}") from None
    return lines


def _columns(header: list[str]) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    columns: dict[str, int] = {}
    for field, names in _ALIASES.items():
        for name in names:
            if name in lowered:
                columns[field] = lowered.index(name)
                break
    missing = {"amount", "currency"} - columns.keys()
    if missing or not ({"source", "id"} & columns.keys()) or not ({"type", "category"} & columns.keys()):
        raise ValueError(f"not a Stripe balance-transaction CSV header: {header[:12]}")
    return columns


def _statement_line(row: list[str], columns: dict[str, int], *, integer_units: bool) -> StatementLine:
    def cell(field: str) -> str:
        return row[columns[field]].strip() if field in columns and columns[field] < len(row) else ""

    currency = cell("currency").upper()
    if currency not in CURRENCY_EXPONENTS:
        raise ValueError(f"unknown currency {cell('currency')!r}")
    amount = _statement_amount(cell("amount"), currency, integer_units=integer_units)
    fee = _statement_amount(cell("fee") or "0", currency, integer_units=integer_units)
    provider_ref = cell("source") or cell("id")
    if not provider_ref:
        raise ValueError("a row with neither source nor id")
    kind = _KINDS.get((cell("type") or cell("category")).lower(), "other")
    return StatementLine(
        provider_ref=provider_ref,
        kind=kind,  # type: ignore[arg-type]  # _KINDS values are StatementLine kinds
        amount=amount,
        fee=fee,
        currency=currency,
        occurred_at_s=_timestamp_s(cell("created")),
        payment_id=cell("payment_id") or None,
    )


def _statement_amount(text: str, currency: str, *, integer_units: bool) -> int:
    if not integer_units:
        return decimal_to_minor(text, currency)
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"not an integer amount: {text!r}")
    wire = int(text)
    minor, _ = from_stripe_amount(abs(wire), currency.lower())
    return minor if wire >= 0 else -minor


def _timestamp_s(text: str) -> int | None:
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # Stripe's export columns are UTC
    return int(parsed.timestamp())
