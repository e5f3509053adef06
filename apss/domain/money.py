"""Money: integer minor units plus an ISO 4217 code. Never float."""

from __future__ import annotations

import re

import msgspec

from apss.errors import InvalidRequest

__all__ = ["CURRENCY_EXPONENTS", "CurrencyCodeReserved", "Money", "VIRTUAL_CURRENCY_RE", "format_amount", "is_iso_currency",
           "is_virtual_price_code", "minor_units_max", "report_decimal_to_minor"]

# ISO 4217 minor-unit exponents for the currencies APSS accepts. Codes not listed default to 2
# only if added here: an unknown code is refused, never guessed.
CURRENCY_EXPONENTS: dict[str, int] = {
    **{c: 2 for c in (
        "AED", "ARS", "AUD", "BGN", "BRL", "CAD", "CHF", "CNY", "COP", "CZK", "DKK", "EGP", "EUR",
        "GBP", "HKD", "IDR", "ILS", "INR", "MXN", "MYR", "NOK", "NZD", "PEN", "PHP", "PLN", "RON",
        "RUB", "SAR", "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "ZAR",
    )},
    **{c: 0 for c in ("CLP", "ISK", "JPY", "KRW", "PYG", "UGX", "VND", "XAF", "XOF")},
    **{c: 3 for c in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")},
}

# Merchant-chosen virtual currency codes (API.md: upper-case names such as "GEMS").
VIRTUAL_CURRENCY_RE = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")

# Largest amount in minor units we accept anywhere: fits SQLite's int64 with room for sums.
_AMOUNT_MAX = 10**15


class CurrencyCodeReserved(InvalidRequest):
    """A virtual currency may not take an ISO 4217 code (a grant of "USD" would mint money)."""

    code = "currency_code_reserved"


_VIRTUAL_PRICE_RE = re.compile(r"^[A-Z]{2,16}$")


def is_iso_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def is_virtual_price_code(code: str) -> bool:
    """A code a product may be priced in as virtual currency: 2-16 upper-case letters, not ISO 4217."""
    return bool(_VIRTUAL_PRICE_RE.match(code)) and not is_iso_currency(code)


_REPORT_DECIMAL_RE = re.compile(r"^(-?)(\d{1,15})(?:\.(\d{1,8}))?$")


def report_decimal_to_minor(text: str, currency: str) -> int:
    """A report's decimal amount ("4.99", "-1.50", "120", "0.70000") in minor units, exactly;
    ValueError for anything else, or digits beyond the currency's exponent that are not zeros."""
    exponent = CURRENCY_EXPONENTS.get(currency)
    match = _REPORT_DECIMAL_RE.match(text.strip())
    if exponent is None or match is None:
        raise ValueError("not a decimal amount in a known currency")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if fraction[exponent:].strip("0"):
        raise ValueError(f"an amount has more decimals than {currency} has")
    minor = int(whole) * 10**exponent + int(fraction[:exponent].ljust(exponent, "0") or "0")
    return -minor if sign else minor


def format_amount(amount_minor: int, currency: str) -> str:
    """`1999, "USD"` -> `"19.99 USD"`, exactly, by integer arithmetic (never float)."""
    exponent = CURRENCY_EXPONENTS[currency]
    sign, value = ("-", -amount_minor) if amount_minor < 0 else ("", amount_minor)
    if exponent == 0:
        return f"{sign}{value} {currency}"
    major, minor = divmod(value, 10**exponent)
    return f"{sign}{major}.{minor:0{exponent}d} {currency}"


def minor_units_max() -> int:
    return _AMOUNT_MAX


class Money(msgspec.Struct, frozen=True, kw_only=True):
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        assert isinstance(self.amount_minor, int) and not isinstance(self.amount_minor, bool)
        assert is_iso_currency(self.currency), self.currency

    def __add__(self, other: Money) -> Money:
        assert self.currency == other.currency, "multi-currency arithmetic is a programmer error"
        return Money(amount_minor=self.amount_minor + other.amount_minor, currency=self.currency)

    def times(self, quantity: int) -> Money:
        assert quantity >= 0
        return Money(amount_minor=self.amount_minor * quantity, currency=self.currency)
