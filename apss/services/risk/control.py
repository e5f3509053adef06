"""The merchant's side of risk control: the rule set, list entries, decisions, reviews."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339, parse_rfc3339
from apss.domain.orders import OrderStatus
from apss.errors import InvalidRequest, InvalidTransition, NotFound
from apss.ids import new_id
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant
from apss.services.orders import lifecycle
from apss.services.paging import page_of
from apss.services.refunds.refunds import Refunds
from apss.services.risk.engine import DEFAULT_RULES, Network, RiskEngine, fired_of
from apss.services.views import order_view
from apss.store import catalog, orders
from apss.store import refunds as refund_store
from apss.store import risk as store
from apss.store.db import Database, Row, Tx

__all__ = ["decision_view", "ListItemCreate", "ListItemView", "RiskControl", "RuleIn", "RulesPut", "RulesView", "mask_email"]

_LIST_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PLAYER = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


class RuleIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    rule: Annotated[str, Meta(min_length=1, max_length=2000)]
    enabled: bool = True


class RulesPut(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rules: Annotated[list[RuleIn], Meta(max_length=200)]


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    rule: str
    enabled: bool


class RulesView(msgspec.Struct, frozen=True, kw_only=True):
    rules: list[RuleView]
    default: bool  # true while the merchant never set its own (the built-in defaults apply)


class ListItemCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    value: Annotated[str, Meta(min_length=1, max_length=320)]
    reason: Annotated[str, Meta(max_length=500)] | None = None
    expires_at: Annotated[str, Meta(max_length=40)] | None = None


class ListItemView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    list: str
    value: str  # emails masked
    reason: str | None
    created_by: str
    expires_at: str | None
    created_at: str


class DecisionView(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    score: int
    action: str
    rules_fired: list[dict[str, str]]
    attributes: dict[str, Any]
    created_at: str


class OrderRiskView(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    stage: str
    score: int
    action: str
    rules_fired: list[dict[str, str]]
    attributes: dict[str, Any]
    created_at: str
    history: list[DecisionView]


class ReviewView(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the order id
    order_id: str
    player_id: str
    amount: int
    currency: str
    status: str
    score: int | None
    action: str | None
    rules_fired: list[dict[str, str]]
    created_at: str


def mask_email(email: str) -> str:
    local, _, domain = email.strip().lower().rpartition("@")
    return f"{local[:1]}***@{domain}"


def _item_view(row: Row) -> ListItemView:
    return ListItemView(id=row["id"], list=row["list"], value=row["display"], reason=row["reason"],
                        created_by=row["created_by"], created_at=format_rfc3339(row["created_at_ms"]),
                        expires_at=format_rfc3339(row["expires_at_ms"]) if row["expires_at_ms"] is not None else None)


def decision_view(row: Row, network: Network) -> DecisionView:
    """A stored decision; `network`: the order's IP and device id (RiskEngine.network), which the
    rules saw and the stored attributes do not copy (personal data, sealed in the order's facts)."""
    attributes = msgspec.json.decode(row["attributes"])
    attributes.update((k, v) for k, v in msgspec.structs.asdict(network).items() if v is not None)
    return DecisionView(stage=row["stage"], score=row["score"], action=row["action"],
                        rules_fired=[msgspec.to_builtins(f) for f in fired_of(row["rules_fired"])],
                        attributes=attributes, created_at=format_rfc3339(row["created_at_ms"]))


class RiskControl:
    def __init__(self, *, db: Database, clock: Clock, engine: RiskEngine, refunds: Refunds, idempotency: Idempotency,
                 game_delivery: lifecycle.GameDelivery, public_url: str) -> None:
        self._db = db
        self._clock = clock
        self._engine = engine
        self._refunds = refunds
        self._idempotency = idempotency
        self._game_delivery = game_delivery
        self._public_url = public_url

    # -- rules -----------------------------------------------------------------------------
    async def put_rules(self, *, merchant: Merchant, command: RulesPut) -> RulesView:
        rules = [(r.name, r.rule, r.enabled) for r in command.rules]
        names = [r.name for r in command.rules]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise InvalidRequest(f"Two rules are named '{name}'.", code="rule_name_taken", param=f"rules[{index}].name")
        self._engine.compile_rules(rules, merchant_currency=merchant.currency)  # 400 before the writer
        await self._db.write(lambda tx: self._engine.replace_rules_tx(tx, merchant_id=merchant.id,
                                                                       merchant_currency=merchant.currency, rules=rules))
        return await self.get_rules(merchant=merchant)

    async def get_rules(self, *, merchant: Merchant) -> RulesView:
        rows = await store.get_rules(self._db, merchant_id=merchant.id)
        if rows is None:
            return RulesView(rules=[RuleView(name=n, rule=r, enabled=True) for n, r in DEFAULT_RULES], default=True)
        return RulesView(rules=[RuleView(name=r["name"], rule=r["rule"], enabled=bool(r["enabled"])) for r in rows],
                         default=False)

    # -- lists -----------------------------------------------------------------------------
    def _normalised(self, list_name: str, value: str) -> tuple[str, str]:
        """(what is matched, what is shown) for a value of this list; 400 when it cannot belong."""
        value = value.strip()
        bad = InvalidRequest(f"'{list_name}' does not take this value.", code="list_value_invalid", param="value")
        if list_name == "blocked_ips":
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise bad from None
            text = str(network.network_address) if network.num_addresses == 1 else str(network)
            return str(network), text
        if list_name == "blocked_emails":
            if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
                raise bad
            return self._engine.keyed_hash(value.lower()), mask_email(value)
        if list_name == "blocked_players" and not _PLAYER.match(value):
            raise bad
        if len(value) > 256 or not value:
            raise bad
        return value, value

    async def add_item(self, *, merchant: Merchant, list_name: str, command: ListItemCreate,
                       idem: IdempotencyRequest | None) -> Outcome:
        if not _LIST_NAME.match(list_name):
            raise InvalidRequest("A list name is 1-64 letters, digits and '_'.", code="list_name_invalid", param="list")
        matched, shown = self._normalised(list_name, command.value)
        expires_ms = None
        if command.expires_at is not None:
            try:
                expires_ms = parse_rfc3339(command.expires_at)
            except ValueError:
                raise InvalidRequest("expires_at is an RFC 3339 time.", code="invalid_time", param="expires_at") from None

        def transaction(tx: Tx) -> ListItemView:
            item_id, now_ms = new_id("rli"), self._clock.now_ms()
            row = {"id": item_id, "merchant_id": merchant.id, "list": list_name, "value": matched, "display": shown,
                   "reason": command.reason, "created_by": "api", "expires_at_ms": expires_ms, "created_at_ms": now_ms}
            store.insert_list_item(tx, row)
            return _item_view(row)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=201)

    async def list_items(self, *, merchant: Merchant, list_name: str, after_id: str | None,
                         limit: int) -> tuple[list[ListItemView], bool]:
        rows = await store.list_items(self._db, merchant_id=merchant.id, list_name=list_name, after_id=after_id,
                                      limit=limit + 1)
        return page_of(rows, limit, _item_view)

    async def delete_item(self, *, merchant: Merchant, list_name: str, item_id: str) -> ListItemView:
        def transaction(tx: Tx) -> ListItemView:
            row = store.delete_list_item(tx, merchant_id=merchant.id, list_name=list_name, item_id=item_id)
            if row is None:
                raise NotFound(f"No such list item: '{item_id}'", param="item_id")
            return _item_view(row)

        return await self._db.write(transaction)

    # -- decisions -------------------------------------------------------------------------
    async def order_risk(self, *, merchant: Merchant, order_id: str) -> OrderRiskView:
        order = await orders.fetch_order(self._db, order_id=order_id)
        if order is None or order["merchant_id"] != merchant.id:
            raise NotFound(f"No such order: '{order_id}'", param="id")
        rows = await store.list_decisions(self._db, order_id=order_id)
        if not rows:
            raise NotFound(f"Order '{order_id}' has no risk decision (wallet and subscription orders are not assessed).",
                           param="id")
        network = await self._engine.network(order_id=order_id)
        latest, *earlier = [decision_view(r, network) for r in rows]
        return OrderRiskView(order_id=order_id, stage=latest.stage, score=latest.score, action=latest.action,
                             rules_fired=latest.rules_fired, attributes=latest.attributes, created_at=latest.created_at,
                             history=earlier)

    # -- reviews ---------------------------------------------------------------------------
    async def reviews(self, *, merchant: Merchant, after_id: str | None, limit: int) -> tuple[list[ReviewView], bool]:
        rows = await store.list_in_review(self._db, merchant_id=merchant.id, after_id=after_id, limit=limit + 1)
        views = []
        for row in rows:
            order = await orders.fetch_order(self._db, order_id=row["id"])
            decisions = await store.list_decisions(self._db, order_id=row["id"])
            # The decision that held it: the latest that was not an allow, else the latest.
            held = next((d for d in decisions if d["action"] in ("review", "block")), decisions[0] if decisions else None)
            views.append(ReviewView(
                id=order["id"], order_id=order["id"], player_id=order["player_id"], amount=order["amount"],
                currency=order["currency"], status=order["status"], score=held["score"] if held else None,
                action=held["action"] if held else None, created_at=format_rfc3339(order["created_at_ms"]),
                rules_fired=[msgspec.to_builtins(f) for f in fired_of(held["rules_fired"])] if held else []))
        return page_of(views, limit, lambda v: v)

    def _held_tx(self, tx: Tx, *, merchant: Merchant, order_id: str) -> Row:
        order = orders.get_order_tx(tx, order_id=order_id, merchant_id=merchant.id)
        if order is None:
            raise NotFound(f"No such order: '{order_id}'", param="order_id")
        if order["status"] != OrderStatus.IN_REVIEW.value:
            raise InvalidTransition(f"Order '{order_id}' is '{order['status']}', not in review.")
        return order

    def approve_tx(self, tx: Tx, *, merchant: Merchant, order_id: str, cause: str = "review:approved") -> None:
        """Deliver a held order's goods (also the KYC path: the player was verified)."""
        order = self._held_tx(tx, merchant=merchant, order_id=order_id)
        lifecycle.deliver_paid(tx, order, orders.order_items_tx(tx, order_id), now_ms=self._clock.now_ms(),
                               game_delivery=self._game_delivery, cause=cause)

    async def approve(self, *, merchant: Merchant, order_id: str, idem: IdempotencyRequest | None) -> Outcome:
        def transaction(tx: Tx) -> Any:
            self.approve_tx(tx, merchant=merchant, order_id=order_id)
            return order_view(orders.get_order_view_tx(tx, order_id=order_id), public_url=self._public_url)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=200)

    def reject_tx(self, tx: Tx, *, merchant: Merchant, order_id: str, cause: str = "review:rejected",
                  reason: str = "risk_rejected") -> None:
        """Queue the full refund of a held order and put its units back in stock (also the KYC
        path: the player's KYC was rejected)."""
        order = self._held_tx(tx, merchant=merchant, order_id=order_id)
        payment = orders.get_payment_tx(tx, payment_id=order["payment_id"])
        taken = refund_store.refunded_total(tx, payment_id=payment["id"], statuses=("pending", "succeeded"))
        if taken >= payment["amount"]:
            raise InvalidTransition(f"Order '{order_id}' is already being refunded.")
        self._refunds.queue_refund(tx, payment=payment, reason=reason)
        for item in orders.order_items_tx(tx, order_id):
            catalog.return_sold(tx, product_id=item["product_id"], quantity=item["quantity"])
        orders.insert_event(tx, event_id=new_id("evt"), order_id=order_id, type="order.review_rejected",
                            from_status=order["status"], to_status=order["status"], cause=cause,
                            now_ms=self._clock.now_ms())

    async def reject(self, *, merchant: Merchant, order_id: str, idem: IdempotencyRequest | None) -> Outcome:
        """Refund in full through the channel (the order becomes `refunded` when the refund
        succeeds) and put the units back in stock now."""

        def transaction(tx: Tx) -> Any:
            self.reject_tx(tx, merchant=merchant, order_id=order_id)
            return order_view(orders.get_order_view_tx(tx, order_id=order_id), public_url=self._public_url)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction,
                                           success_status=200)
