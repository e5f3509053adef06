"""In-app purchases: a store transaction (Apple's StoreKit 2 signed transaction) becomes an order
in the same orders, ledger and reports as a web sale, delivered once; the store's server
notifications refund, revoke and renew through the same paths.

- `POST /v1/iap/apple`: the signed transaction is verified offline (outside any transaction),
  then one write transaction: a transaction this merchant delivered before answers its first
  order (`seen_before`); else the product whose sku is the store's product id is sold at the
  store's price (Apple's milliunits, in the storefront's currency), paid through the channel,
  the stock taken, the goods delivered, the capture posted with the store's commission as the
  channel's fee, and the transaction recorded: `store_transactions`' primary key is the rule
  that a transaction is delivered once.
- Notifications (`/v1/channels/apple/webhook/{merchant}`): verified the same way, recorded once
  per merchant and `notificationUUID` (provider_events), and applied in the same transaction:
  REFUND books the store's refund through the refund path (once: nothing left, nothing booked),
  REVOKE (Family Sharing ended) takes the goods back, DID_RENEW / SUBSCRIBED / ONE_TIME_CHARGE /
  OFFER_REDEEMED deliver the transaction they carry to the player of its original transaction,
  and everything else (DID_FAIL_TO_RENEW, EXPIRED, GRACE_PERIOD_EXPIRED, REFUND_DECLINED, TEST...)
  is acknowledged and recorded; REFUND_REVERSED raises an alert (the money came back: a person
  decides whether to grant again).
"""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.channels.base import (
    CallbackReply,
    CallbackRequest,
    Capability,
    StorePurchase,
    VerifiesStorePurchases,
)
from apss.clock import Clock
from apss.domain.payments import PaymentStatus
from apss.errors import ApssError, InvalidRequest, NotFound, OutOfStock
from apss.ids import new_id, new_token
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.money.ledger import Ledger
from apss.services.orders import lifecycle
from apss.services.payments.channels import ChannelAccess
from apss.services.players.wallets import PLAYER_ID_PATTERN
from apss.services.refunds.refunds import Refunds
from apss.services.views import OrderView, encode, order_view
from apss.store import catalog, iap, orders
from apss.store.db import Database, Row, Tx

__all__ = ["StoreOrderView", "StorePurchaseIn", "StorePurchases"]

log = logging.getLogger("apss.iap")
# The notifications that carry a purchase to deliver (to the player of its original transaction).
_DELIVERING = frozenset({"DID_RENEW", "SUBSCRIBED", "ONE_TIME_CHARGE", "OFFER_REDEEMED"})


class StorePurchaseIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: Annotated[str, Meta(pattern=PLAYER_ID_PATTERN)]
    signed_transaction: Annotated[str, Meta(min_length=1, max_length=65_536)]


class StoreOrderView(OrderView, kw_only=True):
    """The order of a store transaction; `seen_before`: delivered by an earlier request."""

    seen_before: bool = False


class StorePurchases:
    def __init__(self, *, db: Database, clock: Clock, wall_clock: Clock, channels: ChannelAccess, merchants: Merchants,
                 ledger: Ledger, refunds: Refunds, game_delivery: lifecycle.GameDelivery, public_url: str) -> None:
        self._db = db
        self._clock = clock
        self._wall_clock = wall_clock
        self._channels = channels
        self._merchants = merchants
        self._ledger = ledger
        self._refunds = refunds
        self._game_delivery = game_delivery
        self._public_url = public_url

    def handles(self, channel_name: str) -> bool:
        return self._channels.registry.supports(channel_name, Capability.VERIFY_STORE_PURCHASE)

    def _store(self, channel_name: str) -> VerifiesStorePurchases:
        if self._channels.registry.get(channel_name) is None:
            raise NotFound(f"No such channel: '{channel_name}'", param="channel")
        return self._channels.registry.capable(channel_name, Capability.VERIFY_STORE_PURCHASE)

    # -- POST /v1/iap/{store} ------------------------------------------------------------------
    async def purchase(self, *, merchant: Merchant, channel_name: str, command: StorePurchaseIn) -> tuple[int, bytes]:
        """(201, the new fulfilled order) or (200, the first order with `seen_before`)."""
        store = self._store(channel_name)
        credentials = self._channels.credentials(merchant, store)  # 400 channel_not_available
        try:
            purchase = store.verify_purchase(command.signed_transaction, credentials)
        except ApssError as error:
            error.param = "signed_transaction"
            raise
        tier = credentials.get("fee_tier")
        if tier not in (None, "standard", "reduced"):
            raise InvalidRequest("The apple channel's fee_tier is standard or reduced.", code="setting_invalid",
                                 param="fee_tier")

        def transaction(tx: Tx) -> tuple[int, bytes]:
            seen = iap.get_transaction_tx(tx, merchant_id=merchant.id, store=store.name,
                                          transaction_id=purchase.transaction_id)
            if purchase.revoked_at_ms is not None and seen is None:
                raise InvalidRequest("The store refunded or revoked this transaction: nothing to deliver.",
                                     code="store_transaction_revoked", param="signed_transaction")
            order_id = seen["order_id"] if seen else self._book_tx(tx, merchant_id=merchant.id, channel=store.name,
                                                                   purchase=purchase, player_id=command.player_id,
                                                                   tier=tier)
            view = order_view(orders.get_order_view_tx(tx, order_id=order_id), public_url=self._public_url)
            answer = StoreOrderView(**msgspec.structs.asdict(view), seen_before=seen is not None)
            return (200 if seen else 201), encode(answer)

        return await self._db.write(transaction)

    def _book_tx(self, tx: Tx, *, merchant_id: str, channel: str, purchase: StorePurchase, player_id: str,
                 tier: str | None) -> str:
        """The order of a store transaction not seen before, paid and delivered; its id. Checks
        first (unknown product, no price, no stock), then writes."""
        product = iap.product_by_sku_tx(tx, merchant_id=merchant_id, sku=purchase.product_id)
        if product is None:
            raise InvalidRequest(f"No product has the sku '{purchase.product_id}' (the store's product id).",
                                 code="store_product_unknown", param="signed_transaction")
        if purchase.amount is None or purchase.currency is None:
            raise InvalidRequest("The transaction carries no price (a StoreKit older than iOS 16?).",
                                 code="store_price_missing", param="signed_transaction")
        quantity = purchase.quantity
        if not catalog.reserve(tx, product_id=product["id"], quantity=quantity):  # the first write: nothing before it
            raise OutOfStock(f"Only {product['stock']} units of '{product['sku']}' are available.", param="signed_transaction")
        # A family member's copy of a purchase moves no money: the purchaser's transaction did.
        amount = 0 if purchase.ownership == "FAMILY_SHARED" else purchase.amount
        now_ms = self._clock.now_ms()
        order_id, payment_id = new_id("ord"), new_id("pay")
        order = {
            "id": order_id, "merchant_id": merchant_id, "player_id": player_id, "status": "pending", "amount": amount,
            "currency": purchase.currency, "channel": channel, "merchant_order_ref": None,
            "metadata": encode({f"{channel}_transaction_id": purchase.transaction_id,
                                f"{channel}_original_transaction_id": purchase.original_transaction_id}).decode(),
            "return_url": None, "checkout_token": new_token(), "payment_id": payment_id, "expires_at_ms": now_ms,
            "created_at_ms": now_ms, "fx": None, "payment_flow": None, "payer_openid": None,
        }
        orders.insert_order(tx, order)
        unit_amount = -(-amount // quantity)  # a line's unit price, never below its share
        orders.insert_items(tx, [(order_id, 0, product["id"], product["sku"], quantity, unit_amount, amount, product["grants"])])
        orders.insert_payment(tx, {"id": payment_id, "order_id": order_id, "merchant_id": merchant_id, "channel": channel,
                                   "status": PaymentStatus.SUCCEEDED.value, "amount": amount,
                                   "currency": purchase.currency, "created_at_ms": now_ms})
        if orders.payment_by_provider_ref(tx, channel=channel, provider_ref=purchase.transaction_id) is None:
            orders.set_payment_details(tx, payment_id=payment_id, fields={"provider_ref": purchase.transaction_id},
                                       now_ms=now_ms)
        orders.insert_event(tx, event_id=new_id("evt"), order_id=order_id, type="order.created", from_status=None,
                            to_status="pending", cause=f"{channel}:{purchase.transaction_id}", now_ms=now_ms)
        iap.insert_transaction(tx, {
            "merchant_id": merchant_id, "store": channel, "transaction_id": purchase.transaction_id,
            "original_transaction_id": purchase.original_transaction_id, "product_id": product["id"],
            "order_id": order_id, "player_id": player_id, "environment": purchase.environment,
            "purchased_at_ms": purchase.purchased_at_ms, "expires_at_ms": purchase.expires_at_ms, "created_at_ms": now_ms})
        payment = orders.get_payment_tx(tx, payment_id=payment_id)
        share = self._ledger.post_capture(tx, payment=payment, fee=self._ledger.store_fee(tier=tier, amount=amount))
        row, items = orders.get_order_tx(tx, order_id=order_id), orders.order_items_tx(tx, order_id)
        lifecycle.pay(tx, row, items, cause=f"{channel}:{purchase.transaction_id}", now_ms=now_ms,
                      game_delivery=self._game_delivery)
        self._ledger.defer_currency_sale(tx, order=row, items=items, merchant_share=share, reference=payment_id)
        return order_id

    # -- notifications ---------------------------------------------------------------------------
    async def handle_notification(self, *, channel_name: str, merchant_id: str, headers: dict[str, str],
                                  body: bytes) -> CallbackReply:
        store = self._store(channel_name)
        merchant = self._merchants.by_id(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="merchant_id")
        credentials = self._channels.credentials(merchant, store)
        request = CallbackRequest(headers=headers, body=body, now_s=self._wall_clock.now_ms() // 1000)
        try:
            notification = store.verify_notification(request, credentials)
        except ApssError as rejected:
            log.warning("notification %s/%s rejected: %s", store.name, merchant.id, rejected.code)
            return store.callback_reply(accepted=False)

        def transaction(tx: Tx) -> str:
            purchase = notification.purchase
            seen = iap.get_transaction_tx(tx, merchant_id=merchant.id, store=store.name,
                                          transaction_id=purchase.transaction_id) if purchase else None
            payment_id = orders.get_order_tx(tx, order_id=seen["order_id"])["payment_id"] if seen else None
            if not orders.record_provider_event(tx, merchant_id=merchant.id, channel=store.name,
                                                event_id=notification.notification_id, kind=notification.type,
                                                payment_id=payment_id, now_ms=self._clock.now_ms()):
                return "duplicate"
            result = self._apply_tx(tx, merchant_id=merchant.id, channel=store.name, kind=notification.type,
                                    purchase=purchase, seen=seen, cause=f"callback:{notification.notification_id}",
                                    tier=credentials.get("fee_tier"))
            orders.set_provider_event_result(tx, merchant_id=merchant.id, channel=store.name,
                                             event_id=notification.notification_id, result=result)
            return result

        result = await self._db.write(transaction)
        log.info("notification %s/%s %s: %s", store.name, merchant.id, notification.type, result)
        return store.callback_reply(accepted=True)

    def _apply_tx(self, tx: Tx, *, merchant_id: str, channel: str, kind: str, purchase: StorePurchase | None,
                  seen: Row | None, cause: str, tier: str | None) -> str:
        if purchase is None:
            return "recorded"
        if kind in _DELIVERING and seen is None:
            return self._deliver_tx(tx, merchant_id=merchant_id, channel=channel, purchase=purchase, tier=tier)
        if seen is None:
            return "unmatched"
        if kind == "REFUND":
            iap.set_revoked(tx, merchant_id=merchant_id, store=channel, transaction_id=purchase.transaction_id,
                            revoked_at_ms=purchase.revoked_at_ms or self._clock.now_ms())
            payment = orders.get_payment_tx(tx, payment_id=orders.get_order_tx(tx, order_id=seen["order_id"])["payment_id"])
            return "applied" if self._refunds.record_store_refund(tx, payment=payment, cause=cause) else "stale"
        if kind == "REVOKE":
            if not iap.set_revoked(tx, merchant_id=merchant_id, store=channel, transaction_id=purchase.transaction_id,
                                   revoked_at_ms=purchase.revoked_at_ms or self._clock.now_ms()):
                return "stale"
            self._refunds.revoke_goods(tx, order=orders.get_order_tx(tx, order_id=seen["order_id"]))
            return "applied"
        if kind == "REFUND_REVERSED":
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="store_refund_reversed", severity="warning",
                                  object_id=seen["order_id"], now_ms=self._clock.now_ms(),
                                  message=f"the store reversed its refund of order {seen['order_id']}: the money is "
                                          "back; grant the goods again if the player should have them")
        return "recorded"

    def _deliver_tx(self, tx: Tx, *, merchant_id: str, channel: str, purchase: StorePurchase, tier: str | None) -> str:
        """A purchase the store told of first (a renewal): delivered to the player of its original
        transaction, if APSS delivered that one; else recorded (the app posts it to /v1/iap)."""
        first = iap.first_of_original_tx(tx, merchant_id=merchant_id, store=channel,
                                         original_transaction_id=purchase.original_transaction_id)
        if first is None or purchase.revoked_at_ms is not None:
            return "unmatched"
        try:
            self._book_tx(tx, merchant_id=merchant_id, channel=channel, purchase=purchase, player_id=first["player_id"],
                          tier=tier)
        except ApssError as refused:  # checked before any write: nothing was written
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="store_purchase_not_delivered", severity="critical",
                                  object_id=purchase.transaction_id, now_ms=self._clock.now_ms(),
                                  message=f"{channel} renewal {purchase.transaction_id} of order {first['order_id']} "
                                          f"was not delivered: {refused.code}")
            return "anomaly"
        return "applied"
