"""The ledger: every movement of money posts one balanced double-entry transaction, in the same
database transaction as the business change that caused it (apss/domain/ledger.py has the
accounts and the rules). Balances are derived from the entries; `check` proves it."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from apss.clock import Clock
from apss.config import FinanceConfig
from apss.domain.catalog import CurrencyGrant, Grant
from apss.domain.ledger import (
    Entry,
    FeeSchedule,
    Split,
    account_type,
    allocate,
    capture_entries,
    check_balanced,
    deferral_entries,
    discount_entries,
    fee_for,
    recognition_entries,
    undeferral_entries,
    unrecognition_entries,
)
from apss.domain.money import is_iso_currency
from apss.ids import new_id
from apss.store import ledger as store
from apss.store.db import Database, Row, Tx

__all__ = ["BalanceView", "Finance", "Ledger", "LedgerCheck", "SummaryView"]

_grants = msgspec.json.Decoder(list[Grant])


class Finance(msgspec.Struct, frozen=True, kw_only=True):
    """A merchant's revenue share and refund policy."""

    commission_bps: int
    splits: list[Split]
    clawback_policy: str  # refuse | debt
    late_payment: str = "refund"  # refund | alert


class LedgerCheck(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    transactions: int
    entries: int
    problem: str | None = None


class BalanceView(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    type: str
    currency: str
    balance: int  # debit-normal accounts: debits - credits; credit-normal: credits - debits


class BalanceList(msgspec.Struct, frozen=True, kw_only=True):
    """The merchant's accounts, one page (all of them: has_more is false)."""

    data: list[BalanceView]
    has_more: bool
    next_cursor: str | None


class SummaryView(msgspec.Struct, frozen=True, kw_only=True):
    """Money of a period, from the ledger, per currency (minor units)."""

    currency: str
    gross: int
    refunds: int
    chargebacks: int
    fees: int
    commission: int
    partner_shares: int
    net: int  # what the merchant earned: gross - refunds - chargebacks - commission - partner shares (net of reversals)
    payments: int
    refund_count: int
    discounts: int = 0  # promotions' discounts on the orders paid (a memo: not in gross, which is what was paid)


class SummaryList(msgspec.Struct, frozen=True, kw_only=True):
    """A period's summary, one entry per currency (has_more is false)."""

    data: list[SummaryView]
    has_more: bool
    next_cursor: str | None


class Ledger:
    def __init__(self, *, db: Database, clock: Clock, config: FinanceConfig) -> None:
        self._db = db
        self._clock = clock
        self._config = config

    # -- posting (inside the caller's write transaction) --------------------------------------
    def post(self, tx: Tx, *, merchant_id: str, kind: str, reference: str, entries: list[Entry], memo: str | None = None) -> bool:
        """Post once per (kind, reference); False when it was posted before."""
        check_balanced(entries)
        assert entries, "a ledger transaction has entries"
        now_ms = self._clock.now_ms()
        transaction_id = new_id("ltx")
        if not store.insert_transaction(tx, transaction_id=transaction_id, merchant_id=merchant_id, kind=kind,
                                        reference=reference, memo=memo, now_ms=now_ms):
            return False
        for entry in entries:
            store.ensure_account(tx, name=entry.account, currency=entry.currency, type=account_type(entry.account),
                                 merchant_id=merchant_id, now_ms=now_ms)
            store.bump_balance(tx, account=entry.account, currency=entry.currency, debit=entry.debit, credit=entry.credit)
        store.insert_entries(tx, [(transaction_id, e.account, e.currency, e.debit, e.credit) for e in entries])
        return True

    def post_capture(self, tx: Tx, *, payment: Row, fee: int) -> int:
        """The money is at the provider (or the store), whatever becomes of the order: post it
        with the provider's fee. Returns the merchant's share."""
        finance = self.finance(tx, payment["merchant_id"])
        entries = capture_entries(merchant_id=payment["merchant_id"], channel=payment["channel"], gross=payment["amount"],
                                  fee=fee, currency=payment["currency"], commission_bps=finance.commission_bps,
                                  splits=finance.splits)
        if entries:
            self.post(tx, merchant_id=payment["merchant_id"], kind="payment_captured", reference=payment["id"],
                      entries=entries)
        return sum(e.credit for e in entries if e.account.startswith("merchant_payable:"))

    def capture_fee(self, tx: Tx, *, payment_id: str) -> int:
        """The fee posted with a payment's capture."""
        return store.capture_fee_tx(tx, payment_id=payment_id)

    def store_fee(self, *, tier: str | None, amount: int) -> int:
        """An app store's commission on a sale of `amount` (half-even), by the merchant's tier."""
        assert tier in (None, "standard", "reduced"), tier
        bps = self._config.store_fee_reduced_bps if tier == "reduced" else self._config.store_fee_standard_bps
        return fee_for(amount, "", FeeSchedule(percent_bps=bps, fixed={}))

    def post_discount(self, tx: Tx, *, order: Row, items: list[Row], reference: str) -> None:
        """The promotions' discount of a paid order, as a memo pair (domain/ledger.discount_entries),
        in money currencies only (an order paid in virtual currency moves no money)."""
        discount = sum(item["unit_amount"] * item["quantity"] - item["amount"] for item in items)
        assert discount >= 0
        if discount and is_iso_currency(order["currency"]):
            self.post(tx, merchant_id=order["merchant_id"], kind="discount", reference=reference,
                      entries=discount_entries(merchant_id=order["merchant_id"], currency=order["currency"], amount=discount))

    # -- virtual currency: deferred revenue ----------------------------------------------------
    def defer_currency_sale(self, tx: Tx, *, order: Row, items: list[Row], merchant_share: int,
                            reference: str) -> None:
        """The merchant's share of the lines that grant only virtual currency is deferred revenue:
        it joins the average-cost pool of (merchant, currency code, money currency). The share is
        split over the lines by their amounts, and over a line's currencies by units (exactly)."""
        if merchant_share <= 0 or not any(item["amount"] for item in items):
            return
        per_line = allocate(merchant_share, [item["amount"] for item in items])
        entries: list[Entry] = []
        for item, value in zip(items, per_line, strict=True):
            grants = _grants.decode(item["grants"])
            if value <= 0 or not grants or not all(isinstance(g, CurrencyGrant) for g in grants):
                continue  # mixed or other goods: revenue at once
            units = [g.amount * item["quantity"] for g in grants]
            for grant, grant_units, grant_value in zip(grants, units, allocate(value, units), strict=True):
                store.move_vc_pool(tx, merchant_id=order["merchant_id"], vc=grant.currency, currency=order["currency"],
                                   units=grant_units, deferred=grant_value)
                if grant_value:
                    entries += deferral_entries(merchant_id=order["merchant_id"], vc=grant.currency,
                                                currency=order["currency"], value=grant_value)
        if entries:
            self.post(tx, merchant_id=order["merchant_id"], kind="currency_deferred", reference=reference, entries=entries)

    def take_currency(self, tx: Tx, *, merchant_id: str, vc: str, units: int, reference: str, spent: bool) -> None:
        """`units` leave the pools at their average cost, in proportion to each money currency's
        units: spent in the game (recognised revenue) or taken back by a refund (deferral
        reversed). Units beyond the pools (currency not sold for money) carry no value."""
        pools = [p for p in store.vc_pools(tx, merchant_id=merchant_id, vc=vc) if p["units"] > 0]
        if not pools or units <= 0:
            return
        take = min(units, sum(p["units"] for p in pools))
        entries: list[Entry] = []
        make = recognition_entries if spent else undeferral_entries
        for pool, k in zip(pools, allocate(take, [p["units"] for p in pools]), strict=True):
            if k == 0:
                continue
            value = pool["deferred"] if k == pool["units"] else pool["deferred"] * k // pool["units"]
            store.move_vc_pool(tx, merchant_id=merchant_id, vc=vc, currency=pool["currency"], units=-k, deferred=-value)
            if value:
                entries += make(merchant_id=merchant_id, vc=vc, currency=pool["currency"], value=value)
        if entries:
            self.post(tx, merchant_id=merchant_id, kind="currency_recognised" if spent else "currency_refunded",
                      reference=reference, entries=entries)

    def return_currency(self, tx: Tx, *, merchant_id: str, vc: str, spend_reference: str, gross: int, refunded_before: int,
                        amount: int, reference: str) -> None:
        """`amount` of the `gross` units an order paid from the wallet (spend `spend_reference`)
        come back by a refund: the revenue that spend recognised goes back to deferred, in
        proportion, computed cumulatively (floors) so that a full refund returns it exactly."""
        assert 0 < amount and refunded_before + amount <= gross
        recognised = [r for r in store.recognised_values_tx(tx, reference=spend_reference) if r["value"] > 0]
        if not recognised:
            return  # the units carried no money value (not bought for money)
        units = allocate(amount, [r["value"] for r in recognised])
        entries: list[Entry] = []
        for row, k in zip(recognised, units, strict=True):
            value = row["value"] * (refunded_before + amount) // gross - row["value"] * refunded_before // gross
            store.move_vc_pool(tx, merchant_id=merchant_id, vc=vc, currency=row["currency"], units=k, deferred=value)
            if value:
                entries += unrecognition_entries(merchant_id=merchant_id, vc=vc, currency=row["currency"], value=value)
        if entries:
            self.post(tx, merchant_id=merchant_id, kind="currency_returned", reference=reference, entries=entries)

    def finance(self, tx: Tx, merchant_id: str) -> Finance:
        return self._finance(store.get_finance_tx(tx, merchant_id=merchant_id))

    async def fetch_finance(self, merchant_id: str) -> Finance:
        """The same, read on a reader connection (no write transaction for a read)."""
        return self._finance(await store.fetch_finance(self._db, merchant_id=merchant_id))

    def _finance(self, row: Row | None) -> Finance:
        if row is None:
            return Finance(commission_bps=self._config.commission_bps, splits=[], clawback_policy=self._config.clawback_policy,
                           late_payment=self._config.late_payment)
        return Finance(commission_bps=row["commission_bps"], splits=msgspec.json.decode(row["splits"], type=list[Split]),
                       clawback_policy=row["clawback_policy"], late_payment=row["late_payment"])

    def fee(self, *, channel: str, amount: int, currency: str) -> int:
        schedule = self._config.fees.get(channel)
        if schedule is None:
            return 0
        return fee_for(amount, currency, FeeSchedule(percent_bps=schedule.percent_bps, fixed=dict(schedule.fixed)))

    # -- reads -------------------------------------------------------------------------------
    async def check(self, *, progress: Callable[[str], None] | None = None) -> LedgerCheck:
        """`progress` hears of each of the three passes as it begins (each reads the whole ledger)."""
        say = progress or (lambda step: None)
        say("1/3 counting transactions and entries")
        counts = await store.ledger_counts(self._db)
        problem = None
        say(f"2/3 checking that each of {counts['transactions']} transactions balances")
        unbalanced = await store.unbalanced_transaction(self._db)
        if unbalanced is not None:
            problem = (f"transaction {unbalanced['transaction_id']} is unbalanced in {unbalanced['currency']}: "
                       f"debits {unbalanced['debits']}, credits {unbalanced['credits']} (entry #{unbalanced['first_seq']})")
        else:
            say(f"3/3 checking every account balance against its {counts['entries']} entries")
            mismatch = await store.balance_mismatch(self._db)
            if mismatch is not None:
                problem = (f"account {mismatch['account']} {mismatch['currency']}: entries say "
                           f"{mismatch['entry_debits']}/{mismatch['entry_credits']}, balance says "
                           f"{mismatch['balance_debits']}/{mismatch['balance_credits']} (debits/credits)")
        return LedgerCheck(ok=problem is None, transactions=counts["transactions"], entries=counts["entries"], problem=problem)

    async def balances(self, merchant_id: str) -> list[BalanceView]:
        views = []
        for row in await store.account_balances(self._db, merchant_id=merchant_id):
            debit_normal = row["type"] in ("asset", "expense")
            balance = row["debits"] - row["credits"] if debit_normal else row["credits"] - row["debits"]
            views.append(BalanceView(account=row["name"], type=row["type"], currency=row["currency"], balance=balance))
        return views

    async def summary(self, *, merchant_id: str, from_ms: int, to_ms: int) -> list[SummaryView]:
        """Gross, refunds, fees, commission, partner shares and net of [from, to), from the ledger."""
        totals: dict[str, dict[str, int]] = {}
        for row in await store.period_totals(self._db, merchant_id=merchant_id, from_ms=from_ms, to_ms=to_ms):
            t = totals.setdefault(row["currency"], dict.fromkeys(
                ("gross", "refunds", "chargebacks", "fees", "commission", "partner_shares", "net", "payments", "refund_count",
                 "discounts"), 0))
            kind, family, net_credit = row["kind"], row["family"], row["credits"] - row["debits"]
            if family == "provider_clearing" and kind == "payment_captured":
                t["payments"] += row["transactions"]
            if family == "provider_clearing" and kind in ("refund", "chargeback"):
                t["refunds" if kind == "refund" else "chargebacks"] += row["credits"]
                t["refund_count"] += row["transactions"] if kind == "refund" else 0
            if family == "provider_clearing" and kind == "chargeback_reversed":  # a won dispute gives it back
                t["chargebacks"] -= row["debits"]
            if family == "discounts":
                t["discounts"] += row["debits"] - row["credits"]
            if family == "fees_expense":
                t["fees"] += row["debits"] - row["credits"]
            if family == "platform_revenue":
                t["commission"] += net_credit
            if family == "partner_payable" and kind != "settlement_payout":
                t["partner_shares"] += net_credit
            if family == "merchant_payable" and kind not in ("settlement_payout",):
                t["net"] += net_credit
            if kind == "payment_captured" and family in ("provider_clearing", "fees_expense"):
                t["gross"] += row["debits"]
        return [SummaryView(currency=c, **t) for c, t in sorted(totals.items())]

