"""In-app purchases: a store transaction (Apple's StoreKit 2 signed transaction, a Google Play
purchase token) becomes an order in the same orders, ledger and reports as a web sale, delivered
once; the stores' server notifications refund, revoke and renew through the same paths.

- `POST /v1/iap/apple`: the signed transaction is verified offline (outside any transaction),
  then one write transaction: a transaction this merchant delivered before answers its first
  order (`seen_before`); else the product whose sku is the store's product id is sold at the
  store's price (Apple's milliunits, in the storefront's currency), paid through the channel,
  the stock taken, the goods delivered, the capture posted with the store's commission as the
  channel's fee, and the transaction recorded: `store_transactions`' primary key is the rule
  that a transaction is delivered once.
- `POST /v1/iap/google`: the product named is looked up first (it says which of Google's APIs
  holds the purchase: a membership is a subscription), the purchase read from the Play Developer
  API, then the same write transaction, priced at the merchant's own price of the product in the
  channel's `currency` (Google's purchase resources carry no price). After the commit, a purchase
  Google wants acknowledged is acknowledged; a failure leaves it due, and the
  store_acknowledgements job tries again with backoff (Google refunds what is not acknowledged
  within three days).
- Notifications (`/v1/channels/{store}/webhook/{merchant}`): verified by the channel (Apple's
  signatures; Google's confirmed by its API), recorded once per merchant and notification id
  (provider_events), and applied in the same transaction by the action the channel's mapping
  names: `refund` books the store's refund through the refund path (once: nothing left, nothing
  booked), `revoke` (Family Sharing ended) takes the goods back, `deliver` (a renewal) delivers the
  purchase to the player of its original transaction, `refund_reversed` raises an alert (the money
  came back: a person decides whether to grant again), and everything else is recorded.
- Auto-renewable subscriptions (services/subscriptions/stores.py): a store transaction that renews
  is also a period of an APSS subscription, linked before its order is paid (so delivered to the
  period's end, on the store's dates); the subscription actions (`billing_retry`, `grace_period`,
  `expire`, `auto_renew_off`, `auto_renew_on`) move that subscription, and a refund or revoke of
  its current period ends it.
- A push whose own authentication fails (Google's OIDC token, AuthenticationFailed) is 401 in
  APSS's error shape rather than the store's refusal: nothing of it was read.
"""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.channels.base import (
    AcknowledgesStorePurchases,
    CallbackReply,
    CallbackRequest,
    Capability,
    Credentials,
    StoreNotification,
    StorePurchase,
    StoreReceipt,
    VerifiesStorePurchases,
)
from apss.clock import Clock
from apss.domain.payments import PaymentStatus
from apss.errors import ApssError, AuthenticationFailed, InvalidRequest, NotFound, OutOfStock
from apss.ids import new_id, new_token
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.money.ledger import Ledger
from apss.services.orders import lifecycle
from apss.services.payments.channels import ChannelAccess
from apss.services.players.wallets import PLAYER_ID_PATTERN
from apss.services.refunds.refunds import Refunds
from apss.services.subscriptions import stores as store_subscriptions
from apss.services.views import OrderView, encode, order_view
from apss.store import alerts, catalog, iap, orders
from apss.store.db import Database, Row, Tx

__all__ = ["GooglePurchaseIn", "StoreOrderView", "StorePurchaseIn", "StorePurchases"]

log = logging.getLogger("apss.iap")
_ACK_BATCH_MAX = 100
_ACK_BACKOFF_S = (60, 300, 900, 3600)  # after the 1st, 2nd, 3rd failure, then hourly
_ACK_ALERT_AFTER_MS = 2 * 86_400_000  # Google refunds a purchase not acknowledged within 3 days
_SUBSCRIPTION_ACTIONS = frozenset({"billing_retry", "grace_period", "expire", "auto_renew_off", "auto_renew_on"})


class StorePurchaseIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: Annotated[str, Meta(pattern=PLAYER_ID_PATTERN)]
    signed_transaction: Annotated[str, Meta(min_length=1, max_length=65_536)]


class GooglePurchaseIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: Annotated[str, Meta(pattern=PLAYER_ID_PATTERN)]
    product_id: Annotated[str, Meta(min_length=1, max_length=128)]
    purchase_token: Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9._\-]+$")]


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
    async def purchase(self, *, merchant: Merchant, channel_name: str,
                       command: StorePurchaseIn | GooglePurchaseIn) -> tuple[int, bytes]:
        """(201, the new fulfilled order) or (200, the first order with `seen_before`)."""
        player_id = command.player_id
        if isinstance(command, GooglePurchaseIn):
            receipt, param = StoreReceipt(token=command.purchase_token, product_id=command.product_id), "purchase_token"
        else:
            receipt, param = StoreReceipt(token=command.signed_transaction), "signed_transaction"
        store = self._store(channel_name)
        credentials = self._channels.credentials(merchant, store)  # 400 channel_not_available
        tier = credentials.get("fee_tier")
        if tier not in (None, "standard", "reduced"):
            raise InvalidRequest(f"The {store.name} channel's fee_tier is standard or reduced.", code="setting_invalid",
                                 param="fee_tier")
        if receipt.product_id is not None:  # a store read by product (Google): the product says which API
            product = await iap.product_by_sku(self._db, merchant_id=merchant.id, sku=receipt.product_id)
            if product is None:
                raise _unknown_product(receipt.product_id, param="product_id")
            receipt = msgspec.structs.replace(receipt, subscription=product["category"] == "membership")
        try:
            purchase = await store.verify_purchase(receipt, credentials)
        except ApssError as error:
            error.param = param
            raise

        def transaction(tx: Tx) -> tuple[int, bytes, bool]:
            seen = iap.get_transaction_tx(tx, merchant_id=merchant.id, store=store.name,
                                          transaction_id=purchase.transaction_id)
            if seen is None:
                _check_deliverable(purchase, param=param)
            order_id = seen["order_id"] if seen else self._book_tx(tx, merchant_id=merchant.id, channel=store.name,
                                                                   purchase=purchase, player_id=player_id,
                                                                   tier=tier, param=param)
            view = order_view(orders.get_order_view_tx(tx, order_id=order_id), public_url=self._public_url)
            answer = StoreOrderView(**msgspec.structs.asdict(view), seen_before=seen is not None)
            # Due: stored so at delivery, or still due from an earlier request whose attempt failed.
            due = (seen or iap.get_transaction_tx(tx, merchant_id=merchant.id, store=store.name,
                                                  transaction_id=purchase.transaction_id))["ack_due_at_ms"] is not None
            return (200 if seen else 201), encode(answer), due

        status, body, due = await self._db.write(transaction)
        if due:  # delivered: now the store may keep the money (a failure is retried by the job)
            await self._acknowledge(merchant=merchant, credentials=credentials, store_name=store.name,
                                    transaction_id=purchase.transaction_id)
        return status, body

    def _acknowledges(self, channel_name: str) -> bool:
        return self._channels.registry.supports(channel_name, Capability.ACKNOWLEDGE_STORE_PURCHASE)

    def _book_tx(self, tx: Tx, *, merchant_id: str, channel: str, purchase: StorePurchase, player_id: str,
                 tier: str | None, param: str = "signed_transaction") -> str:
        """The order of a store transaction not seen before, paid and delivered; its id. Checks
        first (unknown product, no price, no stock), then writes."""
        product = iap.product_by_sku_tx(tx, merchant_id=merchant_id, sku=purchase.product_id)
        if product is None:
            raise _unknown_product(purchase.product_id, param=param)
        quantity = purchase.quantity
        amount = _amount(purchase, product, param=param)
        period = store_subscriptions.period_tx(tx, merchant_id=merchant_id, store_name=channel, purchase=purchase,
                                               param=param)
        if not catalog.reserve(tx, product_id=product["id"], quantity=quantity):  # the first write: nothing before it
            raise OutOfStock(f"Only {product['stock']} units of '{product['sku']}' are available.", param=param)
        now_ms = self._clock.now_ms()
        order_id, payment_id = new_id("ord"), new_id("pay")
        metadata = {f"{channel}_transaction_id": purchase.transaction_id,
                    f"{channel}_original_transaction_id": purchase.original_transaction_id}
        if purchase.order_ref is not None:
            metadata[f"{channel}_order_id"] = purchase.order_ref
        order = {
            "id": order_id, "merchant_id": merchant_id, "player_id": player_id, "status": "pending", "amount": amount,
            "currency": purchase.currency, "channel": channel, "merchant_order_ref": None,
            "metadata": encode(metadata).decode(),
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
            "purchased_at_ms": purchase.purchased_at_ms, "expires_at_ms": purchase.expires_at_ms, "created_at_ms": now_ms,
            "store_product_id": purchase.product_id, "kind": purchase.type,
            "ack_due_at_ms": None if purchase.acknowledged or not self._acknowledges(channel) else now_ms})
        if period is not None:  # a subscription's period: linked before it is paid, so delivered to its end
            store_subscriptions.attach_tx(tx, order, period=period, purchase=purchase, product=product,
                                          store_name=channel, now_ms=now_ms)
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
            notification = await store.verify_notification(request, credentials)
        except AuthenticationFailed as refused:  # the push's own authentication (Google's OIDC token): 401
            log.warning("notification %s/%s refused: %s", store.name, merchant.id, refused.code)
            raise
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
            result = self._apply_tx(tx, merchant_id=merchant.id, channel=store.name, notification=notification,
                                    seen=seen, tier=credentials.get("fee_tier"))
            orders.set_provider_event_result(tx, merchant_id=merchant.id, channel=store.name,
                                             event_id=notification.notification_id, result=result)
            return result

        result = await self._db.write(transaction)
        log.info("notification %s/%s %s: %s", store.name, merchant.id, notification.type, result)
        return store.callback_reply(accepted=True)

    def _apply_tx(self, tx: Tx, *, merchant_id: str, channel: str, notification: StoreNotification, seen: Row | None,
                  tier: str | None) -> str:
        purchase, action, cause = notification.purchase, notification.action, f"callback:{notification.notification_id}"
        if purchase is None:
            return "recorded"
        if action in _SUBSCRIPTION_ACTIONS:
            return store_subscriptions.apply_tx(tx, merchant_id=merchant_id, store_name=channel,
                                                notification=notification, now_ms=self._clock.now_ms())
        if action == "deliver" and seen is None:
            return self._deliver_tx(tx, merchant_id=merchant_id, channel=channel, notification=notification, tier=tier)
        if seen is None:
            return "unmatched"
        revoked_at_ms = purchase.revoked_at_ms or self._clock.now_ms()
        if action == "refund":
            order = orders.get_order_tx(tx, order_id=seen["order_id"])
            payment = orders.get_payment_tx(tx, payment_id=order["payment_id"])
            amount = None
            if notification.refund_quantity is not None:  # some units only: their share of the payment
                units = orders.order_items_tx(tx, seen["order_id"])[0]["quantity"]
                amount = payment["amount"] * min(notification.refund_quantity, units) // units
            else:
                iap.set_revoked(tx, merchant_id=merchant_id, store=channel, transaction_id=purchase.transaction_id,
                                revoked_at_ms=revoked_at_ms)
            refunded = self._refunds.record_store_refund(tx, payment=payment, cause=cause, amount=amount)
            if refunded and amount is None:  # the whole current period refunded: its subscription is over
                store_subscriptions.order_withdrawn_tx(tx, order_id=seen["order_id"], cause=f"{channel}:{notification.type}",
                                                       now_ms=self._clock.now_ms())
            return "applied" if refunded else "stale"
        if action == "revoke":
            if not iap.set_revoked(tx, merchant_id=merchant_id, store=channel, transaction_id=purchase.transaction_id,
                                   revoked_at_ms=revoked_at_ms):
                return "stale"
            self._refunds.revoke_goods(tx, order=orders.get_order_tx(tx, order_id=seen["order_id"]))
            store_subscriptions.order_withdrawn_tx(tx, order_id=seen["order_id"], cause=f"{channel}:{notification.type}",
                                                   now_ms=self._clock.now_ms())
            return "applied"
        if action == "refund_reversed":
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="store_refund_reversed", severity="warning",
                                  object_id=seen["order_id"], now_ms=self._clock.now_ms(),
                                  message=f"the store reversed its refund of order {seen['order_id']}: the money is "
                                          "back; grant the goods again if the player should have them")
        return "recorded"

    def _deliver_tx(self, tx: Tx, *, merchant_id: str, channel: str, notification: StoreNotification,
                    tier: str | None) -> str:
        """A purchase the store told of first (a renewal): delivered to the player of its original
        transaction, if APSS delivered that one; else recorded (the app posts it to /v1/iap). A
        subscription's renewal is a period of the chain's subscription (services/subscriptions/stores.py)."""
        purchase = notification.purchase
        assert purchase is not None
        first = iap.first_of_original_tx(tx, merchant_id=merchant_id, store=channel,
                                         original_transaction_id=purchase.original_transaction_id)
        if first is None or purchase.revoked_at_ms is not None or purchase.state != "purchased":
            return "unmatched"
        try:
            order_id = self._book_tx(tx, merchant_id=merchant_id, channel=channel, purchase=purchase,
                                     player_id=first["player_id"], tier=tier)
        except ApssError as refused:  # checked before any write: nothing was written
            lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="store_purchase_not_delivered", severity="critical",
                                  object_id=purchase.transaction_id, now_ms=self._clock.now_ms(),
                                  message=f"{channel} renewal {purchase.transaction_id} of order {first['order_id']} "
                                          f"was not delivered: {refused.code}")
            return "anomaly"
        subscription_id = orders.get_order_tx(tx, order_id=order_id)["subscription_id"]
        if subscription_id is not None:
            store_subscriptions.note_signed_tx(tx, subscription_id=subscription_id, signed_at_ms=notification.signed_at_ms,
                                               now_ms=self._clock.now_ms())
        return "applied"

    # -- acknowledgements (Google Play) ----------------------------------------------------------
    async def acknowledge_due(self) -> int:
        """The store_acknowledgements job: each delivered purchase still to acknowledge, once more."""
        done = 0
        for row in await iap.acknowledgements_due(self._db, now_ms=self._clock.now_ms(), limit=_ACK_BATCH_MAX):
            merchant = self._merchants.by_id(row["merchant_id"])
            store = self._channels.registry.get(row["store"])
            if merchant is None or store is None:
                continue
            try:
                credentials = self._channels.credentials(merchant, store)
            except ApssError:  # the channel's settings were removed: nothing to call with
                await self._ack_failed(merchant.id, store.name, row["transaction_id"], "channel_not_available")
                continue
            done += await self._acknowledge(merchant=merchant, credentials=credentials, store_name=store.name,
                                            transaction_id=row["transaction_id"])
        return done

    async def _acknowledge(self, *, merchant: Merchant, credentials: Credentials, store_name: str,
                           transaction_id: str) -> bool:
        row = await iap.get_transaction(self._db, merchant_id=merchant.id, store=store_name,
                                        transaction_id=transaction_id)
        if row is None or row["ack_due_at_ms"] is None:
            return False
        store: AcknowledgesStorePurchases = self._channels.registry.capable(store_name,
                                                                            Capability.ACKNOWLEDGE_STORE_PURCHASE)
        receipt = StoreReceipt(token=row["original_transaction_id"], product_id=row["store_product_id"],
                               subscription=row["kind"] == "subscription")
        try:
            await store.acknowledge_purchase(receipt, credentials)
        except ApssError as failed:
            log.warning("acknowledging %s transaction of order %s failed: %s", store_name, row["order_id"], failed.code)
            await self._ack_failed(merchant.id, store_name, transaction_id, failed.code)
            return False

        def transaction(tx: Tx) -> None:
            iap.set_acknowledged(tx, merchant_id=merchant.id, store=store_name, transaction_id=transaction_id,
                                 now_ms=self._clock.now_ms())

        await self._db.write(transaction)
        return True

    async def _ack_failed(self, merchant_id: str, store_name: str, transaction_id: str, code: str) -> None:
        def transaction(tx: Tx) -> None:
            now_ms = self._clock.now_ms()
            row = iap.get_transaction_tx(tx, merchant_id=merchant_id, store=store_name, transaction_id=transaction_id)
            backoff_s = _ACK_BACKOFF_S[min(row["ack_attempts"], len(_ACK_BACKOFF_S) - 1)]
            iap.set_ack_failed(tx, merchant_id=merchant_id, store=store_name, transaction_id=transaction_id,
                               next_at_ms=now_ms + backoff_s * 1000)
            late = now_ms - row["created_at_ms"] >= _ACK_ALERT_AFTER_MS
            if late and not alerts.alerted(tx, object_id=row["order_id"], kind="store_acknowledgement_overdue"):
                lifecycle.raise_alert(tx, merchant_id=merchant_id, kind="store_acknowledgement_overdue",
                                      severity="critical", object_id=row["order_id"], now_ms=now_ms,
                                      message=f"{store_name} has not taken the acknowledgement of order "
                                              f"{row['order_id']} for two days ({code}): the store refunds a purchase "
                                              "not acknowledged within three")

        await self._db.write(transaction)


def _unknown_product(sku: str, *, param: str) -> InvalidRequest:
    return InvalidRequest(f"No product has the sku '{sku}' (the store's product id).", code="store_product_unknown",
                          param=param)


def _check_deliverable(purchase: StorePurchase, *, param: str) -> None:
    """A purchase seen for the first time is delivered only if the store says it is paid."""
    if purchase.revoked_at_ms is not None:
        raise InvalidRequest("The store refunded, revoked or canceled this purchase: nothing to deliver.",
                             code="store_transaction_revoked", param=param)
    if purchase.state == "pending":
        raise InvalidRequest("The purchase is not paid yet (pending at the store): send it again once it is.",
                             code="store_purchase_pending", param=param)
    if purchase.state == "inactive":
        raise InvalidRequest("The subscription is not active at the store (expired, on hold or paused).",
                             code="store_subscription_inactive", param=param)


def _amount(purchase: StorePurchase, product: Row, *, param: str) -> int:
    """What the order books: the store's price if it said one (a Family Sharing copy moves no
    money: the purchaser's transaction did), else the merchant's own price of the product in the
    purchase's currency, times the quantity."""
    if purchase.currency is None:
        raise InvalidRequest("The transaction carries no price (a StoreKit older than iOS 16?).",
                             code="store_price_missing", param=param)
    if purchase.ownership == "FAMILY_SHARED":
        return 0
    if purchase.amount is not None:
        return purchase.amount
    price = msgspec.json.decode(product["prices"]).get(purchase.currency)
    if not isinstance(price, int):
        raise InvalidRequest(f"The product '{product['sku']}' has no {purchase.currency} price (the store channel's "
                             "currency).", code="store_price_missing", param=param)
    return price * purchase.quantity
