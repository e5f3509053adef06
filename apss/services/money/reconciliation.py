"""Reconciliation: provider statements matched against our payments and refunds, and the
statement-free checks that find money or goods stuck on the way.

A statement (CSV, parsed by the channel adapter's `parse_statement`) is matched line by line by
the provider's reference: `payments.provider_ref` for a payment, `refunds.provider_refund_ref`
for a refund; a line that carries our payment id falls back to it. Each payment or refund line
gets one status:
- `matched`             same amount, currency and fee as ours;
- `amount_mismatch`     the provider's amount differs from ours (critical);
- `currency_mismatch`   the provider's currency differs from ours (critical);
- `missing_here`        the provider has it, we have no succeeded payment or refund for it, or the
                        statement lists it twice (critical: money we do not account for);
- `fee_mismatch`        the provider's fee differs from the fee the ledger recorded (the
                        fees_expense debit of the payment's `payment_captured` transaction; a
                        refund carries none) (warning);
and every succeeded payment or refund of ours that the ledger posted within the statement's time
span (its lines' first to last `occurred_at`) and that no line names is `missing_at_provider`
(critical). A refund's fee is what the provider gave back of its fee (negative; the app stores
return their commission), against the fees_expense credit of our refund's ledger transaction.
Other lines (fees, payouts, adjustments) are counted as `skipped`. Every discrepancy
raises an alert `reconciliation_<status>`. The same file (by SHA-256) imported again answers the
first run again and raises nothing twice.

A line whose reference is none of ours may still name one of our payments by the store's order
id (Google Play's `GPA.` ids, kept in the order's metadata as `<channel>_order_id`): those of our
payments posted in the span, and of our refunds' payments, are looked up by it.

An aggregate line (`product` set: the App Store's reports total each product per day or fiscal
period) is matched against all of our succeeded payments (or refunds) of that product (our
sku), in its currency, posted to the ledger within its period and claimed by no other line: their
total amount, fee and units against the line's. No such record is `missing_here`; ones in another
currency only, `currency_mismatch`; other units or another total, `amount_mismatch`; another fee
(the store's, taxes included, against the commission we booked), `fee_mismatch`.

Checks without a statement (`checks`, a scheduler job): orders `paid` or `delivering` for longer
than `paid_not_delivered_age_s` raise `paid_not_delivered` (critical), refunds `pending` for
longer than `refund_pending_age_s` raise `refund_stuck` (warning); once per object. Payments
pending at our side for too long are the payment janitor's (apss/services/janitor.py): it asks
the channel's status query and raises `payment_unresolved` when the provider never answers.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from apss.channels.base import Capability, StatementLine
from apss.clock import Clock, format_rfc3339
from apss.errors import ChannelNotAvailable, InvalidRequest, NotFound
from apss.ids import new_id
from apss.services.merchants.keys import Merchant
from apss.services.orders.lifecycle import paid_not_delivered, raise_alert
from apss.services.paging import page_of
from apss.services.payments.channels import ChannelAccess
from apss.store import alerts as alert_store
from apss.store import orders as order_store
from apss.store import reconciliation as store
from apss.store import refunds as refund_store
from apss.store.db import Database, Row, Tx

__all__ = [
    "STATUSES",
    "ItemStatus",
    "Reconciliation",
    "ReconciliationItemView",
    "ReconciliationRunDetail",
    "ReconciliationRunView",
    "reconcile",
]

ItemStatus = Literal["matched", "amount_mismatch", "currency_mismatch", "missing_here", "missing_at_provider",
                     "fee_mismatch"]
STATUSES: tuple[str, ...] = ("matched", "amount_mismatch", "currency_mismatch", "missing_here", "missing_at_provider",
                             "fee_mismatch")
_SEVERITY = {"amount_mismatch": "critical", "currency_mismatch": "critical", "missing_here": "critical",
             "missing_at_provider": "critical", "fee_mismatch": "warning"}
SPAN_RECORDS_MAX = 100_000  # our payments (and refunds) looked at for missing_at_provider
ALERTS_PER_RUN_MAX = 1_000  # beyond this, one alert says how many more the run holds
ITEMS_PER_VIEW_MAX = 100_000
CHECKS_BATCH_MAX = 500



class ReconciliationItemView(msgspec.Struct, frozen=True, kw_only=True):
    line: int | None  # 1-based index of the statement line; None for missing_at_provider
    status: ItemStatus
    kind: Literal["payment", "refund"]
    provider_ref: str | None = None
    payment_id: str | None = None
    refund_id: str | None = None
    ours_amount: int | None = None  # minor units; refunds positive on both sides
    theirs_amount: int | None = None
    ours_fee: int | None = None
    theirs_fee: int | None = None
    currency: str | None = None  # ours when we have the record, else the provider's
    theirs_currency: str | None = None
    detail: str | None = None


class ReconciliationRunView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    channel: str
    source_name: str
    span_start: str | None
    span_end: str | None
    counts: dict[str, int]
    created_at: str


class ReconciliationRunList(msgspec.Struct, frozen=True, kw_only=True):
    """Reconciliation runs, newest first."""

    data: list[ReconciliationRunView]
    has_more: bool
    next_cursor: str | None


class ReconciliationRunDetail(ReconciliationRunView, frozen=True, kw_only=True):
    items: list[ReconciliationItemView]


class _Ours(msgspec.Struct, kw_only=True):
    """Our side of a statement, read before the write (no slow work inside a transaction)."""

    payments_by_ref: dict[str, Row]
    payments_by_id: dict[str, Row]
    refunds_by_ref: dict[str, Row]
    refunds_by_payment: dict[str, list[Row]]
    fees: dict[str, int]
    span_payments: list[Row]
    span_refunds: list[Row]
    refund_fees: dict[str, int] = {}  # refund id -> the fee given back with it (<= 0)
    order_lines: dict[str, tuple[str | None, int]] = {}  # order id -> (its one sku, or None; units)


def _span_ms(lines: list[StatementLine]) -> tuple[int, int] | None:
    times = [line.occurred_at_s for line in lines if line.occurred_at_s is not None]
    if not times:
        return None
    ends = [line.period_end_s if line.period_end_s is not None else line.occurred_at_s + 1
            for line in lines if line.occurred_at_s is not None]
    return min(times) * 1000, max(ends) * 1000


def _payment_item(index: int, line: StatementLine, ours: _Ours, seen: set[str]) -> ReconciliationItemView:
    payment = ours.payments_by_ref.get(line.provider_ref)
    if payment is None and line.payment_id:
        payment = ours.payments_by_id.get(line.payment_id)
    theirs = {"line": index, "kind": "payment", "provider_ref": line.provider_ref, "theirs_amount": line.amount,
              "theirs_fee": line.fee, "theirs_currency": line.currency}
    if payment is None:
        return ReconciliationItemView(status="missing_here", currency=line.currency, payment_id=line.payment_id,
                                      detail="no payment of ours has this reference", **theirs)
    ours_fee = ours.fees.get(payment["id"], 0)
    mine = {"payment_id": payment["id"], "ours_amount": payment["amount"], "ours_fee": ours_fee,
            "currency": payment["currency"]}
    if payment["status"] != "succeeded":
        return ReconciliationItemView(status="missing_here", detail=f"our payment is {payment['status']}", **theirs, **mine)
    if payment["id"] in seen:
        return ReconciliationItemView(status="missing_here", detail="the statement lists this payment twice", **theirs, **mine)
    seen.add(payment["id"])
    return ReconciliationItemView(status=_compare(payment["amount"], payment["currency"], ours_fee, line, line.amount),
                                  **theirs, **mine)


def _refund_item(index: int, line: StatementLine, ours: _Ours, seen: set[str]) -> ReconciliationItemView:
    amount = -line.amount  # a refund leaves the provider balance: negative on the statement
    refund = ours.refunds_by_ref.get(line.provider_ref)
    if refund is None and line.payment_id:
        candidates = [r for r in ours.refunds_by_payment.get(line.payment_id, [])
                      if r["status"] == "succeeded" and r["id"] not in seen]
        refund = next((r for r in candidates if r["amount"] == amount), candidates[0] if candidates else None)
    theirs = {"line": index, "kind": "refund", "provider_ref": line.provider_ref, "theirs_amount": amount,
              "theirs_fee": line.fee, "theirs_currency": line.currency}
    if refund is None:
        return ReconciliationItemView(status="missing_here", currency=line.currency, payment_id=line.payment_id,
                                      detail="no refund of ours has this reference", **theirs)
    ours_fee = ours.refund_fees.get(refund["id"], 0)
    mine = {"payment_id": refund["payment_id"], "refund_id": refund["id"], "ours_amount": refund["amount"],
            "ours_fee": ours_fee, "currency": refund["currency"]}
    if refund["status"] != "succeeded":
        return ReconciliationItemView(status="missing_here", detail=f"our refund is {refund['status']}", **theirs, **mine)
    if refund["id"] in seen:
        return ReconciliationItemView(status="missing_here", detail="the statement lists this refund twice", **theirs, **mine)
    seen.add(refund["id"])
    return ReconciliationItemView(status=_compare(refund["amount"], refund["currency"], ours_fee, line, amount),
                                  **theirs, **mine)


_IDS_IN_DETAIL_MAX = 5


def _aggregate_item(index: int, line: StatementLine, ours: _Ours, claimed: set[str]) -> ReconciliationItemView:
    """A line totalling one product's sales (or refunds) over its period, against ours."""
    assert line.product is not None and line.occurred_at_s is not None and line.period_end_s is not None
    refund = line.kind == "refund"
    start_ms, end_ms = line.occurred_at_s * 1000, line.period_end_s * 1000
    covered = [r for r in (ours.span_refunds if refund else ours.span_payments)
               if r["id"] not in claimed and start_ms <= r["posted_at_ms"] < end_ms
               and ours.order_lines.get(r["order_id"], (None, 0))[0] == line.product]
    same = [r for r in covered if r["currency"] == line.currency]
    theirs_amount, theirs_units = (-line.amount if refund else line.amount), abs(line.quantity or 0)
    theirs = {"line": index, "kind": line.kind, "provider_ref": line.provider_ref, "theirs_amount": theirs_amount,
              "theirs_fee": line.fee, "theirs_currency": line.currency}
    what = "refunds" if refund else "sales"
    if not same:
        claimed.update(r["id"] for r in covered)
        if covered:
            return ReconciliationItemView(status="currency_mismatch", currency=covered[0]["currency"],
                                          ours_amount=sum(r["amount"] for r in covered),
                                          detail=f"our {what} of {line.product} in the period are in another currency",
                                          **theirs)
        return ReconciliationItemView(status="missing_here", currency=line.currency,
                                      detail=f"no {what} of ours of {line.product} in the period", **theirs)
    claimed.update(r["id"] for r in same)
    fees = ours.refund_fees if refund else ours.fees
    ours_amount, ours_fee = sum(r["amount"] for r in same), sum(fees.get(r["id"], 0) for r in same)
    units = sum(ours.order_lines[r["order_id"]][1] for r in same)
    status = _compare(ours_amount, line.currency, ours_fee, line, theirs_amount)
    if units != theirs_units and status in ("matched", "fee_mismatch"):
        status = "amount_mismatch"
    ids = [r["id"] for r in same]
    listed = ", ".join(ids[:_IDS_IN_DETAIL_MAX]) + (f" and {len(ids) - _IDS_IN_DETAIL_MAX} more"
                                                     if len(ids) > _IDS_IN_DETAIL_MAX else "")
    one = same[0] if len(same) == 1 else None
    return ReconciliationItemView(
        status=status, currency=line.currency, ours_amount=ours_amount, ours_fee=ours_fee,
        payment_id=(one["payment_id"] if refund else one["id"]) if one else None,
        refund_id=one["id"] if one and refund else None,
        detail=f"{len(same)} {what} of ours, {units} units (the statement: {theirs_units}): {listed}", **theirs)


def _compare(ours_amount: int, ours_currency: str, ours_fee: int, line: StatementLine, theirs_amount: int) -> ItemStatus:
    """The first difference, in order of gravity: currency, amount, fee."""
    if line.currency != ours_currency:
        return "currency_mismatch"
    if theirs_amount != ours_amount:
        return "amount_mismatch"
    if line.fee is not None and line.fee != ours_fee:
        return "fee_mismatch"
    return "matched"


def reconcile(lines: list[StatementLine], ours: _Ours) -> tuple[list[ReconciliationItemView], int]:
    """Pure matching: (items, number of skipped lines). One item per payment or refund line,
    then one per record of ours in the span that no line named."""
    items: list[ReconciliationItemView] = []
    seen_payments: set[str] = set()
    seen_refunds: set[str] = set()
    skipped = 0
    for index, line in enumerate(lines, start=1):
        if line.product is not None and line.kind in ("payment", "refund"):
            items.append(_aggregate_item(index, line, ours, seen_refunds if line.kind == "refund" else seen_payments))
        elif line.kind == "payment":
            items.append(_payment_item(index, line, ours, seen_payments))
        elif line.kind == "refund":
            items.append(_refund_item(index, line, ours, seen_refunds))
        else:
            skipped += 1
    named_payments = {item.payment_id for item in items if item.kind == "payment"} | seen_payments
    named_refunds = {item.refund_id for item in items if item.kind == "refund"} | seen_refunds
    for payment in ours.span_payments:
        if payment["id"] not in named_payments:
            items.append(ReconciliationItemView(
                line=None, status="missing_at_provider", kind="payment", provider_ref=payment["provider_ref"],
                payment_id=payment["id"], ours_amount=payment["amount"], ours_fee=ours.fees.get(payment["id"], 0),
                currency=payment["currency"], detail="our succeeded payment is not on the statement"))
    for refund in ours.span_refunds:
        if refund["id"] not in named_refunds:
            items.append(ReconciliationItemView(
                line=None, status="missing_at_provider", kind="refund", provider_ref=refund["provider_refund_ref"],
                payment_id=refund["payment_id"], refund_id=refund["id"], ours_amount=refund["amount"], ours_fee=0,
                currency=refund["currency"], detail="our succeeded refund is not on the statement"))
    assert len(items) + skipped >= len(lines)
    return items, skipped


def _counts(lines: list[StatementLine], items: list[ReconciliationItemView], skipped: int) -> dict[str, int]:
    counts = {"lines": len(lines), "skipped": skipped, **dict.fromkeys(STATUSES, 0)}
    for item in items:
        counts[item.status] += 1
    assert sum(counts[s] for s in STATUSES) == len(items)
    return counts


def _run_view(row: Row) -> ReconciliationRunView:
    return ReconciliationRunView(
        id=row["id"], channel=row["channel"], source_name=row["source_name"],
        span_start=format_rfc3339(row["span_start_ms"]) if row["span_start_ms"] is not None else None,
        span_end=format_rfc3339(row["span_end_ms"]) if row["span_end_ms"] is not None else None,
        counts=msgspec.json.decode(row["counts"], type=dict[str, int]), created_at=format_rfc3339(row["created_at_ms"]))


_ITEM_FIELDS = ("line", "status", "kind", "provider_ref", "payment_id", "refund_id", "ours_amount", "theirs_amount",
                "ours_fee", "theirs_fee", "currency", "theirs_currency", "detail")


def _item_view(row: Row) -> ReconciliationItemView:
    return ReconciliationItemView(**{name: row[name] for name in _ITEM_FIELDS})


class Reconciliation:
    def __init__(self, *, db: Database, clock: Clock, channels: ChannelAccess, paid_not_delivered_age_s: int = 300,
                 refund_pending_age_s: int = 3600) -> None:
        assert paid_not_delivered_age_s > 0 and refund_pending_age_s > 0
        self._db = db
        self._clock = clock
        self._channels = channels
        self._paid_age_ms = paid_not_delivered_age_s * 1000
        self._refund_age_ms = refund_pending_age_s * 1000

    # -- statements ------------------------------------------------------------------------
    def statement_channels(self, merchant: Merchant) -> list[str]:
        """The channels whose statements this merchant can import (the dashboard's upload form)."""
        registry = self._channels.registry
        return [name for name in registry.names() if registry.supports(name, Capability.PARSE_STATEMENT)
                and (merchant.mode == "test" or not registry.get(name).test_only)]

    async def import_statement(self, *, merchant: Merchant, channel: str, data: bytes,
                               source_name: str) -> tuple[ReconciliationRunView, bool]:
        """Parse, match, store and alert; (run, created). The same file again: (first run, False)."""
        adapter = self._channels.registry.get(channel)
        if adapter is None:
            raise NotFound(f"No such channel: '{channel}'", param="channel")
        if adapter.test_only and merchant.mode != "test":
            raise ChannelNotAvailable(f"The {channel} channel is for test merchants only.", param="channel")
        if not data.strip():
            raise InvalidRequest("The statement is empty: send the CSV as the request body.", code="statement_empty",
                                 param="statement")
        sha256 = hashlib.sha256(data).hexdigest()
        existing = await store.run_by_hash(self._db, merchant_id=merchant.id, channel=channel, sha256=sha256)
        if existing is not None:
            return _run_view(existing), False
        # ProviderFlowNotSupported: this channel has no statement format
        lines = self._channels.registry.capable(channel, Capability.PARSE_STATEMENT).parse_statement(data)
        span = _span_ms(lines)
        lines, ours = await self._ours(merchant_id=merchant.id, channel=channel, lines=lines, span=span)
        items, skipped = reconcile(lines, ours)
        row = {"id": new_id("rcn"), "merchant_id": merchant.id, "channel": channel, "source_name": source_name,
               "source_sha256": sha256, "span_start_ms": span[0] if span else None,
               "span_end_ms": span[1] if span else None, "counts": msgspec.json.encode(_counts(lines, items, skipped)).decode()}
        return await self._db.write(lambda tx: self._store_run(tx, row, items))

    async def _ours(self, *, merchant_id: str, channel: str, lines: list[StatementLine],
                    span: tuple[int, int] | None) -> tuple[list[StatementLine], _Ours]:
        """(the lines, with payment ids found by store order id; our side of them)."""
        span_payments, span_refunds = [], []
        if span is not None:
            span_payments = await store.payments_in_span(self._db, merchant_id=merchant_id, channel=channel,
                                                         from_ms=span[0], to_ms=span[1], limit=SPAN_RECORDS_MAX)
            span_refunds = await store.refunds_in_span(self._db, merchant_id=merchant_id, channel=channel,
                                                       from_ms=span[0], to_ms=span[1], limit=SPAN_RECORDS_MAX)
        single = [line for line in lines if line.kind in ("payment", "refund") and line.product is None]
        payment_refs = [line.provider_ref for line in single if line.kind == "payment"]
        refund_refs = [line.provider_ref for line in single if line.kind == "refund"]
        by_ref = await store.payments_by_refs(self._db, merchant_id=merchant_id, channel=channel, refs=payment_refs)
        refunds = await store.refunds_by_refs(self._db, merchant_id=merchant_id, channel=channel, refs=refund_refs)
        known = {p["provider_ref"] for p in by_ref} | {r["provider_refund_ref"] for r in refunds}
        if any(line.provider_ref not in known and not line.payment_id for line in single):
            lines = await self._by_store_order_id(channel, lines, known, span_payments, span_refunds)
        named_ids = [line.payment_id for line in lines if line.payment_id and line.kind in ("payment", "refund")]
        by_id = await store.payments_by_ids(self._db, merchant_id=merchant_id, channel=channel, ids=named_ids)
        refund_payments = [line.payment_id for line in lines if line.kind == "refund" and line.payment_id]
        of_payments = await store.refunds_of_payments(self._db, merchant_id=merchant_id, payment_ids=refund_payments)
        grouped: dict[str, list[Row]] = {}
        for refund in of_payments:
            grouped.setdefault(refund["payment_id"], []).append(refund)
        payment_ids = {p["id"] for p in (*by_ref, *by_id, *span_payments)}
        refund_ids = {r["id"] for r in (*refunds, *of_payments, *span_refunds)}
        order_lines: dict[str, tuple[str | None, int]] = {}
        if any(line.product is not None for line in lines):
            rows = await store.order_lines(self._db, order_ids={r["order_id"] for r in (*span_payments, *span_refunds)})
            for row in rows:
                sku, units = order_lines.get(row["order_id"], (row["sku"], 0))
                order_lines[row["order_id"]] = (sku if sku == row["sku"] else None, units + row["quantity"])
        return lines, _Ours(
            payments_by_ref={p["provider_ref"]: p for p in by_ref}, payments_by_id={p["id"]: p for p in by_id},
            refunds_by_ref={r["provider_refund_ref"]: r for r in refunds}, refunds_by_payment=grouped,
            fees=await store.captured_fees(self._db, payment_ids=payment_ids),
            refund_fees=await store.refund_fees(self._db, refund_ids=refund_ids),
            span_payments=span_payments, span_refunds=span_refunds, order_lines=order_lines)

    async def _by_store_order_id(self, channel: str, lines: list[StatementLine], known: set[str],
                                 span_payments: list[Row], span_refunds: list[Row]) -> list[StatementLine]:
        """Lines naming a store order id (metadata `<channel>_order_id`) of one of our payments in
        the span (or of a payment refunded in it), given that payment's id."""
        payment_of_order = {**{r["order_id"]: r["payment_id"] for r in span_refunds},
                            **{r["order_id"]: r["id"] for r in span_payments}}
        key = f"{channel}_order_id"
        by_store_id: dict[str, str] = {}
        for row in await store.order_metadata(self._db, order_ids=payment_of_order):
            store_id = msgspec.json.decode(row["metadata"]).get(key) if row["metadata"] else None
            if isinstance(store_id, str):
                by_store_id[store_id] = payment_of_order[row["id"]]
        return [msgspec.structs.replace(line, payment_id=by_store_id[line.provider_ref])
                if line.provider_ref not in known and not line.payment_id and line.provider_ref in by_store_id
                and line.product is None else line for line in lines]

    def _store_run(self, tx: Tx, row: dict, items: list[ReconciliationItemView]) -> tuple[ReconciliationRunView, bool]:
        existing = store.run_by_hash_tx(tx, merchant_id=row["merchant_id"], channel=row["channel"],
                                        sha256=row["source_sha256"])
        if existing is not None:  # the same file, imported concurrently
            return _run_view(existing), False
        now_ms = self._clock.now_ms()
        store.insert_run(tx, {**row, "created_at_ms": now_ms})
        store.insert_items(tx, [{"run_id": row["id"], "seq": seq, **msgspec.structs.asdict(item)}
                                for seq, item in enumerate(items, start=1)])
        discrepancies = [item for item in items if item.status != "matched"]
        for item in discrepancies[:ALERTS_PER_RUN_MAX]:
            where = f"line {item.line}" if item.line is not None else "no line"
            raise_alert(tx, merchant_id=row["merchant_id"], kind=f"reconciliation_{item.status}",
                        severity=_SEVERITY[item.status], object_id=item.refund_id or item.payment_id or item.provider_ref,
                        now_ms=now_ms, message=f"{row['channel']} statement {row['source_name']!r} (run {row['id']}), "
                                               f"{where}, {item.kind} {item.provider_ref or ''}: {item.detail or item.status}")
        if len(discrepancies) > ALERTS_PER_RUN_MAX:
            raise_alert(tx, merchant_id=row["merchant_id"], kind="reconciliation_alerts_truncated", severity="critical",
                        object_id=row["id"], now_ms=now_ms,
                        message=f"run {row['id']} holds {len(discrepancies) - ALERTS_PER_RUN_MAX} more discrepancies")
        stored = store.run_by_hash_tx(tx, merchant_id=row["merchant_id"], channel=row["channel"], sha256=row["source_sha256"])
        assert stored is not None and stored["id"] == row["id"]
        return _run_view(stored), True

    async def list_runs(self, *, merchant_id: str, after_id: str | None, limit: int,
                        channel: str | None) -> tuple[list[ReconciliationRunView], bool]:
        rows = await store.list_runs(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1, channel=channel)
        return page_of(rows, limit, _run_view)

    async def get_run(self, *, merchant_id: str, run_id: str, status: str | None = None) -> ReconciliationRunDetail:
        row = await store.fetch_run(self._db, merchant_id=merchant_id, run_id=run_id)
        if row is None:
            raise NotFound(f"No such reconciliation run: '{run_id}'", param="id")
        items = await store.fetch_items(self._db, run_id=run_id, status=status, limit=ITEMS_PER_VIEW_MAX)
        return ReconciliationRunDetail(**msgspec.structs.asdict(_run_view(row)), items=[_item_view(r) for r in items])

    # -- checks without a statement ----------------------------------------------------------
    async def checks(self) -> int:
        """Raise `paid_not_delivered` and `refund_stuck` once per object; returns how many."""
        now_ms = self._clock.now_ms()
        paid = await store.paid_not_delivered(self._db, kind="paid_not_delivered",
                                              updated_before_ms=now_ms - self._paid_age_ms, limit=CHECKS_BATCH_MAX)
        stuck = await store.refunds_stuck(self._db, kind="refund_stuck", created_before_ms=now_ms - self._refund_age_ms,
                                          limit=CHECKS_BATCH_MAX)
        if not paid and not stuck:
            return 0
        return await self._db.write(lambda tx: self._raise_checks(tx, paid, stuck))

    def _raise_checks(self, tx: Tx, paid: list[Row], stuck: list[Row]) -> int:
        now_ms = self._clock.now_ms()
        raised = 0
        for candidate in paid:
            order = order_store.get_order_tx(tx, order_id=candidate["id"])
            # Re-checked in the write: delivery may have finished since the read.
            if order["status"] not in ("paid", "delivering") or order["updated_at_ms"] >= now_ms - self._paid_age_ms:
                continue
            minutes = (now_ms - order["updated_at_ms"]) // 60_000
            raised += paid_not_delivered(tx, merchant_id=order["merchant_id"], order_id=order["id"], now_ms=now_ms,
                                         detail=f"{order['status']} for {minutes} min without being fulfilled")
        for candidate in stuck:
            refund = refund_store.get_refund_tx(tx, refund_id=candidate["id"])
            if refund["status"] != "pending" or alert_store.alerted(tx, object_id=refund["id"], kind="refund_stuck"):
                continue
            minutes = (now_ms - refund["created_at_ms"]) // 60_000
            raise_alert(tx, merchant_id=refund["merchant_id"], kind="refund_stuck", severity="warning",
                        object_id=refund["id"], now_ms=now_ms,
                        message=f"refund {refund['id']} of order {refund['order_id']} has been pending for {minutes} min")
            raised += 1
        assert raised <= len(paid) + len(stuck)
        return raised
