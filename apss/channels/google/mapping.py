"""Pure conversion of the Play Developer API's resources (androidpublisher v3: ProductPurchase,
SubscriptionPurchaseV2, VoidedPurchase) and of real-time developer notifications into neutral
StorePurchase / StoreNotification values. Google's int64 fields are JSON strings."""

from __future__ import annotations

import base64
import binascii
import calendar
import csv
import io
from datetime import datetime
from typing import Any

import msgspec

from apss.channels.base import StatementLine, StoreAction, StorePurchase
from apss.clock import parse_rfc3339
from apss.domain.money import report_decimal_to_minor
from apss.errors import CallbackRejected

__all__ = ["ACK_ACKNOWLEDGED", "EARNINGS_COLUMNS", "DeveloperNotification", "earnings_lines", "ProductPurchase", "PushBody", "ServiceAccount",
           "SubscriptionPurchaseV2", "Token", "VoidedPurchase", "VoidedPurchases", "ApiError", "ONE_TIME_TYPES",
           "SUBSCRIPTION_TYPES", "decode_notification", "part_field", "product_purchase", "service_account", "subscription_purchase",
           "subscription_action", "voided_purchase"]

# ProductPurchase.purchaseState / purchaseType / acknowledgementState / consumptionState.
_PURCHASED, _CANCELED, _PENDING = 0, 1, 2
_TEST = 0  # purchaseType 0: a license tester's purchase, never charged (1 promo, 2 rewarded)
# SubscriptionPurchaseV2.subscriptionState: who is entitled now.
_ENTITLED = frozenset({"SUBSCRIPTION_STATE_ACTIVE", "SUBSCRIPTION_STATE_IN_GRACE_PERIOD",
                       "SUBSCRIPTION_STATE_CANCELED"})  # canceled: auto-renew off, paid until expiryTime
_SUBSCRIPTION_PENDING = "SUBSCRIPTION_STATE_PENDING"
ACK_ACKNOWLEDGED = "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
_QUANTITY_MAX = 1_000

# oneTimeProductNotification.notificationType
ONE_TIME_TYPES = {1: "ONE_TIME_PRODUCT_PURCHASED", 2: "ONE_TIME_PRODUCT_CANCELED"}
# subscriptionNotification.notificationType (every documented value; another is UNKNOWN_n, recorded)
SUBSCRIPTION_TYPES = {
    1: "SUBSCRIPTION_RECOVERED", 2: "SUBSCRIPTION_RENEWED", 3: "SUBSCRIPTION_CANCELED", 4: "SUBSCRIPTION_PURCHASED",
    5: "SUBSCRIPTION_ON_HOLD", 6: "SUBSCRIPTION_IN_GRACE_PERIOD", 7: "SUBSCRIPTION_RESTARTED",
    8: "SUBSCRIPTION_PRICE_CHANGE_CONFIRMED", 9: "SUBSCRIPTION_DEFERRED", 10: "SUBSCRIPTION_PAUSED",
    11: "SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED", 12: "SUBSCRIPTION_REVOKED", 13: "SUBSCRIPTION_EXPIRED",
    19: "SUBSCRIPTION_PRICE_CHANGE_UPDATED", 20: "SUBSCRIPTION_PENDING_PURCHASE_CANCELED",
}
# What a subscription notification asks, if the API's subscriptionState (read for every
# notification: the push is a hint) agrees: a notification whose state the API does not show (a
# forged push, or one overtaken by a later change) is recorded. A new paid period (a new
# latestOrderId: RENEWED, RECOVERED from account hold, PURCHASED) is delivered to the player of
# the purchase token if APSS has not delivered that order; the rest move the APSS subscription of
# the token (services/iap): in grace period (entitled to the API's expiryTime, which Google moves
# to the end of the grace period), on hold (no entitlement), canceled (auto-renew off, entitled to
# expiryTime: cancel_at_period_end), restarted (auto-renew on again), expired or revoked (over).
# Refunds come as voided-purchase notifications. PAUSED and the rest are recorded: a paused
# subscription's entitlement simply runs out at its expiryTime.
_ACTIVE, _GRACE, _HOLD = "SUBSCRIPTION_STATE_ACTIVE", "SUBSCRIPTION_STATE_IN_GRACE_PERIOD", "SUBSCRIPTION_STATE_ON_HOLD"
_CANCELED_STATE, _EXPIRED_STATE = "SUBSCRIPTION_STATE_CANCELED", "SUBSCRIPTION_STATE_EXPIRED"
_SUBSCRIPTION_ACTIONS: dict[str, tuple[frozenset[str], StoreAction]] = {
    "SUBSCRIPTION_RENEWED": (_ENTITLED, "deliver"),
    "SUBSCRIPTION_RECOVERED": (_ENTITLED, "deliver"),
    "SUBSCRIPTION_PURCHASED": (_ENTITLED, "deliver"),
    "SUBSCRIPTION_IN_GRACE_PERIOD": (frozenset({_GRACE}), "grace_period"),
    "SUBSCRIPTION_ON_HOLD": (frozenset({_HOLD}), "billing_retry"),
    "SUBSCRIPTION_CANCELED": (frozenset({_CANCELED_STATE}), "auto_renew_off"),
    "SUBSCRIPTION_RESTARTED": (frozenset({_ACTIVE}), "auto_renew_on"),
    "SUBSCRIPTION_EXPIRED": (frozenset({_EXPIRED_STATE}), "expire"),
    "SUBSCRIPTION_REVOKED": (frozenset({_EXPIRED_STATE}), "expire"),
}


def _invalid(message: str) -> CallbackRejected:
    return CallbackRejected(message, code="store_payload_invalid")


class ServiceAccount(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a service account's JSON key that APSS uses (the key has more)."""

    type: str
    client_email: str
    private_key: str
    private_key_id: str = ""
    token_uri: str = "https://oauth2.googleapis.com/token"


def service_account(text: str) -> ServiceAccount:
    try:
        account = msgspec.json.decode(text, type=ServiceAccount)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # No detail: the message of a failed decode could quote the key.
        raise CallbackRejected("the google channel's service_account is not a service account's JSON key",
                               code="store_settings_invalid") from None
    if account.type != "service_account" or not account.client_email or not account.private_key:
        raise CallbackRejected("the google channel's service_account is not a service account key",
                               code="store_settings_invalid")
    return account


class Token(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    expires_in: int = 3600
    token_type: str = "Bearer"


class _ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: int = 0
    message: str = ""
    status: str = ""


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    """Google's error document `{"error": {"code", "message", "status", "errors": [...]}}`, or
    OAuth's `{"error": "invalid_grant", "error_description"}` from the token endpoint."""

    error: _ErrorBody | str = ""
    error_description: str = ""


class ProductPurchase(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = "androidpublisher#productPurchase"
    purchaseTimeMillis: str
    purchaseState: int
    consumptionState: int = 0
    acknowledgementState: int = 0
    orderId: str | None = None  # absent for a license tester's purchase
    purchaseType: int | None = None  # absent for a real purchase
    quantity: int | None = None  # absent: 1
    regionCode: str | None = None
    productId: str | None = None
    purchaseToken: str | None = None


class _LineItem(msgspec.Struct, frozen=True, kw_only=True):
    productId: str
    expiryTime: str | None = None


class SubscriptionPurchaseV2(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = "androidpublisher#subscriptionPurchaseV2"
    subscriptionState: str
    lineItems: list[_LineItem]
    startTime: str | None = None
    latestOrderId: str | None = None
    acknowledgementState: str = "ACKNOWLEDGEMENT_STATE_PENDING"
    regionCode: str | None = None
    linkedPurchaseToken: str | None = None
    testPurchase: dict | None = None


class VoidedPurchase(msgspec.Struct, frozen=True, kw_only=True):
    purchaseToken: str
    orderId: str | None = None
    purchaseTimeMillis: str = "0"
    voidedTimeMillis: str = "0"
    voidedSource: int | None = None
    voidedReason: int | None = None
    voidedQuantity: int | None = None


class _TokenPagination(msgspec.Struct, frozen=True, kw_only=True):
    nextPageToken: str | None = None


class VoidedPurchases(msgspec.Struct, frozen=True, kw_only=True):
    voidedPurchases: list[VoidedPurchase] = []
    tokenPagination: _TokenPagination | None = None


def _millis(text: str | None, field: str) -> int:
    try:
        value = int(text) if text is not None else -1
    except ValueError:
        value = -1
    if value < 0:
        raise _invalid(f"{field} is not a time in milliseconds")
    return value


def _time(text: str | None, field: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise _invalid(f"{field} is not an RFC 3339 time") from None


def product_purchase(resource: ProductPurchase, *, token: str, product_id: str, package: str, currency: str,
                     now_ms: int) -> StorePurchase:
    """A one-time product's purchase: its token is its id (a license tester's has no orderId)."""
    if resource.purchaseState not in (_PURCHASED, _CANCELED, _PENDING):
        raise _invalid("purchaseState is not one of Google's")
    quantity = resource.quantity if resource.quantity is not None else 1
    if not 1 <= quantity <= _QUANTITY_MAX:
        raise _invalid("quantity is out of range")
    test = resource.purchaseType == _TEST
    return StorePurchase(
        transaction_id=token, original_transaction_id=token, product_id=product_id, app_id=package,
        environment="Test" if test else "Production", type="product", quantity=quantity,
        amount=0 if test else None, currency=currency,
        purchased_at_ms=_millis(resource.purchaseTimeMillis, "purchaseTimeMillis"), signed_at_ms=now_ms,
        revoked_at_ms=now_ms if resource.purchaseState == _CANCELED else None,
        state="pending" if resource.purchaseState == _PENDING else "purchased",
        acknowledged=resource.acknowledgementState == 1 or resource.consumptionState == 1,
        order_ref=resource.orderId,
    )


def subscription_purchase(resource: SubscriptionPurchaseV2, *, token: str, product_id: str | None, package: str,
                          currency: str, now_ms: int) -> StorePurchase:
    """A subscription's current paid period: the token is the chain (original), latestOrderId the
    period (each renewal has its own, `GPA.1234-5678-9012-34567..1`). `product_id` None: the first
    line item's (a notification names its own, which is not trusted)."""
    items = [item for item in resource.lineItems if product_id is None or item.productId == product_id]
    if not items:
        raise CallbackRejected("the purchase token is for another subscription", code="store_purchase_invalid")
    item = items[0]
    state = resource.subscriptionState
    test = resource.testPurchase is not None
    expires_at_ms = _time(item.expiryTime, "lineItems.expiryTime")
    return StorePurchase(
        transaction_id=resource.latestOrderId or token, original_transaction_id=token, product_id=item.productId,
        app_id=package, environment="Test" if test else "Production", type="subscription", quantity=1,
        amount=0 if test else None, currency=currency,
        purchased_at_ms=_time(resource.startTime, "startTime") or now_ms, signed_at_ms=now_ms,
        expires_at_ms=expires_at_ms,
        state="purchased" if state in _ENTITLED else "pending" if state == _SUBSCRIPTION_PENDING else "inactive",
        acknowledged=resource.acknowledgementState == ACK_ACKNOWLEDGED, order_ref=resource.latestOrderId,
        renews=True, grace_until_ms=expires_at_ms if state == _GRACE else None,
    )


def voided_purchase(voided: VoidedPurchase, *, subscription: bool, package: str, now_ms: int) -> StorePurchase:
    """A voided purchase as the API lists it: a one-time product's id is its token, a
    subscription period's its order id."""
    transaction_id = voided.orderId if subscription and voided.orderId else voided.purchaseToken
    return StorePurchase(
        transaction_id=transaction_id, original_transaction_id=voided.purchaseToken, product_id="", app_id=package,
        environment="Production", type="subscription" if subscription else "product",
        quantity=voided.voidedQuantity or 1, amount=None, currency=None,
        purchased_at_ms=_millis(voided.purchaseTimeMillis, "purchaseTimeMillis"), signed_at_ms=now_ms,
        revoked_at_ms=_millis(voided.voidedTimeMillis, "voidedTimeMillis"), order_ref=voided.orderId,
    )


class _PushMessage(msgspec.Struct, frozen=True, kw_only=True):
    data: str
    messageId: str
    publishTime: str = ""


class PushBody(msgspec.Struct, frozen=True, kw_only=True):
    """A Pub/Sub push: `{"message": {"data", "messageId", "publishTime", ...}, "subscription"}`."""

    message: _PushMessage
    subscription: str = ""


class DeveloperNotification(msgspec.Struct, frozen=True, kw_only=True):
    """The base64 `data` of the push, decoded: what Google says happened (a hint until the API confirms)."""

    version: str = "1.0"
    packageName: str
    eventTimeMillis: str
    oneTimeProductNotification: dict | None = None
    subscriptionNotification: dict | None = None
    voidedPurchaseNotification: dict | None = None
    testNotification: dict | None = None


def decode_notification(body: bytes) -> tuple[str, DeveloperNotification]:
    """(messageId, the DeveloperNotification) of a push body; refused when malformed."""
    try:
        push = msgspec.json.decode(body, type=PushBody)
        data = base64.b64decode(push.message.data, validate=True)
        notification = msgspec.json.decode(data, type=DeveloperNotification)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error, ValueError):
        raise _invalid("the push is not a Pub/Sub message carrying a DeveloperNotification") from None
    if not push.message.messageId:
        raise _invalid("the push has no messageId")
    _millis(notification.eventTimeMillis, "eventTimeMillis")
    return push.message.messageId, notification


def part_field(part: dict[str, Any], name: str, kind: type) -> Any:
    """A field of a notification part, checked (a string token, an int type)."""
    value = part.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not 1 <= len(value) <= 4096):
        raise _invalid(f"the notification's {name} is missing or malformed")
    return value


def subscription_action(kind: str, state: str) -> StoreAction:
    """What a subscription notification of `kind` asks, given the API's subscriptionState now."""
    states, action = _SUBSCRIPTION_ACTIONS.get(kind, (frozenset(), "record"))
    return action if state in states else "record"


# --- statements: the Play Console's earnings report (CSV) ------------------------------------
# One row per money movement, each naming its order id ("Description": GPA.xxxx-xxxx-xxxx-xxxxx,
# a renewal "..N"): the charge, Google's fee, tax Google remits, and their refunds. A charge and
# its fee become one payment line (amount the charge, fee what Google kept); a charge refund and
# its fee refund one refund line (negative amount, negative fee: given back). Amounts are read
# in the merchant currency (what Google pays out). Tax rows and anything else are kept as
# `other` lines (skipped by reconciliation).
EARNINGS_COLUMNS = ("Description", "Transaction Date", "Transaction Time", "Transaction Type", "Merchant Currency",
                    "Amount (Merchant Currency)")
_CHARGE = {"Charge": ("payment", "amount"), "Google fee": ("payment", "fee"),
           "Charge refund": ("refund", "amount"), "Google fee refund": ("refund", "fee")}
_ZONES = {"PST": -8 * 3600, "PDT": -7 * 3600, "UTC": 0, "GMT": 0}
_EARNINGS_ROWS_MAX = 1_000_000
_AMOUNT_MAX = 10**15


def _earnings_time(date: str, time_: str) -> int:
    """("Jan 5, 2026" or "2026-01-05", "1:02:03 PM PST") -> unix seconds."""
    clock, _, zone = time_.strip().rpartition(" ")
    if zone not in _ZONES:
        raise ValueError("a transaction time has no PST, PDT or UTC zone")
    for day_format in ("%b %d, %Y", "%Y-%m-%d"):
        try:
            day = datetime.strptime(date.strip(), day_format)
            break
        except ValueError:
            continue
    else:
        raise ValueError("a transaction date is neither 'Jan 5, 2026' nor '2026-01-05'")
    at = datetime.strptime(clock.strip(), "%I:%M:%S %p")
    local = calendar.timegm((day.year, day.month, day.day, at.hour, at.minute, at.second))
    return local - _ZONES[zone]


def earnings_lines(data: bytes) -> list[StatementLine]:
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    header = next(reader, None)
    if header is None or any(column not in [h.strip() for h in header] for column in EARNINGS_COLUMNS):
        raise ValueError(f"the report lacks the columns {', '.join(EARNINGS_COLUMNS)}")
    header = [h.strip() for h in header]
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    others: list[StatementLine] = []
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if number > _EARNINGS_ROWS_MAX:
            raise ValueError("the report has more rows than APSS reads")
        if len(cells) < len(EARNINGS_COLUMNS):
            raise ValueError(f"row {number} has {len(cells)} columns, the header {len(header)}")
        row = dict(zip(header, (cell.strip() for cell in cells), strict=False))
        currency = row["Merchant Currency"].upper()
        amount = report_decimal_to_minor(row["Amount (Merchant Currency)"], currency)
        at_s = _earnings_time(row["Transaction Date"], row["Transaction Time"])
        kind_part = _CHARGE.get(row["Transaction Type"])
        if kind_part is None or not row["Description"]:
            others.append(StatementLine(provider_ref=row["Description"], kind="other", amount=amount, fee=None,
                                        currency=currency, occurred_at_s=at_s))
            continue
        kind, part = kind_part
        line = merged.setdefault((row["Description"], kind), {"amount": 0, "fee": 0, "currency": currency,
                                                              "at_s": at_s, "charged": False})
        if line["currency"] != currency:
            raise ValueError(f"row {number}: one order's rows are in two merchant currencies")
        if part == "amount":
            line["amount"] += amount
            line["charged"], line["at_s"] = True, at_s
        else:
            line["fee"] -= amount  # Google's fee is negative in the report (money it kept)
    if any(abs(line["amount"]) + abs(line["fee"]) > _AMOUNT_MAX for line in merged.values()):
        raise ValueError("an order's amounts add up beyond what APSS books")
    lines = [StatementLine(provider_ref=order_id, kind=kind if line["charged"] else "fee", amount=line["amount"],
                           fee=line["fee"], currency=line["currency"], occurred_at_s=line["at_s"])
             for (order_id, kind), line in merged.items()]
    return lines + others
