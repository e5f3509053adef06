"""Pure conversion of Apple's decoded payloads (JWSTransactionDecodedPayload,
ResponseBodyV2DecodedPayload) into neutral StorePurchase / StoreNotification values."""

from __future__ import annotations

import calendar
import datetime as _dt
from typing import Any

from apss.channels.base import (
    StatementLine,
    StoreAction,
    StoreNotification,
    StorePurchase,
)
from apss.domain.money import CURRENCY_EXPONENTS, report_decimal_to_minor
from apss.errors import CallbackRejected

__all__ = ["ACTIONS", "AUTO_RENEWABLE", "FINANCIAL_COLUMNS", "IN_APP_TYPES", "PRODUCT_TYPES", "SALES_COLUMNS",
           "SUBTYPE_ACTIONS", "action_of", "check_app", "grace_until", "milliunits_to_minor", "notification",
           "notification_app", "purchase", "statement_lines"]

# Apple's `type` of a transaction, every variant (anything else is refused as unknown).
AUTO_RENEWABLE = "Auto-Renewable Subscription"
PRODUCT_TYPES = (AUTO_RENEWABLE, "Non-Consumable", "Consumable", "Non-Renewing Subscription")
# What each notification type asks of APSS; every other type is acknowledged and recorded
# (REFUND_DECLINED, CONSUMPTION_REQUEST, PRICE_INCREASE, RENEWAL_EXTENDED, TEST...).
ACTIONS: dict[str, StoreAction] = {
    "REFUND": "refund", "REVOKE": "revoke", "REFUND_REVERSED": "refund_reversed",
    # A purchase to deliver, to the player of its original transaction.
    "DID_RENEW": "deliver", "SUBSCRIBED": "deliver", "ONE_TIME_CHARGE": "deliver", "OFFER_REDEEMED": "deliver",
    # The subscription's state (services/iap applies them to the APSS subscription of the chain):
    # the renewal failed and Apple retries billing (no entitlement; with the GRACE_PERIOD subtype,
    # entitled to the renewal info's gracePeriodExpiresDate); the grace period ended while Apple
    # still retries; the subscription ended (VOLUNTARY, BILLING_RETRY, PRICE_INCREASE,
    # PRODUCT_NOT_FOR_SALE).
    "DID_FAIL_TO_RENEW": "billing_retry", "GRACE_PERIOD_EXPIRED": "billing_retry", "EXPIRED": "expire",
}
# Types whose action depends on the subtype; a subtype not listed is recorded.
SUBTYPE_ACTIONS: dict[tuple[str, str], StoreAction] = {
    ("DID_FAIL_TO_RENEW", "GRACE_PERIOD"): "grace_period",
    ("DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED"): "auto_renew_off",
    ("DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_ENABLED"): "auto_renew_on",
}
_QUANTITY_MAX = 1_000
_ID_CHARS_MAX = 128


def _invalid(message: str) -> CallbackRejected:
    return CallbackRejected(message, code="store_payload_invalid")


def _text(payload: dict, field: str, *, required: bool = True) -> str | None:
    value = payload.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= _ID_CHARS_MAX:
        raise _invalid(f"{field} is missing or not a short string")
    return value


def _ms(payload: dict, field: str, *, required: bool = True) -> int | None:
    value = payload.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"{field} is not a time in milliseconds")
    return value


def milliunits_to_minor(price: int, currency: str) -> int:
    """Apple's prices are in milliunits (4990 = 4.99 USD, 500000 = 500 JPY); minor units by
    integer arithmetic, half-even if a price has more precision than the currency."""
    assert price >= 0 and currency in CURRENCY_EXPONENTS
    quotient, remainder = divmod(price * 10 ** CURRENCY_EXPONENTS[currency], 1000)
    if remainder > 500 or (remainder == 500 and quotient % 2 == 1):
        quotient += 1
    return quotient


def _amount(payload: dict) -> tuple[int | None, str | None]:
    price, currency = payload.get("price"), payload.get("currency")
    if price is None and currency is None:
        return None, None  # transactions from before Apple added price (2023)
    if not isinstance(price, int) or isinstance(price, bool) or price < 0 or not isinstance(currency, str):
        raise _invalid("price and currency do not go together")
    if currency not in CURRENCY_EXPONENTS:
        raise CallbackRejected(f"the store's currency {currency!r} is not supported", code="currency_not_supported")
    return milliunits_to_minor(price, currency), currency


def purchase(payload: dict[str, Any]) -> StorePurchase:
    """A decoded (verified) signed transaction, checked field by field."""
    kind = payload.get("type")
    if kind not in PRODUCT_TYPES:
        raise _invalid("type is not one of Apple's product types")
    quantity = payload.get("quantity", 1)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= _QUANTITY_MAX:
        raise _invalid("quantity is out of range")
    amount, currency = _amount(payload)
    reason = payload.get("revocationReason")
    renews = kind == AUTO_RENEWABLE
    return StorePurchase(
        transaction_id=_text(payload, "transactionId"),
        original_transaction_id=_text(payload, "originalTransactionId"),
        product_id=_text(payload, "productId"), app_id=_text(payload, "bundleId"),
        environment=_text(payload, "environment"), type=kind, quantity=quantity, amount=amount, currency=currency,
        purchased_at_ms=_ms(payload, "purchaseDate"), signed_at_ms=_ms(payload, "signedDate"),
        reason=_text(payload, "transactionReason", required=False),
        expires_at_ms=_ms(payload, "expiresDate", required=renews),
        revoked_at_ms=_ms(payload, "revocationDate", required=False),
        revocation_reason=reason if isinstance(reason, int) and not isinstance(reason, bool) else None,
        ownership=_text(payload, "inAppOwnershipType", required=False),
        renews=renews, period_start_ms=_ms(payload, "purchaseDate") if renews else None,
    )


def grace_until(renewal_info: dict[str, Any], transaction: StorePurchase) -> int | None:
    """A decoded (verified) JWSRenewalInfoDecodedPayload of the transaction's chain: its
    gracePeriodExpiresDate (None outside a billing grace period)."""
    if renewal_info.get("originalTransactionId") != transaction.original_transaction_id:
        raise _invalid("the renewal info is of another subscription than the transaction")
    return _ms(renewal_info, "gracePeriodExpiresDate", required=False)


def action_of(kind: str, subtype: str | None) -> StoreAction:
    if subtype is not None and (kind, subtype) in SUBTYPE_ACTIONS:
        return SUBTYPE_ACTIONS[(kind, subtype)]
    if kind == "DID_CHANGE_RENEWAL_STATUS":
        return "record"
    return ACTIONS.get(kind, "record")


def check_app(app_id: Any, environment: Any, *, bundle_id: str, expected_environment: str) -> None:
    """The payload is for the merchant's app and environment, else a refusal naming which."""
    if app_id != bundle_id:
        raise CallbackRejected("the transaction is for another app", code="store_app_mismatch")
    if environment != expected_environment:
        raise CallbackRejected(f"the transaction is from the {environment} environment, the merchant's apple "
                               f"channel is set to {expected_environment}", code="store_environment_mismatch")


def notification_app(payload: dict[str, Any]) -> dict[str, Any]:
    """The part of a notification that names its app (`data`, or `summary` for bulk ones)."""
    for field in ("data", "summary"):
        part = payload.get(field)
        if isinstance(part, dict):
            return part
    raise _invalid("the notification names no app (no data or summary)")


def notification(payload: dict[str, Any], transaction: StorePurchase | None) -> StoreNotification:
    kind = _text(payload, "notificationType")
    subtype = _text(payload, "subtype", required=False)
    return StoreNotification(notification_id=_text(payload, "notificationUUID"), type=kind, subtype=subtype,
                             signed_at_ms=_ms(payload, "signedDate"), action=action_of(kind, subtype),
                             purchase=transaction)


# --- statements: the Summary Sales Report and the Financial Report (tab-separated) ----------
# Both total units per product and period (a day, a week, Apple's fiscal month) per storefront
# price: they name no transaction, so each line becomes an aggregate (StatementLine.product) of
# one product, period, currency and direction (sales or returns), matched against the orders of
# that sku (services/money/reconciliation.py). The columns are found by their header names.
SALES_COLUMNS = ("SKU", "Units", "Developer Proceeds", "Begin Date", "End Date", "Customer Currency",
                 "Currency of Proceeds", "Customer Price", "Product Type Identifier")
FINANCIAL_COLUMNS = ("Start Date", "End Date", "Vendor Identifier", "Quantity", "Partner Share",
                     "Partner Share Currency", "Sales or Return", "Customer Price", "Customer Currency",
                     "Product Type Identifier")
_SALES = {"product": "SKU", "units": "Units", "proceeds": "Developer Proceeds", "start": "Begin Date",
          "end": "End Date", "proceeds_currency": "Currency of Proceeds"}
_FINANCIAL = {"product": "Vendor Identifier", "units": "Quantity", "proceeds": "Partner Share", "start": "Start Date",
              "end": "End Date", "proceeds_currency": "Partner Share Currency"}
# In-app purchase product type identifiers (IA1 purchase, IA9 non-consumable, IAY auto-renewable
# subscription, IAC free subscription, FI1 Mac in-app purchase); the rest are app downloads and
# updates, which APSS does not sell.
IN_APP_TYPES = frozenset({"IA1", "IA9", "IAY", "IAC", "FI1"})
_STATEMENT_ROWS_MAX = 500_000
_DAY_S = 86_400
_UNITS_MAX = 10**9
_AMOUNT_MAX = 10**15


def _pacific_offset_s(year: int, month: int, day: int) -> int:
    """UTC offset of Pacific Time at midnight of a date (DST from the second Sunday of March to
    the first Sunday of November, the US rule since 2007): Apple's reports for the Americas and
    worldwide agreements count days in Pacific Time."""
    def sunday(month_: int, nth: int) -> _dt.date:
        first = _dt.date(year, month_, 1)
        return first + _dt.timedelta(days=(6 - first.weekday()) % 7 + 7 * (nth - 1))

    date = _dt.date(year, month, day)
    return -7 * 3600 if sunday(3, 2) < date <= sunday(11, 1) else -8 * 3600


def _pacific_midnight_s(text: str) -> int:
    """MM/DD/YYYY -> the unix time of that day's midnight in Pacific Time."""
    month, day, year = (int(part) for part in text.strip().split("/"))
    return calendar.timegm((year, month, day, 0, 0, 0)) - _pacific_offset_s(year, month, day)


def _header(line: str) -> tuple[list[str], dict[str, str]]:
    header = [column.strip() for column in line.split("\t")]
    for required, names in ((SALES_COLUMNS, _SALES), (FINANCIAL_COLUMNS, _FINANCIAL)):
        if all(column in header for column in required):
            return header, names
    raise ValueError("the header is neither a Summary Sales Report's nor a Financial Report's")


def statement_lines(data: bytes) -> list[StatementLine]:
    """An App Store Summary Sales Report or Financial Report (one region's file), as aggregate
    lines: one per product, period, customer currency and direction. Amounts are units times the
    customer price; the fee is what Apple kept (customer price less proceeds: commission and,
    where the price includes it, tax), or None when the proceeds are in another currency."""
    rows = data.decode("utf-8-sig").splitlines()
    if not rows:
        raise ValueError("the report is empty")
    header, names = _header(rows[0])
    totals: dict[tuple[str, str, str, str, str], tuple[int, int, int | None]] = {}
    others: list[StatementLine] = []
    for number, text in enumerate(rows[1:], start=2):
        if not text.strip():
            break  # a Financial Report's totals (Total_Rows, Total_Amount...) follow a blank line
        if number > _STATEMENT_ROWS_MAX:
            raise ValueError("the report has more rows than APSS reads")
        cells = text.split("\t")
        if len(cells) < len(header):
            raise ValueError(f"row {number} has {len(cells)} columns, the header {len(header)}")
        row = dict(zip(header, (cell.strip() for cell in cells), strict=False))
        currency = row["Customer Currency"].upper()
        if currency not in CURRENCY_EXPONENTS:
            raise ValueError(f"row {number}: the customer currency is not one APSS knows")
        units = int(row[names["units"]])
        if abs(units) > _UNITS_MAX:
            raise ValueError(f"row {number}: the units are out of range")
        start = _pacific_midnight_s(row[names["start"]])
        price = abs(report_decimal_to_minor(row["Customer Price"], currency))
        if row["Product Type Identifier"] not in IN_APP_TYPES or price == 0 or units == 0:
            others.append(StatementLine(provider_ref=row[names["product"]], kind="other", amount=units * price, fee=None,
                                        currency=currency, occurred_at_s=start))
            continue
        proceeds_currency = row[names["proceeds_currency"]].upper()
        proceeds = abs(report_decimal_to_minor(row[names["proceeds"]], proceeds_currency)) \
            if proceeds_currency == currency else None
        returned = units < 0 or row.get("Sales or Return", "S") == "R"
        key = (row[names["product"]], row[names["start"]], row[names["end"]], currency, "R" if returned else "S")
        count, amount, kept = totals.get(key, (0, 0, 0))
        sign = -1 if returned else 1  # units and amounts signed as the money moves; so is the fee
        totals[key] = (count + sign * abs(units), amount + sign * abs(units) * price,
                       None if proceeds is None or kept is None else kept + sign * abs(units) * (price - proceeds))
    if any(abs(amount) > _AMOUNT_MAX for _, amount, _ in totals.values()):
        raise ValueError("a product's amounts add up beyond what APSS books")
    lines = []
    for (product, start, end, currency, direction), (units, amount, kept) in totals.items():
        refund = direction == "R"
        lines.append(StatementLine(
            provider_ref=f"{product} {start}-{end} {currency}{' returns' if refund else ''}",
            kind="refund" if refund else "payment", amount=amount, fee=kept, currency=currency,
            occurred_at_s=_pacific_midnight_s(start), period_end_s=_pacific_midnight_s(end) + _DAY_S,
            product=product, quantity=units))
    return lines + others
