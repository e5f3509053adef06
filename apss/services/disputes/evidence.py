"""The evidence bundle of a dispute, and its submission to the channel.

The bundle (`GET /v1/disputes/{id}/evidence`) is read from what APSS holds: the order and its
event timeline, the delivery log (the game delivery, the lines with what each unit granted, the
wallet movements the order made), the player's history with this merchant (first order seen,
counts, recent orders, refunds, disputes), the IPs and devices seen on the order, and the risk
decision (both as the risk check recorded them at order creation and on the callback).

Submission (`POST /v1/disputes/{id}/submit`) turns the bundle into Stripe's evidence fields
(`product_description`, `customer_purchase_ip`, `service_date`, `access_activity_log`,
`uncategorized_text`) and sends them through the gateway to a channel that takes evidence; the
channel's answer moves the dispute (`under_review`). A channel that cannot take evidence is 409
`dispute_evidence_not_supported`; a closed dispute 409 `invalid_state`; a second submission 409
`dispute_evidence_already_submitted`; a provider refusal 409 `dispute_evidence_refused`; an
unknown outcome 502 `channel_unavailable` (a retry sends the same fields under the same
idempotency key).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from apss.channels.base import Capability, DisputeEvidence, DisputeEvidenceResult
from apss.clock import Clock, format_rfc3339
from apss.domain.disputes import CLOSED_DISPUTE_STATUSES, DisputeStatus
from apss.errors import ChannelUnavailable, Conflict, InvalidTransition
from apss.services.disputes.records import (
    DisputeEventView,
    DisputeRecords,
    DisputeView,
    dispute_view,
)
from apss.services.merchants.keys import Merchant
from apss.services.orders.queries import OrderQueries
from apss.services.payments.gateway import PaymentGateway
from apss.services.risk.control import DecisionView, decision_view
from apss.services.risk.engine import Network, RiskEngine
from apss.services.views import OrderEventView, OrderView
from apss.store import disputes as store
from apss.store import orders as order_store
from apss.store import risk as risk_store
from apss.store.db import Database, Row, Tx

__all__ = ["EvidenceBundle", "EvidenceSubmit", "DisputeEvidenceService", "network_seen", "risk_decision_of"]

_HISTORY_MAX = 50
_FIELD_CHARS_MAX = 20_000  # Stripe takes 150,000 characters over all fields
_grants = msgspec.json.Decoder(list[dict[str, Any]])


class EvidenceSubmit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, Meta(max_length=_FIELD_CHARS_MAX)] | None = None  # the merchant's own words, first


class DeliveryLine(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    quantity: int
    grants: list[dict[str, Any]]  # what one unit delivered


class WalletLine(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    amount: int
    reason: str | None
    created_at: str


class GameDelivery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: str
    created_at: str
    acknowledged_at: str | None


class DeliveryLog(msgspec.Struct, frozen=True, kw_only=True):
    delivered_at: str | None  # when the order became fulfilled
    lines: list[DeliveryLine]
    game_delivery: GameDelivery | None
    wallet: list[WalletLine]


class PlayerHistory(msgspec.Struct, frozen=True, kw_only=True):
    player_id: str
    first_seen_at: str | None
    orders_total: int
    orders_paid: int
    orders: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    disputes: list[dict[str, Any]]


class NetworkSeen(msgspec.Struct, frozen=True, kw_only=True):
    ips: list[str] = []
    devices: list[str] = []


class EvidenceBundle(msgspec.Struct, frozen=True, kw_only=True):
    dispute: DisputeView
    dispute_events: list[DisputeEventView]
    order: OrderView
    order_events: list[OrderEventView]
    delivery: DeliveryLog
    player: PlayerHistory
    network: NetworkSeen
    risk_decision: DecisionView | None


def network_seen(network: Network) -> NetworkSeen:
    """The IP and device the order came from, as the risk check recorded them (opened)."""
    return NetworkSeen(ips=[network.ip] if network.ip else [], devices=[network.device_id] if network.device_id else [])


async def risk_decision_of(db: Database, *, order_id: str, network: Network) -> DecisionView | None:
    """The latest risk decision of the order, as `GET /v1/orders/{id}/risk` shows it."""
    rows = await risk_store.list_decisions(db, order_id=order_id)
    return decision_view(rows[0], network) if rows else None


def _time(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339(ms)


class DisputeEvidenceService:
    def __init__(self, *, db: Database, clock: Clock, records: DisputeRecords, orders: OrderQueries,
                 gateway: PaymentGateway, risk: RiskEngine) -> None:
        self._db = db
        self._clock = clock
        self._records = records
        self._orders = orders
        self._gateway = gateway
        self._risk = risk

    async def bundle(self, *, merchant_id: str, dispute_id: str) -> EvidenceBundle:
        row = await self._records.get_row(merchant_id=merchant_id, dispute_id=dispute_id)
        order_events = await self._orders.events(merchant_id=merchant_id, order_id=row["order_id"])
        fulfilled = [e.created_at for e in order_events if e.to_status == "fulfilled"]
        items = await order_store.fetch_items(self._db, order_id=row["order_id"])
        delivery = await store.delivery_of(self._db, order_id=row["order_id"])
        wallet = await store.wallet_lines_of_order(self._db, merchant_id=merchant_id, order_id=row["order_id"],
                                                   limit=_HISTORY_MAX)
        network = await self._risk.network(order_id=row["order_id"])
        return EvidenceBundle(
            dispute=dispute_view(row),
            dispute_events=await self._records.events(merchant_id=merchant_id, dispute_id=dispute_id),
            order=await self._orders.get(merchant_id=merchant_id, order_id=row["order_id"]),
            order_events=order_events,
            delivery=DeliveryLog(
                delivered_at=fulfilled[0] if fulfilled else None,
                lines=[DeliveryLine(sku=i["sku"], quantity=i["quantity"], grants=_grants.decode(i["grants"])) for i in items],
                game_delivery=None if delivery is None else GameDelivery(
                    id=delivery["id"], status=delivery["status"], created_at=format_rfc3339(delivery["created_at_ms"]),
                    acknowledged_at=_time(delivery["acknowledged_at_ms"])),
                wallet=[WalletLine(currency=w["currency"], amount=w["amount"], reason=w["reason"],
                                   created_at=format_rfc3339(w["created_at_ms"])) for w in wallet]),
            player=await self._history(merchant_id=merchant_id, player_id=row["player_id"]),
            network=network_seen(network),
            risk_decision=await risk_decision_of(self._db, order_id=row["order_id"], network=network),
        )

    async def _history(self, *, merchant_id: str, player_id: str) -> PlayerHistory:
        counts = await store.player_first_order_ms(self._db, merchant_id=merchant_id, player_id=player_id)

        def rows(found: list[Row]) -> list[dict[str, Any]]:
            return [{**{k: r[k] for k in r.keys() if k != "created_at_ms"}, "created_at": format_rfc3339(r["created_at_ms"])}
                    for r in found]

        return PlayerHistory(
            player_id=player_id, first_seen_at=_time(counts["first_ms"]), orders_total=counts["orders"],
            orders_paid=counts["paid"],
            orders=rows(await store.player_orders(self._db, merchant_id=merchant_id, player_id=player_id, limit=_HISTORY_MAX)),
            refunds=rows(await store.player_refunds(self._db, merchant_id=merchant_id, player_id=player_id, limit=_HISTORY_MAX)),
            disputes=rows(await store.player_disputes(self._db, merchant_id=merchant_id, player_id=player_id,
                                                      limit=_HISTORY_MAX)))

    # -- submission --------------------------------------------------------------------------------
    async def submit(self, *, merchant: Merchant, dispute_id: str, command: EvidenceSubmit) -> DisputeView:
        row = await self._records.get_row(merchant_id=merchant.id, dispute_id=dispute_id)
        if DisputeStatus(row["status"]) in CLOSED_DISPUTE_STATUSES:
            raise InvalidTransition(f"Dispute '{dispute_id}' is {row['status']}: it takes no more evidence.")
        if row["evidence_submitted_at_ms"] is not None:
            raise Conflict(f"Evidence for dispute '{dispute_id}' was submitted already.",
                           code="dispute_evidence_already_submitted")
        if not self._gateway.supports(row["channel"], Capability.SUBMIT_DISPUTE_EVIDENCE):
            raise Conflict(f"The {row['channel']} channel takes no dispute evidence through APSS: answer it at the provider.",
                           code="dispute_evidence_not_supported")
        payment = await order_store.fetch_payment(self._db, payment_id=row["payment_id"])
        bundle = await self.bundle(merchant_id=merchant.id, dispute_id=dispute_id)
        evidence = DisputeEvidence(dispute_id=dispute_id, provider_dispute_id=row["provider_dispute_id"],
                                   payment_id=row["payment_id"], provider_ref=payment["provider_ref"] or "",
                                   fields=evidence_fields(bundle, text=command.text))
        attempt = await self._gateway.submit_dispute_evidence(merchant, row["channel"], evidence)

        def record(tx: Tx) -> DisputeView:
            now_ms = self._clock.now_ms()
            detail = f"{attempt.outcome}: {', '.join(sorted(evidence.fields))}"
            if not attempt.succeeded:
                detail = f"{attempt.outcome} ({attempt.provider_code or attempt.error_code})"
            store.insert_event(tx, dispute_id=dispute_id, type="evidence_submitted", from_status=None, to_status=None,
                               cause="api", detail=detail, now_ms=now_ms)
            if attempt.succeeded:
                store.mark_evidence_submitted(tx, dispute_id=dispute_id, now_ms=now_ms)
                result: DisputeEvidenceResult = attempt.value
                self._records.move_tx(tx, dispute_id=dispute_id, target=DisputeStatus(result.status), cause="api")
            return dispute_view(store.get_dispute_tx(tx, dispute_id=dispute_id))

        view = await self._db.write(record)
        if attempt.outcome == "unknown":
            raise ChannelUnavailable(f"The {row['channel']} channel did not answer the evidence submission; try again.")
        if attempt.outcome == "failed":
            raise Conflict(f"The {row['channel']} channel refused the evidence ({attempt.provider_code or attempt.error_code}).",
                           code="dispute_evidence_refused")
        return view


def evidence_fields(bundle: EvidenceBundle, *, text: str | None) -> dict[str, str]:
    """Stripe's evidence fields (the sandbox takes the same), as text, each at most 20,000 characters."""
    order = bundle.order
    goods = "; ".join(f"{line.quantity} x {line.sku} ({_grant_text(line.grants)})" for line in bundle.delivery.lines)
    fields = {
        "product_description": f"Virtual goods delivered in-game to player account {order.player_id}: {goods}.",
        "access_activity_log": "\n".join(
            [f"{e.created_at} order {order.id} {e.from_status or '-'} -> {e.to_status} ({e.cause})" for e in bundle.order_events]
            + [f"{w.created_at} wallet {w.currency} {w.amount:+d} ({w.reason or ''})" for w in bundle.delivery.wallet]
            + ([f"{bundle.delivery.game_delivery.created_at} game delivery {bundle.delivery.game_delivery.id} "
                f"{bundle.delivery.game_delivery.status}"] if bundle.delivery.game_delivery else [])),
        "uncategorized_text": "\n".join(filter(None, [
            text,
            f"Player {bundle.player.player_id}: first order {bundle.player.first_seen_at}, {bundle.player.orders_paid} paid "
            f"of {bundle.player.orders_total} orders, {len(bundle.player.refunds)} refunds, "
            f"{len(bundle.player.disputes)} disputes with this merchant.",
        ])),
    }
    if bundle.delivery.delivered_at:
        fields["service_date"] = datetime.fromisoformat(bundle.delivery.delivered_at.replace("Z", "+00:00")).astimezone(
            UTC).strftime("%Y-%m-%d")
    if bundle.network.ips:
        fields["customer_purchase_ip"] = bundle.network.ips[0]
    return {name: value[:_FIELD_CHARS_MAX] for name, value in fields.items() if value}


def _grant_text(grants: list[dict[str, Any]]) -> str:
    parts = []
    for grant in grants:
        amount = grant.get("amount") or grant.get("quantity") or grant.get("duration_days") or ""
        parts.append(f"{grant.get('type', '?')} {grant.get('currency') or grant.get('sku') or ''} {amount}".strip())
    return ", ".join(parts) or "no grants"
