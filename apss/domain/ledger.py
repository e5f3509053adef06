"""Double-entry rules: accounts and their types, balanced postings, fees, commission and splits.

Who holds what (the platform's books, which for a self-hosted studio are the studio's own):
- `provider_clearing:<channel>:<merchant>` (asset): what a provider holds for us after its fee;
- `fees_expense:<channel>:<merchant>` (expense): what the provider charged;
- `merchant_payable:<merchant>` (liability): what the merchant (studio) will be paid;
- `platform_revenue:<merchant>` (revenue): the platform commission;
- `partner_payable:<recipient>:<merchant>` (liability): each revenue-split recipient's share;
- `adjustments:<merchant>` (equity): the other side of manual adjustments;
- `discounts:<merchant>` (contra-revenue: a revenue account with a debit balance) and
  `discounts_memo:<merchant>` (revenue): promotions' discounts on paid orders, a memo pair.
A captured payment G with provider fee F, commission P and partner shares S_r posts
  Dr provider_clearing G-F, Dr fees_expense F, Cr platform_revenue P, Cr partner_payable S_r,
  Cr merchant_payable G-P-sum(S_r):
provider fees are the platform's cost, covered by its commission (as stores and Xsolla do); a
studio that is its own platform (commission 0) sees them as its own expense.
A refund or chargeback of R reverses commission and shares in proportion (R/G, half-even, the
merchant's part taking the remainder); the provider keeps its fee.

Rounding rule (documented, tested): commission and each split share are `amount * bps / 10000`
rounded half-even; the merchant receives the remainder, so the parts always add up to the whole.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import msgspec

__all__ = [
    "AccountType",
    "Entry",
    "FeeSchedule",
    "Split",
    "account_type",
    "adjustment_entries",
    "allocate",
    "over_refund_cover_entries",
    "over_refund_entries",
    "deferral_entries",
    "recognition_entries",
    "undeferral_entries",
    "unrecognition_entries",
    "capture_entries",
    "discount_entries",
    "check_balanced",
    "fee_for",
    "reversal_entries",
    "share",
]

AccountType = Literal["asset", "liability", "revenue", "expense", "equity"]
BPS = 10_000

_TYPES: dict[str, AccountType] = {
    "provider_clearing": "asset",
    "fees_expense": "expense",
    "merchant_payable": "liability",
    "platform_revenue": "revenue",
    "partner_payable": "liability",
    "adjustments": "equity",
    # Virtual currency: sold (contra-revenue debit), deferred (liability), recognised when spent.
    "vc_sales": "revenue",
    "vc_deferred": "liability",
    "vc_recognised": "revenue",
    # Promotions: what was taken off the list price (contra-revenue), and its memo offset.
    "discounts": "revenue",
    "discounts_memo": "revenue",
}


def account_type(name: str) -> AccountType:
    return _TYPES[name.split(":", 1)[0]]


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    currency: str
    debit: int = 0
    credit: int = 0

    def __post_init__(self) -> None:
        assert self.debit >= 0 and self.credit >= 0 and (self.debit == 0) != (self.credit == 0), self
        assert self.account.split(":", 1)[0] in _TYPES, self.account


class Split(msgspec.Struct, frozen=True, kw_only=True):
    recipient: str
    share_bps: int


class FeeSchedule(msgspec.Struct, frozen=True, kw_only=True):
    percent_bps: int = 0
    fixed: dict[str, int] = {}  # per currency, minor units


def share(amount: int, bps: int) -> int:
    """`amount * bps / 10000`, rounded half-even."""
    assert amount >= 0 and 0 <= bps <= BPS
    return int((Decimal(amount) * bps / BPS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def fee_for(amount: int, currency: str, schedule: FeeSchedule) -> int:
    """Percentage (half-even) plus the fixed part for the currency, never more than the amount."""
    return min(amount, share(amount, schedule.percent_bps) + schedule.fixed.get(currency, 0))


def check_balanced(entries: list[Entry]) -> None:
    """Debits equal credits in every currency; raises AssertionError naming the currency."""
    totals: dict[str, int] = {}
    for entry in entries:
        totals[entry.currency] = totals.get(entry.currency, 0) + entry.debit - entry.credit
    unbalanced = {c: t for c, t in totals.items() if t != 0}
    assert not unbalanced, f"unbalanced ledger transaction: {unbalanced}"


def _entries(currency: str, movements: list[tuple[str, int]]) -> list[Entry]:
    """(account, signed amount) -> entries: positive debits, negative credits, zeros dropped."""
    entries = [Entry(account=account, currency=currency, **({"debit": amount} if amount > 0 else {"credit": -amount}))
               for account, amount in movements if amount != 0]
    check_balanced(entries)
    return entries


def capture_entries(*, merchant_id: str, channel: str, gross: int, fee: int, currency: str, commission_bps: int,
                    splits: list[Split]) -> list[Entry]:
    assert 0 <= fee <= gross and sum(s.share_bps for s in splits) + commission_bps <= BPS
    commission = share(gross, commission_bps)
    shares = [(s.recipient, share(gross, s.share_bps)) for s in splits]
    merchant = gross - commission - sum(amount for _, amount in shares)
    assert merchant >= 0
    return _entries(currency, [
        (f"provider_clearing:{channel}:{merchant_id}", gross - fee),
        (f"fees_expense:{channel}:{merchant_id}", fee),
        (f"platform_revenue:{merchant_id}", -commission),
        *[(f"partner_payable:{recipient}:{merchant_id}", -amount) for recipient, amount in shares],
        (f"merchant_payable:{merchant_id}", -merchant),
    ])


def reversal_entries(*, merchant_id: str, channel: str, gross: int, refunded_before: int, amount: int, currency: str,
                     commission_bps: int, splits: list[Split], fee_returned: int = 0) -> list[Entry]:
    """A refund or chargeback of `amount` out of a captured `gross` of which `refunded_before` was
    already returned: the provider pays it back out of clearing; commission and shares are
    reversed in proportion, computed cumulatively (the part of all refunds so far, half-even,
    minus the part already reversed) so that a full refund in any number of steps reverses them
    exactly; the merchant's part takes the remainder. `fee_returned` is the capture's fee when the
    provider gives its fee back with a refund (the app stores return their commission): its part
    goes back the same way (fees_expense credited, clearing paying only the rest), so after a full
    refund both the fee and the clearing account of the payment are at zero."""
    assert 0 < amount and 0 <= refunded_before and refunded_before + amount <= gross
    assert 0 <= fee_returned <= gross

    def part(value: int) -> int:
        after = Decimal(value) * (refunded_before + amount) / gross
        before = Decimal(value) * refunded_before / gross
        return int(after.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)) - int(before.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    commission_back = part(share(gross, commission_bps))
    shares_back = [(s.recipient, part(share(gross, s.share_bps))) for s in splits]
    merchant_back = amount - commission_back - sum(a for _, a in shares_back)
    fee_back = part(fee_returned)
    return _entries(currency, [
        (f"provider_clearing:{channel}:{merchant_id}", -(amount - fee_back)),
        (f"fees_expense:{channel}:{merchant_id}", -fee_back),
        (f"platform_revenue:{merchant_id}", commission_back),
        *[(f"partner_payable:{recipient}:{merchant_id}", back) for recipient, back in shares_back],
        (f"merchant_payable:{merchant_id}", merchant_back),
    ])


def over_refund_entries(*, merchant_id: str, channel: str, amount: int, currency: str) -> list[Entry]:
    """Money the provider returned beyond what was captured (a chargeback on top of refunds):
    it still leaves clearing, and the merchant bears it (its payable goes down, below zero if
    need be: the merchant then owes it)."""
    assert amount > 0
    return _entries(currency, [(f"provider_clearing:{channel}:{merchant_id}", -amount),
                               (f"merchant_payable:{merchant_id}", amount)])


def over_refund_cover_entries(*, merchant_id: str, channel: str, gross: int, refunded_before: int, amount: int,
                              currency: str, commission_bps: int, splits: list[Split]) -> list[Entry]:
    """`amount` of an over-refund that the capture covers again (a won dispute gave its chargeback
    back): its over-refund entries undone and the reversal of a plain refund booked instead, netted.
    Clearing does not move (the money left it once, with the over-refund); commission and partner
    shares give back their parts, which the merchant's payable had borne alone. No entries when
    nothing is shared out (no commission, no split): the merchant's part was the whole of it."""
    movements: dict[str, int] = {}
    for entry in reversal_entries(merchant_id=merchant_id, channel=channel, gross=gross,
                                  refunded_before=refunded_before, amount=amount, currency=currency,
                                  commission_bps=commission_bps, splits=splits):
        movements[entry.account] = movements.get(entry.account, 0) + entry.debit - entry.credit
    for entry in over_refund_entries(merchant_id=merchant_id, channel=channel, amount=amount, currency=currency):
        movements[entry.account] = movements.get(entry.account, 0) - entry.debit + entry.credit
    return _entries(currency, list(movements.items()))


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights`, exactly: floors, then the remainder one unit at a
    time to the largest fractional parts (ties: the earlier weight)."""
    assert total >= 0 and weights and all(w >= 0 for w in weights) and sum(weights) > 0
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    assert sum(parts) == total
    return parts


def deferral_entries(*, merchant_id: str, vc: str, currency: str, value: int) -> list[Entry]:
    """Currency sold for `value`: not revenue yet (Dr vc_sales, Cr vc_deferred)."""
    return _entries(currency, [(f"vc_sales:{vc}:{merchant_id}", value), (f"vc_deferred:{vc}:{merchant_id}", -value)])


def recognition_entries(*, merchant_id: str, vc: str, currency: str, value: int) -> list[Entry]:
    """Currency spent in the game: revenue now (Dr vc_deferred, Cr vc_recognised)."""
    return _entries(currency, [(f"vc_deferred:{vc}:{merchant_id}", value), (f"vc_recognised:{vc}:{merchant_id}", -value)])


def unrecognition_entries(*, merchant_id: str, vc: str, currency: str, value: int) -> list[Entry]:
    """Currency spent on an order paid from the wallet comes back by its refund: deferred again."""
    return _entries(currency, [(f"vc_recognised:{vc}:{merchant_id}", value), (f"vc_deferred:{vc}:{merchant_id}", -value)])


def undeferral_entries(*, merchant_id: str, vc: str, currency: str, value: int) -> list[Entry]:
    """Currency taken back by a refund before it was spent: the deferral is reversed."""
    return _entries(currency, [(f"vc_deferred:{vc}:{merchant_id}", value), (f"vc_sales:{vc}:{merchant_id}", -value)])


def discount_entries(*, merchant_id: str, currency: str, amount: int) -> list[Entry]:
    """A paid order's discount: the ledger books only what was paid (the capture), so the
    discount is a memo pair that nets to zero: Dr discounts (contra-revenue, what the sale
    gave up against its list price), Cr discounts_memo. Reports read the discounts account."""
    assert amount > 0
    return _entries(currency, [(f"discounts:{merchant_id}", amount), (f"discounts_memo:{merchant_id}", -amount)])


def adjustment_entries(*, merchant_id: str, account: str, amount: int, currency: str) -> list[Entry]:
    """A manual adjustment: `amount` (signed, debit positive) on `account`, against adjustments."""
    assert amount != 0
    return _entries(currency, [(account, amount), (f"adjustments:{merchant_id}", -amount)])
