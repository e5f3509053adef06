"""Finishing two-step requests (an order, a refund, a manual settlement run) cut between their
transactions.

Their idempotency keys are still `running`, each naming the step that finishes it:
- at start (`resume_running`): a crash cut them; the provider is asked again with the same id
  (its idempotency key), so a retry finds the first attempt;
- while serving (`complete_stale`, the completer job, Stripe's name for it): something failed
  between the transactions without a crash (an exception, a 503 from the writer, a cancelled
  request). After `orders.idempotency_running_max_s` the key is finished without another provider
  call: an order fails and releases its stock, a refund answers as it stands (`pending`, for the
  janitor), and the key replays that answer from then on.
A manual settlement run calls no provider: both paths simply run its remaining chunks and answer.
"""

from __future__ import annotations

import logging

from apss.clock import Clock
from apss.services.merchants.keys import Merchants
from apss.services.money.settlement import Settlements
from apss.services.orders.checkout import Checkout
from apss.services.refunds.refunds import Refunds
from apss.store import idempotency as keys
from apss.store.db import Database

__all__ = ["Completer", "resume_running"]

log = logging.getLogger("apss.recovery")


def _parse(resume: str | None) -> tuple[str, str]:
    kind, _, reference = (resume or "").partition(":")
    assert kind in ("order", "refund", "settlement") and reference, f"cannot resume {resume!r}"
    return kind, reference


async def resume_running(*, db: Database, merchants: Merchants, checkout: Checkout, refunds: Refunds,
                         settlements: Settlements) -> int:
    resumed = 0
    for row in await keys.running_keys(db):
        kind, reference = _parse(row["resume"])
        merchant = merchants.by_id(row["merchant_id"])
        assert merchant is not None, row["merchant_id"]
        try:
            if kind == "order":
                await checkout.resume(merchant=merchant, order_id=reference, idem_key=row["key"])
            elif kind == "settlement":
                await settlements.resume(merchant_id=reference, idem_key=row["key"])
            else:
                await refunds.resume(merchant=merchant, refund_id=reference, idem_key=row["key"])
        except Exception:  # the server still starts; the completer finishes the key later
            log.exception("could not finish %s (idempotency key of %s) at start", row["resume"], row["merchant_id"])
            continue
        resumed += 1
    return resumed


class Completer:
    def __init__(self, *, db: Database, clock: Clock, merchants: Merchants, checkout: Checkout, refunds: Refunds,
                 settlements: Settlements, running_max_s: int) -> None:
        self._db = db
        self._clock = clock
        self._merchants = merchants
        self._checkout = checkout
        self._refunds = refunds
        self._settlements = settlements
        self._running_max_ms = running_max_s * 1000

    async def complete_stale(self) -> int:
        """The completer job: finish every key `running` for longer than the limit."""
        cutoff_ms = self._clock.now_ms() - self._running_max_ms
        finished = 0
        for row in await keys.running_keys(self._db, created_before_ms=cutoff_ms):
            kind, reference = _parse(row["resume"])
            merchant = self._merchants.by_id(row["merchant_id"])
            if kind == "order":
                await self._checkout.abandon(merchant=merchant, order_id=reference, idem_key=row["key"])
            elif kind == "settlement":
                await self._settlements.resume(merchant_id=reference, idem_key=row["key"])
            else:
                await self._refunds.abandon(merchant=merchant, refund_id=reference, idem_key=row["key"])
            log.warning("completed %s: its request stopped between its transactions", row["resume"])
            finished += 1
        return finished
