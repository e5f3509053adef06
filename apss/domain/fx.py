"""Foreign exchange: parsing rates exactly and converting minor units with explicit rounding.

A rate is a `Decimal`, never a float: `rate` means one unit of the base currency is worth `rate`
units of the quote currency (EUR per USD for the pair USD/EUR). Conversions are computed exactly
and rounded once, half-even, to a whole minor unit of the target currency.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact

import msgspec

from apss.domain.money import CURRENCY_EXPONENTS, minor_units_max
from apss.errors import InvalidRequest

__all__ = [
    "RATE_DECIMALS_MAX",
    "RATE_INTEGER_DIGITS_MAX",
    "RATE_SIGNIFICANT_DIGITS_INVERSE",
    "Quote",
    "convert",
    "format_rate",
    "invert_rate",
    "parse_rate",
]

RATE_DECIMALS_MAX = 12  # digits after the decimal point a rate may carry
RATE_INTEGER_DIGITS_MAX = 9  # 1 KWD is ~80,000 VND: nine integer digits leave ample room
RATE_SIGNIFICANT_DIGITS_INVERSE = 12  # an inverted rate (1/rate) is rounded to this many digits

# Plain decimal notation only: no sign, no exponent, no leading zeros, no spaces, no "1." or ".5".
_RATE_RE = re.compile(r"^(0|[1-9][0-9]{0,%d})(\.[0-9]{1,%d})?$" % (RATE_INTEGER_DIGITS_MAX - 1, RATE_DECIMALS_MAX))

# Wide enough that every product in `convert` is exact (amount <= 10**15 has 16 digits, a rate
# at most 9 + 12 digits, the scale is a power of ten); the Inexact trap proves it at run time.
_EXACT = Context(prec=64, rounding=ROUND_HALF_EVEN, traps=[Inexact])
_INVERSE = Context(prec=RATE_SIGNIFICANT_DIGITS_INVERSE, rounding=ROUND_HALF_EVEN)


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """The rate to use for one conversion, `base` -> `quote`, and where it came from.

    `inverse` is true when no usable `base/quote` rate was stored and this one is 1 / the stored
    `quote/base` rate (rounded, see `invert_rate`); `as_of_ms` is then that stored rate's time."""

    base: str
    quote: str
    rate: Decimal
    as_of_ms: int
    inverse: bool = False

    def __post_init__(self) -> None:
        assert self.base in CURRENCY_EXPONENTS and self.quote in CURRENCY_EXPONENTS, (self.base, self.quote)
        assert self.base != self.quote, self.base
        assert self.rate.is_finite() and self.rate > 0, self.rate
        assert self.as_of_ms >= 0, self.as_of_ms

    def record(self) -> dict[str, str | int | bool]:
        """The JSON-ready facts to store beside a converted amount (rate as a string, never float)."""
        return {"base": self.base, "quote": self.quote, "rate": format_rate(self.rate),
                "as_of_ms": self.as_of_ms, "inverse": self.inverse}


def parse_rate(text: str) -> Decimal:
    """`"0.9215"` -> `Decimal("0.9215")`. Refuses (InvalidRequest `fx_rate_invalid`) anything but a
    positive number in plain decimal notation with at most RATE_INTEGER_DIGITS_MAX integer digits
    and RATE_DECIMALS_MAX decimals: floats given as JSON numbers never reach here, and exponents
    (`1e-3`), signs, zero, NaN and infinity are refused rather than guessed."""
    if not isinstance(text, str) or _RATE_RE.match(text) is None:
        raise InvalidRequest(
            f"A rate must be a positive decimal string such as '0.9215' (at most {RATE_DECIMALS_MAX} decimals,"
            f" no exponent); got {text!r}.", code="fx_rate_invalid", param="rate")
    rate = Decimal(text)
    if rate == 0:
        raise InvalidRequest("A rate must be greater than zero.", code="fx_rate_invalid", param="rate")
    assert rate.is_finite() and rate > 0
    assert -rate.as_tuple().exponent <= RATE_DECIMALS_MAX
    return rate


def format_rate(rate: Decimal) -> str:
    """The canonical text of a rate: plain notation, no trailing zeros (`"1.50"` -> `"1.5"`)."""
    assert rate.is_finite() and rate > 0, rate
    text = format(rate.normalize(), "f")
    assert "E" not in text and "e" not in text
    return text


def invert_rate(rate: Decimal) -> Decimal:
    """1 / `rate`, rounded half-even to RATE_SIGNIFICANT_DIGITS_INVERSE significant digits.

    Used when only the opposite pair is stored: 1 / 151.37 = 0.00660632886305... The rounding
    error is at most half a unit in the 12th significant digit (a relative 5e-12), far below one
    minor unit for any amount APSS accepts, so the converted amount is what the exact inverse
    would give except on a knife-edge half."""
    assert rate.is_finite() and rate > 0, rate
    inverse = _INVERSE.divide(Decimal(1), rate)
    assert inverse > 0
    return inverse


def convert(amount_minor: int, *, from_currency: str, to_currency: str, rate: Decimal) -> int:
    """`amount_minor` of `from_currency` in minor units of `to_currency` at `rate`.

    Exactly: amount_minor / 10**exp(from) * rate * 10**exp(to), computed in Decimal with no
    intermediate rounding, then rounded ONCE to an integer with ROUND_HALF_EVEN (banker's
    rounding: 502.5 -> 502, 507.5 -> 508), so rounding errors do not drift one way over many
    orders. Never float. Example: 1999 USD -> JPY at 151.37 = 3025.8863 -> 3026."""
    assert isinstance(amount_minor, int) and not isinstance(amount_minor, bool), amount_minor
    assert abs(amount_minor) <= minor_units_max(), amount_minor
    assert from_currency in CURRENCY_EXPONENTS and to_currency in CURRENCY_EXPONENTS, (from_currency, to_currency)
    assert isinstance(rate, Decimal) and rate.is_finite() and rate > 0, rate
    scale = CURRENCY_EXPONENTS[to_currency] - CURRENCY_EXPONENTS[from_currency]
    exact = _EXACT.multiply(_EXACT.multiply(Decimal(amount_minor), rate), Decimal(1).scaleb(scale, _EXACT))
    result = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
    assert abs(result - exact) <= Decimal("0.5"), (result, exact)
    return result
