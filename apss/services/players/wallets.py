"""What a player owns: inventory and wallet; game-side wallet debits (never below zero)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339
from apss.domain.money import is_iso_currency
from apss.errors import InsufficientBalance
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.money.ledger import Ledger
from apss.services.views import (
    EntitlementView,
    InventoryView,
    ItemView,
    MembershipView,
    WalletDebitView,
    WalletView,
)
from apss.store import players as store
from apss.store.db import Database, Tx

__all__ = ["PLAYER_ID_PATTERN", "Players", "WalletDebit"]

PLAYER_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


class WalletDebit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    currency: Annotated[str, Meta(pattern=r"^[A-Z][A-Z0-9_]{1,15}$")]
    amount: Annotated[int, Meta(ge=1, le=10**15)]
    reason: Annotated[str, Meta(max_length=200)] | None = None


class Players:
    def __init__(self, *, db: Database, clock: Clock, idempotency: Idempotency, ledger: Ledger) -> None:
        self._db = db
        self._clock = clock
        self._idempotency = idempotency
        self._ledger = ledger

    async def inventory(self, *, merchant_id: str, player_id: str) -> InventoryView:
        owned = await store.inventory(self._db, merchant_id=merchant_id, player_id=player_id, now_ms=self._clock.now_ms())
        return InventoryView(
            player_id=player_id,
            items=[ItemView(sku=r["sku"], quantity=r["quantity"]) for r in owned["items"]],
            memberships=[MembershipView(sku=r["sku"], expires_at=format_rfc3339(r["expires_at_ms"])) for r in owned["memberships"]],
            entitlements=[EntitlementView(sku=r["sku"], granted_at=format_rfc3339(r["granted_at_ms"])) for r in owned["entitlements"]],
        )

    async def wallet(self, *, merchant_id: str, player_id: str) -> WalletView:
        rows = await store.wallet_balances(self._db, merchant_id=merchant_id, player_id=player_id)
        return WalletView(player_id=player_id, balances={r["currency"]: r["balance"] for r in rows})

    def check_balance_tx(self, tx: Tx, *, merchant_id: str, player_id: str, currency: str, amount: int) -> None:
        """Before an order in virtual currency writes anything: can the wallet pay it?"""
        balance = store.get_balance_tx(tx, merchant_id=merchant_id, player_id=player_id, currency=currency)
        if balance < amount:
            raise InsufficientBalance(f"Balance is {balance} {currency}; the order costs {amount}.", param="currency")

    def pay_order_tx(self, tx: Tx, *, order: Mapping, now_ms: int) -> None:
        """Pay an order priced in virtual currency from the wallet (checked by check_balance_tx in
        the same transaction): the units are spent, which recognises the revenue they carried."""
        amount, currency = order["amount"], order["currency"]
        assert amount >= 0 and not is_iso_currency(currency)
        if amount == 0:
            return
        after = store.apply_wallet_change(tx, txn_id=new_id("wtx"), merchant_id=order["merchant_id"],
                                          player_id=order["player_id"], currency=currency, amount=-amount,
                                          reason="order", order_id=order["id"], now_ms=now_ms)
        assert after >= 0, "checked first"
        self._ledger.take_currency(tx, merchant_id=order["merchant_id"], vc=currency, units=amount,
                                   reference=order["payment_id"], spent=True)

    async def debit(self, *, merchant_id: str, player_id: str, command: WalletDebit, idem: IdempotencyRequest | None) -> Outcome:
        def transaction(tx: Tx) -> WalletDebitView:
            balance = store.get_balance_tx(tx, merchant_id=merchant_id, player_id=player_id, currency=command.currency)
            if balance < command.amount:
                raise InsufficientBalance(
                    f"Balance is {balance} {command.currency}; cannot debit {command.amount}.", param="amount")
            txn_id = new_id("wtx")
            after = store.apply_wallet_change(tx, txn_id=txn_id, merchant_id=merchant_id, player_id=player_id,
                                              currency=command.currency, amount=-command.amount, reason=command.reason,
                                              order_id=None, now_ms=self._clock.now_ms())
            assert after >= 0
            # Spending recognises the deferred revenue the currency carried.
            self._ledger.take_currency(tx, merchant_id=merchant_id, vc=command.currency, units=command.amount,
                                       reference=txn_id, spent=True)
            return WalletDebitView(player_id=player_id, currency=command.currency, amount=command.amount, balance=after)

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=201)
