"""Order and payment queries: what the API, the checkout page and the dashboard read. Reader
connections only; nothing here writes (creation and state moves are checkout.py and lifecycle.py)."""

from __future__ import annotations

import msgspec

from apss.clock import format_rfc3339
from apss.domain.orders import PAID_OR_LATER
from apss.errors import NotFound
from apss.services.paging import page_of
from apss.services.views import (
    OrderEventView,
    OrderView,
    PaymentAttemptView,
    PaymentDetailView,
    order_view,
)
from apss.store import channels as channel_store
from apss.store import orders
from apss.store.db import Database

__all__ = ["CheckoutContext", "OrderQueries"]

_CLOSED_DAYS_MAX = 100_000  # remembered day counts (a few MB); beyond it they are counted again
_CLOSED_MARGIN_MS = 60_000


class CheckoutContext(msgspec.Struct, frozen=True, kw_only=True):
    order: OrderView
    merchant_id: str
    return_url: str | None


class OrderQueries:
    def __init__(self, *, db: Database, public_url: str) -> None:
        self._db = db
        self.public_url = public_url
        self._closed_days: dict[tuple[str, int, int], int] = {}  # (merchant, day start, day length) -> orders

    async def get(self, *, merchant_id: str, order_id: str) -> OrderView:
        row = await orders.get_order_view(self._db, merchant_id=merchant_id, order_id=order_id)
        if row is None:
            raise NotFound(f"No such order: '{order_id}'", param="id")
        return order_view(row, public_url=self.public_url)

    async def payment(self, *, merchant_id: str, payment_id: str) -> PaymentDetailView:
        row = await orders.fetch_payment(self._db, payment_id=payment_id)
        if row is None or row["merchant_id"] != merchant_id:
            raise NotFound(f"No such payment: '{payment_id}'", param="id")
        attempts = await channel_store.list_attempts(self._db, payment_id=payment_id)
        refs = await channel_store.list_refs(self._db, payment_id=payment_id)
        return PaymentDetailView(
            id=row["id"], order_id=row["order_id"], channel=row["channel"], status=row["status"], amount=row["amount"],
            currency=row["currency"], provider_ref=row["provider_ref"], provider_refs=refs, failure_code=row["failure_code"],
            attempts=[PaymentAttemptView(channel=a["channel"], operation=a["operation"], outcome=a["outcome"],
                                         error_code=a["error_code"], provider_code=a["provider_code"],
                                         created_at=format_rfc3339(a["created_at_ms"])) for a in attempts],
            created_at=format_rfc3339(row["created_at_ms"]))

    async def by_checkout_token(self, token: str) -> CheckoutContext:
        """The order behind a checkout link, with whose it is and where the payer goes back."""
        row = await orders.get_order_view_by_token(self._db, checkout_token=token)
        if row is None:
            raise NotFound("No such checkout.")
        return CheckoutContext(order=order_view(row, public_url=self.public_url), merchant_id=row["merchant_id"],
                               return_url=row["return_url"])

    async def list(self, *, merchant_id: str, after_id: str | None, limit: int, status: str | None,
                   player_id: str | None) -> tuple[list[OrderView], bool]:
        rows = await orders.list_order_views(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1,
                                             status=status, player_id=player_id)
        return page_of(rows, limit, lambda r: order_view(r, public_url=self.public_url))

    async def created_since(self, *, merchant_id: str, since_ms: int, until_ms: int) -> tuple[int, int]:
        """(orders created in [since, until), how many of them are paid or later), in one SQL count."""
        row = await orders.count_created(self._db, merchant_id=merchant_id, from_ms=since_ms, to_ms=until_ms,
                                         statuses=tuple(sorted(s.value for s in PAID_OR_LATER)))
        return row["orders"], row["in_statuses"]

    async def created_per_day(self, *, merchant_id: str, from_ms: int, days: int, day_ms: int, now_ms: int) -> list[int]:
        """Orders created on each of `days` days from `from_ms`. A day that ended a while before
        `now_ms` is counted once and remembered: an order is stamped with the time it is made and
        the clock never runs backwards, so that count never changes (and the overview does not
        count a fortnight of orders on every load). The margin covers an order whose transaction
        read the clock before the day ended and commits after."""
        starts = [from_ms + day * day_ms for day in range(days)]
        known = {start: self._closed_days.get((merchant_id, start, day_ms)) for start in starts}
        missing = [start for start, count in known.items() if count is None]
        if missing:
            counted = await orders.created_per_day(self._db, merchant_id=merchant_id, from_ms=missing[0],
                                                   to_ms=from_ms + days * day_ms, day_ms=day_ms)
            if len(self._closed_days) > _CLOSED_DAYS_MAX:
                self._closed_days.clear()
            for start in missing:
                known[start] = counted.get((start - missing[0]) // day_ms, 0)
                if start + day_ms + _CLOSED_MARGIN_MS <= now_ms:
                    self._closed_days[(merchant_id, start, day_ms)] = known[start]
        return [known[start] for start in starts]

    async def count_status(self, *, merchant_id: str, status: str, limit: int) -> int:
        """Orders in `status`, counted up to `limit`."""
        return await orders.count_status(self._db, merchant_id=merchant_id, status=status, limit=limit)

    async def events(self, *, merchant_id: str, order_id: str) -> list[OrderEventView]:
        await self.get(merchant_id=merchant_id, order_id=order_id)  # 404 for another merchant's order
        rows = await orders.list_order_events(self._db, order_id=order_id)
        return [OrderEventView(id=r["id"], type=r["type"], from_status=r["from_status"], to_status=r["to_status"],
                               cause=r["cause"], created_at=format_rfc3339(r["created_at_ms"])) for r in rows]
