"""A merchant's revenue share (platform commission set by the admin, partner splits set by the
merchant), its refund clawback policy, and manual ledger adjustments."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from apss.clock import Clock
from apss.domain.ledger import BPS, Split, account_type, adjustment_entries
from apss.domain.money import is_iso_currency
from apss.errors import CurrencyNotSupported, InvalidRequest
from apss.ids import new_id
from apss.services.money.ledger import Finance, Ledger
from apss.store import ledger as store
from apss.store.db import Database, Tx

__all__ = ["AdjustmentIn", "FinanceIn", "FinanceService"]

Bps = Annotated[int, Meta(ge=0, le=BPS)]


class SplitIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    recipient: Annotated[str, Meta(pattern=r"^[a-z0-9_\-]{1,40}$")]
    share_bps: Annotated[int, Meta(ge=1, le=BPS)]


class FinanceIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    commission_bps: Bps | UnsetType = UNSET  # admin only
    splits: Annotated[list[SplitIn], Meta(max_length=20)] | UnsetType = UNSET
    clawback_policy: Literal["refuse", "debt"] | UnsetType = UNSET
    late_payment: Literal["refund", "alert"] | UnsetType = UNSET


class AdjustmentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: Annotated[str, Meta(pattern=r"^(merchant_payable|partner_payable|platform_revenue|fees_expense|provider_clearing)(:[a-z0-9_\-]+)?$")]
    amount: Annotated[int, Meta(ge=-(10**15), le=10**15)]  # signed: debit positive, credit negative
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    reason: Annotated[str, Meta(min_length=3, max_length=500)]


class FinanceService:
    def __init__(self, *, db: Database, clock: Clock, ledger: Ledger) -> None:
        self._db = db
        self._clock = clock
        self._ledger = ledger

    async def get(self, merchant_id: str) -> Finance:
        return await self._ledger.fetch_finance(merchant_id)

    async def update(self, *, merchant_id: str, command: FinanceIn, admin: bool) -> Finance:
        if command.commission_bps is not UNSET and not admin:
            raise InvalidRequest("The platform commission is set by the admin.", code="commission_admin_only",
                                 param="commission_bps")

        def transaction(tx: Tx) -> Finance:
            current = self._ledger.finance(tx, merchant_id)
            commission = current.commission_bps if command.commission_bps is UNSET else command.commission_bps
            splits = current.splits if command.splits is UNSET else [Split(recipient=s.recipient, share_bps=s.share_bps)
                                                                      for s in command.splits]
            if len({s.recipient for s in splits}) != len(splits):
                raise InvalidRequest("Each recipient appears once.", code="split_recipient_repeated", param="splits")
            if commission + sum(s.share_bps for s in splits) > BPS:
                raise InvalidRequest("Commission and splits add up to more than 100%.", code="shares_exceed_whole",
                                     param="splits")
            policy = current.clawback_policy if command.clawback_policy is UNSET else command.clawback_policy
            late = current.late_payment if command.late_payment is UNSET else command.late_payment
            store.set_finance(tx, merchant_id=merchant_id, commission_bps=commission,
                              splits=msgspec.json.encode(splits).decode(), clawback_policy=policy, late_payment=late,
                              now_ms=self._clock.now_ms())
            return self._ledger.finance(tx, merchant_id)

        return await self._db.write(transaction)

    async def adjust(self, *, merchant_id: str, command: AdjustmentIn) -> str:
        """A manual adjustment (admin, with a reason): balanced against `adjustments`."""
        if not is_iso_currency(command.currency):
            raise CurrencyNotSupported(f"'{command.currency}' is not a supported currency.", param="currency")
        if command.amount == 0:
            raise InvalidRequest("An adjustment moves a non-zero amount.", code="amount_must_not_be_zero", param="amount")
        family, _, qualifier = command.account.partition(":")
        account = f"{family}:{qualifier}:{merchant_id}" if qualifier else f"{family}:{merchant_id}"
        assert account_type(account)
        reference = new_id("ltx")
        entries = adjustment_entries(merchant_id=merchant_id, account=account, amount=command.amount, currency=command.currency)
        await self._db.write(lambda tx: self._ledger.post(tx, merchant_id=merchant_id, kind="adjustment", reference=reference,
                                                          entries=entries, memo=command.reason))
        return reference
