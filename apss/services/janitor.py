"""The payment janitor: asks providers about payments whose outcome is not final at our side.

A provider call that timed out leaves a payment `unknown`; a lost callback leaves it
`requires_action` (or `canceled` once its order expired). At the ages in
`channels.janitor_schedule_s` (default 5 min, 1 h, 1 day after creation) the janitor queries the
channel; a final answer is applied exactly like a callback (same idempotent path, event id
`query:<payment>:<n>`). A payment still `unknown` after the last query raises a critical alert:
a person must look, the system never guesses.
"""

from __future__ import annotations

import logging
import sqlite3

from apss.channels.base import CallbackEvent, PaymentQuery, PaymentReport
from apss.clock import Clock
from apss.config import ChannelsConfig
from apss.errors import ApssError
from apss.services import lifecycle
from apss.services.channels import ChannelAccess
from apss.services.merchants import Merchants
from apss.services.payment_events import PaymentEvents, event_from_report
from apss.store import channels as store
from apss.store.db import Database, Tx

__all__ = ["PaymentJanitor"]

log = logging.getLogger("apss.janitor")
_DAY_MS = 86_400_000


class PaymentJanitor:
    def __init__(self, *, db: Database, clock: Clock, config: ChannelsConfig, channels: ChannelAccess,
                 merchants: Merchants, payment_events: PaymentEvents) -> None:
        self._db = db
        self._clock = clock
        self._config = config
        self._channels = channels
        self._merchants = merchants
        self._events = payment_events

    async def run(self) -> int:
        """Query every payment whose next check is due; returns how many were resolved."""
        now_ms = self._clock.now_ms()
        schedule_ms = [s * 1000 for s in self._config.janitor_schedule_s]
        due = await store.open_payments_due(self._db, now_ms=now_ms, first_check_ms=schedule_ms[0],
                                            oldest_ms=now_ms - schedule_ms[-1] - _DAY_MS, limit=self._config.janitor_batch_max)
        resolved = 0
        for payment in due:
            report = await self._query(payment)
            event = None
            if report is not None:
                event = event_from_report(report, event_id=f"query:{payment['id']}:{payment['checks_done']}",
                                          payment_id=payment["id"], provider_ref=payment["provider_ref"])
            resolved += event is not None
            await self._db.write(lambda tx, p=payment, e=event, r=report: self._record(tx, p, e, r, schedule_ms))
        return resolved

    async def _query(self, payment: sqlite3.Row) -> PaymentReport | None:
        merchant = self._merchants.by_id(payment["merchant_id"])
        channel = self._channels.registry.get(payment["channel"])
        query = PaymentQuery(payment_id=payment["id"], provider_ref=payment["provider_ref"], amount=payment["amount"],
                             currency=payment["currency"])
        try:
            return await channel.query_payment(query, self._channels.credentials(merchant, channel))
        except ApssError as error:
            log.warning("janitor: %s query for %s failed: %s", channel.name, payment["id"], error.code)
            return None

    def _record(self, tx: Tx, payment: sqlite3.Row, event: CallbackEvent | None, report: PaymentReport | None,
                schedule_ms: list[int]) -> None:
        now_ms = self._clock.now_ms()
        if event is not None:
            self._events.apply_event(tx, payment["channel"], payment["merchant_id"], event)
        done = payment["checks_done"] + 1
        next_at = None if event is not None or done >= len(schedule_ms) else payment["created_at_ms"] + schedule_ms[done]
        store.record_check(tx, payment_id=payment["id"], checks_done=done, next_check_at_ms=next_at,
                           last_status=report.status.value if report else "query_failed", now_ms=now_ms)
        if next_at is None and event is None and payment["status"] == "unknown":
            lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="payment_unresolved", severity="critical",
                                  object_id=payment["id"], now_ms=now_ms,
                                  message=f"{payment['channel']} never said what became of payment {payment['id']}")
