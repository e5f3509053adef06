"""At start: finish the requests that a crash cut between their two transactions.

Their idempotency keys are still `running`; each names the step that finishes it."""

from __future__ import annotations

import logging

from apss.services.checkout import Checkout
from apss.services.merchants import Merchants
from apss.services.refunds import Refunds
from apss.store import idempotency as keys
from apss.store.db import Database

__all__ = ["resume_running"]

log = logging.getLogger("apss.recovery")


async def resume_running(*, db: Database, merchants: Merchants, checkout: Checkout, refunds: Refunds) -> int:
    resumed = 0
    for row in await keys.running_keys(db):
        kind, _, reference = (row["resume"] or "").partition(":")
        merchant = merchants.by_id(row["merchant_id"])
        assert merchant is not None, row["merchant_id"]
        assert kind in ("order", "refund"), f"cannot resume {row['resume']!r}"
        try:
            if kind == "order":
                await checkout.resume(merchant=merchant, order_id=reference, idem_key=row["key"])
            else:
                await refunds.resume(merchant=merchant, refund_id=reference, idem_key=row["key"])
        except Exception:  # the server still starts; the key stays `running` until the next start
            log.exception("could not finish %s (idempotency key of %s); retried at the next start", row["resume"],
                          row["merchant_id"])
            continue
        resumed += 1
    return resumed
