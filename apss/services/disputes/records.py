"""Dispute records, applied from the providers' dispute events (inside the callback's write
transaction, after the event was de-duplicated per merchant):

- the first event of a provider dispute id creates the record (UNIQUE per merchant, channel and
  provider id: a second `dispute.created`, under any event id, books nothing twice). An event
  that is not the first (updated, closed) for a dispute never seen creates it first, so an
  out-of-order `closed` still books the chargeback and then its outcome;
- opening books the chargeback (services/refunds `apply_chargeback`: a forced refund, ledger kind
  `chargeback`; no dispute fee is booked: APSS has no fee rule for disputes) unless it is an
  inquiry, and applies the merchant's policy as it is at that moment (copied onto the record):
  `revoke_goods` (default true) takes back what was delivered as a full refund does (`debt`
  policy); `block_player` (default false) puts the player on the `blocked_players` risk list
  (`request_player_block`, the one place that acts on it);
- a status move is guarded by the table of apss/domain/disputes.py: a report for a closed dispute
  is stale; `won` posts the chargeback's entries swapped (kind `chargeback_reversed`) and
  re-books as plain refunds the over-refunds the capture covers again (services/refunds
  `cover_over_refunds`), `lost` keeps them;
- webhooks `dispute.created`, `dispute.updated`, `dispute.closed`, with the dispute as object.
"""

from __future__ import annotations

import msgspec

from apss.channels.base import CallbackEvent, DisputeReport
from apss.clock import Clock, format_rfc3339
from apss.domain.disputes import (
    CLOSED_DISPUTE_STATUSES,
    DISPUTE_TRANSITIONS,
    DisputeStatus,
    won_entries,
)
from apss.domain.ledger import Entry
from apss.domain.payments import CallbackKind
from apss.errors import NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.money.ledger import Ledger
from apss.services.orders import lifecycle
from apss.services.refunds.refunds import Refunds
from apss.store import disputes as store
from apss.store import orders
from apss.store import risk as risk_store
from apss.store.db import Database, Row, Tx

__all__ = ["DisputeEventList", "DisputeEventView", "DisputeList", "DisputePolicy", "DisputePolicyUpdate", "DisputeRecords", "DisputeView", "dispute_view"]

_EVENTS_MAX = 500


class DisputePolicy(msgspec.Struct, frozen=True, kw_only=True):
    revoke_goods: bool = True  # take back what the order delivered when the dispute opens
    block_player: bool = False  # put the player on the blocked_players list


class DisputePolicyUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    revoke_goods: bool
    block_player: bool


class DisputeView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    order_id: str
    payment_id: str
    channel: str
    provider_dispute_id: str
    player_id: str
    reason: str | None
    amount: int
    currency: str
    status: str  # needs_response | under_review | won | lost
    inquiry: bool  # the bank only asked: no chargeback was booked
    evidence_due_by: str | None
    chargeback_refund_id: str | None  # the forced refund (reason chargeback) that booked it
    policy: DisputePolicy  # as applied when the dispute opened
    evidence_submitted_at: str | None
    created_at: str
    updated_at: str
    closed_at: str | None


class DisputeEventView(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    from_status: str | None
    to_status: str | None
    cause: str
    detail: str | None
    created_at: str


class DisputeList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[DisputeView]
    has_more: bool
    next_cursor: str | None


class DisputeEventList(msgspec.Struct, frozen=True, kw_only=True):
    """A dispute's steps (all of them: has_more is false)."""

    data: list[DisputeEventView]
    has_more: bool
    next_cursor: str | None


def _time(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339(ms)


def dispute_view(row: Row) -> DisputeView:
    assert row["status"] in {s.value for s in DisputeStatus}, row["status"]
    return DisputeView(
        id=row["id"], order_id=row["order_id"], payment_id=row["payment_id"], channel=row["channel"],
        provider_dispute_id=row["provider_dispute_id"], player_id=row["player_id"], reason=row["reason"],
        amount=row["amount"], currency=row["currency"], status=row["status"], inquiry=bool(row["inquiry"]),
        evidence_due_by=_time(row["evidence_due_by_ms"]), chargeback_refund_id=row["refund_id"],
        policy=DisputePolicy(revoke_goods=bool(row["revoke_goods"]), block_player=bool(row["player_block_requested"])),
        evidence_submitted_at=_time(row["evidence_submitted_at_ms"]), created_at=format_rfc3339(row["created_at_ms"]),
        updated_at=format_rfc3339(row["updated_at_ms"]), closed_at=_time(row["closed_at_ms"]))


def event_view(row: Row) -> DisputeEventView:
    return DisputeEventView(type=row["type"], from_status=row["from_status"], to_status=row["to_status"], cause=row["cause"],
                            detail=row["detail"], created_at=format_rfc3339(row["created_at_ms"]))


def request_player_block(tx: Tx, dispute: Row, *, now_ms: int) -> None:
    """The merchant's policy puts the disputing player on the `blocked_players` risk list (their
    next order is blocked by the rule `block if player_id in @blocked_players`); the dispute's
    timeline says so."""
    item_id = new_id("rli")
    risk_store.insert_list_item(tx, {
        "id": item_id, "merchant_id": dispute["merchant_id"], "list": "blocked_players",
        "value": dispute["player_id"], "display": dispute["player_id"], "reason": f"dispute {dispute['id']}",
        "created_by": "dispute", "expires_at_ms": None, "created_at_ms": now_ms})
    store.insert_event(tx, dispute_id=dispute["id"], type="player_blocked", from_status=None, to_status=None,
                       cause="policy", detail=f"blocked_players: {item_id}", now_ms=now_ms)


class DisputeRecords:
    def __init__(self, *, db: Database, clock: Clock, ledger: Ledger, refunds: Refunds, idempotency: Idempotency) -> None:
        self._db = db
        self._clock = clock
        self._ledger = ledger
        self._refunds = refunds
        self._idempotency = idempotency

    # -- applied from callbacks ------------------------------------------------------------------
    def apply_event(self, tx: Tx, *, channel: str, payment: Row, event: CallbackEvent) -> str:
        assert event.kind in (CallbackKind.DISPUTE_CREATED, CallbackKind.DISPUTE_UPDATED, CallbackKind.DISPUTE_CLOSED)
        report = event.dispute
        if report is None:  # a channel that names no dispute id: the event is the dispute
            if event.kind is not CallbackKind.DISPUTE_CREATED:
                return "unmatched"
            report = DisputeReport(provider_dispute_id=event.event_id, status="needs_response", reason=event.failure_code)
        cause = f"callback:{event.event_id}"
        row = store.dispute_by_provider_id_tx(tx, merchant_id=payment["merchant_id"], channel=channel,
                                              provider_dispute_id=report.provider_dispute_id)
        opened = row is None
        if row is None:
            if event.currency is not None and event.currency != payment["currency"]:
                lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="amount_mismatch", severity="critical",
                                      object_id=payment["id"], now_ms=self._clock.now_ms(),
                                      message=f"dispute {report.provider_dispute_id[:64]} is in {event.currency}, "
                                              f"payment {payment['id']} in {payment['currency']}: not booked")
                return "anomaly"
            row = self._open(tx, channel=channel, payment=payment, event=event, report=report, cause=cause)
            if row is None:
                return "stale"
        moved = self._move(tx, row, DisputeStatus(report.status), cause=cause)
        return "applied" if opened or moved else "stale"

    def _open(self, tx: Tx, *, channel: str, payment: Row, event: CallbackEvent, report: DisputeReport,
              cause: str) -> Row | None:
        policy = self.policy_tx(tx, payment["merchant_id"])
        refund_id = None
        if not report.inquiry:
            refund_id = self._refunds.apply_chargeback(tx, payment=payment, amount=event.amount, event_id=event.event_id,
                                                       revoke=policy.revoke_goods)
            if refund_id is None:
                return None  # the payment never succeeded: nothing was taken
        now_ms = self._clock.now_ms()
        dispute_id = new_id("dsp")
        store.insert_dispute(tx, {
            "id": dispute_id, "merchant_id": payment["merchant_id"], "order_id": payment["order_id"],
            "payment_id": payment["id"], "channel": channel, "provider_dispute_id": report.provider_dispute_id,
            "player_id": self._player_of(tx, payment), "reason": report.reason,
            "amount": event.amount if event.amount and event.amount > 0 else payment["amount"],
            "currency": payment["currency"], "status": DisputeStatus.NEEDS_RESPONSE.value, "inquiry": int(report.inquiry),
            "evidence_due_by_ms": report.evidence_due_by_s * 1000 if report.evidence_due_by_s else None,
            "refund_id": refund_id, "revoke_goods": int(policy.revoke_goods and not report.inquiry),
            "player_block_requested": int(policy.block_player), "created_at_ms": now_ms})
        detail = f"chargeback {refund_id}" if refund_id else "inquiry: nothing booked"
        store.insert_event(tx, dispute_id=dispute_id, type="dispute.created", from_status=None,
                           to_status=DisputeStatus.NEEDS_RESPONSE.value, cause=cause, detail=detail, now_ms=now_ms)
        row = store.get_dispute_tx(tx, dispute_id=dispute_id)
        if policy.block_player:
            request_player_block(tx, row, now_ms=now_ms)
        tx.emit(merchant_id=payment["merchant_id"], type="dispute.created", kind="dispute", object_id=dispute_id)
        return row

    @staticmethod
    def _player_of(tx: Tx, payment: Row) -> str:
        order = orders.get_order_tx(tx, order_id=payment["order_id"])
        assert order is not None, payment["id"]
        return order["player_id"]

    def move_tx(self, tx: Tx, *, dispute_id: str, target: DisputeStatus, cause: str) -> bool:
        """Move a dispute by what its channel answered (evidence submitted: `under_review`)."""
        row = store.get_dispute_tx(tx, dispute_id=dispute_id)
        assert row is not None, dispute_id
        return self._move(tx, row, target, cause=cause)

    def _move(self, tx: Tx, row: Row, target: DisputeStatus, *, cause: str) -> bool:
        current = DisputeStatus(row["status"])
        if target is current or target not in DISPUTE_TRANSITIONS[current]:
            return False
        now_ms = self._clock.now_ms()
        closed = target in CLOSED_DISPUTE_STATUSES
        if not store.move_dispute(tx, dispute_id=row["id"], from_status=current.value, to_status=target.value,
                                  now_ms=now_ms, closed=closed):
            return False
        detail = None
        if target is DisputeStatus.WON and row["refund_id"]:
            detail = self._reverse_chargeback(tx, row)
        store.insert_event(tx, dispute_id=row["id"], type="dispute.closed" if closed else "dispute.updated",
                           from_status=current.value, to_status=target.value, cause=cause, detail=detail, now_ms=now_ms)
        tx.emit(merchant_id=row["merchant_id"], type="dispute.closed" if closed else "dispute.updated", kind="dispute",
                object_id=row["id"])
        return True

    def _reverse_chargeback(self, tx: Tx, row: Row) -> str:
        refund_id = row["refund_id"]
        entries = [Entry(account=e["account"], currency=e["currency"], debit=e["debit"], credit=e["credit"])
                   for e in store.chargeback_entries_tx(tx, references=(refund_id, f"{refund_id}:over"))]
        assert entries, f"the chargeback of {row['id']} was booked"
        posted = self._ledger.post(tx, merchant_id=row["merchant_id"], kind="chargeback_reversed", reference=refund_id,
                                   entries=won_entries(entries), memo=f"dispute {row['id']} won")
        assert posted, "a dispute is won once (guarded move)"
        covered = self._refunds.cover_over_refunds(tx, payment_id=row["payment_id"])
        again = f"; {covered} of refunds covered by the capture again" if covered else ""
        return f"chargeback {refund_id} reversed{again}"

    @staticmethod
    def view_tx(tx: Tx, dispute_id: str) -> DisputeView:
        """The dispute as its webhooks carry it (the outbox renders it in the event's transaction)."""
        return dispute_view(store.get_dispute_tx(tx, dispute_id=dispute_id))

    # -- the merchant's policy -----------------------------------------------------------------------
    def policy_tx(self, tx: Tx, merchant_id: str) -> DisputePolicy:
        return _policy(store.get_policy_tx(tx, merchant_id=merchant_id))

    async def policy(self, merchant_id: str) -> DisputePolicy:
        return _policy(await store.fetch_policy(self._db, merchant_id=merchant_id))

    async def set_policy(self, *, merchant_id: str, command: DisputePolicyUpdate, idem: IdempotencyRequest | None) -> Outcome:
        def transaction(tx: Tx) -> DisputePolicy:
            store.upsert_policy(tx, merchant_id=merchant_id, revoke_goods=command.revoke_goods,
                                block_player=command.block_player, now_ms=self._clock.now_ms())
            return self.policy_tx(tx, merchant_id)

        return await self._idempotency.run(self._db, merchant_id=merchant_id, request=idem, fn=transaction, success_status=200)

    # -- reads ------------------------------------------------------------------------------------------
    async def get_row(self, *, merchant_id: str, dispute_id: str) -> Row:
        row = await store.fetch_dispute(self._db, dispute_id=dispute_id)
        if row is None or row["merchant_id"] != merchant_id:
            raise NotFound(f"No such dispute: '{dispute_id}'", param="id")
        return row

    async def get(self, *, merchant_id: str, dispute_id: str) -> DisputeView:
        return dispute_view(await self.get_row(merchant_id=merchant_id, dispute_id=dispute_id))

    async def list(self, *, merchant_id: str, after_id: str | None, limit: int, status: str | None) -> tuple[list[DisputeView], bool]:
        rows = await store.list_disputes(self._db, merchant_id=merchant_id, after_id=after_id, limit=limit + 1, status=status)
        return [dispute_view(r) for r in rows[:limit]], len(rows) > limit

    async def events(self, *, merchant_id: str, dispute_id: str) -> list[DisputeEventView]:
        await self.get_row(merchant_id=merchant_id, dispute_id=dispute_id)
        return [event_view(r) for r in await store.list_events(self._db, dispute_id=dispute_id, limit=_EVENTS_MAX)]


def _policy(row: Row | None) -> DisputePolicy:
    if row is None:
        return DisputePolicy()
    return DisputePolicy(revoke_goods=bool(row["revoke_goods"]), block_player=bool(row["block_player"]))

