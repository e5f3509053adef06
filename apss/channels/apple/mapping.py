"""Pure conversion of Apple's decoded payloads (JWSTransactionDecodedPayload,
ResponseBodyV2DecodedPayload) into neutral StorePurchase / StoreNotification values."""

from __future__ import annotations

from typing import Any

from apss.channels.base import StoreAction, StoreNotification, StorePurchase
from apss.domain.money import CURRENCY_EXPONENTS
from apss.errors import CallbackRejected

__all__ = ["ACTIONS", "PRODUCT_TYPES", "check_app", "milliunits_to_minor", "notification", "notification_app", "purchase"]

# Apple's `type` of a transaction, every variant (anything else is refused as unknown).
PRODUCT_TYPES = ("Auto-Renewable Subscription", "Non-Consumable", "Consumable", "Non-Renewing Subscription")
# What each notification type asks of APSS; every other type is acknowledged and recorded
# (DID_FAIL_TO_RENEW, EXPIRED, GRACE_PERIOD_EXPIRED, REFUND_DECLINED, CONSUMPTION_REQUEST, TEST...).
ACTIONS: dict[str, StoreAction] = {
    "REFUND": "refund", "REVOKE": "revoke", "REFUND_REVERSED": "refund_reversed",
    # A purchase to deliver, to the player of its original transaction.
    "DID_RENEW": "deliver", "SUBSCRIBED": "deliver", "ONE_TIME_CHARGE": "deliver", "OFFER_REDEEMED": "deliver",
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
    return StorePurchase(
        transaction_id=_text(payload, "transactionId"),
        original_transaction_id=_text(payload, "originalTransactionId"),
        product_id=_text(payload, "productId"), app_id=_text(payload, "bundleId"),
        environment=_text(payload, "environment"), type=kind, quantity=quantity, amount=amount, currency=currency,
        purchased_at_ms=_ms(payload, "purchaseDate"), signed_at_ms=_ms(payload, "signedDate"),
        reason=_text(payload, "transactionReason", required=False),
        expires_at_ms=_ms(payload, "expiresDate", required=False),
        revoked_at_ms=_ms(payload, "revocationDate", required=False),
        revocation_reason=reason if isinstance(reason, int) and not isinstance(reason, bool) else None,
        ownership=_text(payload, "inAppOwnershipType", required=False),
    )


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
    return StoreNotification(notification_id=_text(payload, "notificationUUID"), type=kind,
                             subtype=_text(payload, "subtype", required=False),
                             signed_at_ms=_ms(payload, "signedDate"), action=ACTIONS.get(kind, "record"),
                             purchase=transaction)
