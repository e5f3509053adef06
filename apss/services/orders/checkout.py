"""Checkout: price an order from the catalog, reserve its stock, create its payment.

Creating an order takes two write transactions with the channel call between them, because
nothing slow happens inside a write transaction:
1. reserve: idempotency key, purchase limits, stock for every line or none, the order, its
   items, its payment (status `unknown`) and its first event;
2. the channel creates the payment (outside any transaction);
3. record: the payment's provider reference and next action, and the stored response.
A crash between 1 and 3 leaves a pending order; its idempotency key stays `running` and is
finished at restart by `resume_running` (the channel is asked again with the same payment id,
which is also the provider's idempotency key), and the order expires normally if never paid.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

from apss.channels.base import (
    Capability,
    Channel,
    PaymentCreated,
    PaymentRequest,
    flows_of,
)
from apss.clock import Clock
from apss.config import Config
from apss.domain.fx import Quote, convert
from apss.domain.money import is_iso_currency, is_virtual_price_code, minor_units_max
from apss.domain.orders import ACTIVE_FOR_LIMITS, OrderEvent, OrderStatus
from apss.domain.payments import WALLET_CHANNEL, ChannelOptions, PaymentStatus
from apss.domain.promotions import Pricing
from apss.errors import (
    ChannelNotAvailable,
    CurrencyNotSupported,
    InvalidRequest,
    MerchantOrderRefExists,
    NotFound,
    OutOfStock,
    PurchaseLimitExceeded,
)
from apss.ids import new_id, new_token
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.money.fx import quote_tx as fx_quote_tx
from apss.services.orders import lifecycle
from apss.services.payments.channels import ChannelAccess
from apss.services.payments.gateway import Attempt, PaymentGateway
from apss.services.players.wallets import Players
from apss.services.promotions.promotions import CouponEntered, Promotions
from apss.services.risk.engine import RiskEngine, RiskFacts
from apss.services.risk.kyc import Kyc
from apss.services.risk.precheck import Prechecks
from apss.services.views import (
    OrderItemView,
    OrderView,
    encode,
    order_view,
    order_view_of,
    payment_view,
)
from apss.store import catalog, orders
from apss.store import promotions as promotion_store
from apss.store.db import Database, Tx

__all__ = ["Checkout", "OrderCreate", "OrderLine"]

log = logging.getLogger("apss.checkout")

PlayerId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]


class OrderLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_id: Annotated[str, Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)] = 1


class OrderCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    player_id: PlayerId
    items: Annotated[list[OrderLine], Meta(min_length=1, max_length=1000)]
    # ISO 4217, or a virtual currency of the merchant's (paid from the wallet, channel `wallet`)
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")]
    channel: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$")] | None = None
    # The player's country (ISO 3166-1 alpha-2), for per-country channel routing.
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$")] | None = None
    merchant_order_ref: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    return_url: Annotated[str, Meta(pattern=r"^https?://", max_length=2048)] | None = None
    metadata: dict[Annotated[str, Meta(min_length=1, max_length=40)], Annotated[str, Meta(max_length=500)]] = {}
    coupon: CouponEntered | None = None
    # What the payer's side says about the payer, for the risk rules (API.md): an IPv4 or IPv6
    # address, the game's device id, an email address, the billing country (ISO 3166-1 alpha-2).
    ip: Annotated[str, Meta(min_length=2, max_length=45)] | None = None
    device_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    email: Annotated[str, Meta(pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$", max_length=320)] | None = None
    billing_country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$")] | None = None
    # The flow of the payment (a mobile flow of WeChat Pay or Alipay) and what it needs (API.md).
    channel_options: ChannelOptions | None = None


OnReserved = Callable[[Tx, dict], None]


class _Reserved(msgspec.Struct, frozen=True, kw_only=True):
    """What the reserve transaction made: enough to ask a channel for the payment, no re-read."""

    order: dict
    lines: list[dict]
    blocked: bool = False  # a risk rule blocked it: the order is failed, nothing reserved
    three_ds: bool = False  # a risk rule asked for 3-D Secure


class Checkout:
    def __init__(self, *, db: Database, clock: Clock, config: Config, idempotency: Idempotency,
                 channels: ChannelAccess, gateway: PaymentGateway, merchants: Merchants, promotions: Promotions,
                 players: Players, game_delivery: lifecycle.GameDelivery, risk: RiskEngine,
                 prechecks: Prechecks, kyc: Kyc) -> None:
        self._db = db
        self._kyc = kyc
        self._risk = risk
        self._prechecks = prechecks
        self._promotions = promotions
        self._players = players
        self._game_delivery = game_delivery
        self._gateway = gateway
        self._clock = clock
        self._config = config
        self._idempotency = idempotency
        self._channels = channels
        self._merchants = merchants
        self.public_url = config.public_url

    # -- create ------------------------------------------------------------------------------
    async def create(self, *, merchant: Merchant, command: OrderCreate, idem: IdempotencyRequest | None,
                     on_reserved: OnReserved | None = None,
                     audit_tx: Callable[[Tx, Outcome], None] | None = None) -> Outcome:
        """`on_reserved(tx, order)` runs in the reserve transaction once the order is written
        (a subscription records its first order there). `audit_tx(tx, outcome)` runs in the
        transaction that gave the final answer, when one did (the channel created its payment in
        that transaction, or the order was refused there), and not for a replay: the request's
        audit row is then committed with the order (api/audit.py)."""
        self._check_shape(command)
        if not is_iso_currency(command.currency):  # a virtual currency: paid from the wallet, now
            if command.channel not in (None, WALLET_CHANNEL):
                raise ChannelNotAvailable(f"An order in {command.currency} is paid from the wallet.", param="channel")
            if command.channel_options is not None:
                raise InvalidRequest("An order paid from the wallet has no payment flow.",
                                     code="channel_flow_not_supported", param="channel_options.flow")
            return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, success_status=201,
                                               fn=lambda tx: self._wallet_order(tx, merchant=merchant, command=command))
        candidates = _flow_candidates(command, self._channels.candidates(
            merchant, currency=command.currency, country=command.country, requested=command.channel))

        # Subscription orders (on_reserved) are not assessed by the risk rules yet.
        facts = await self._risk_facts(merchant, command) if on_reserved is None else None
        def begin(tx: Tx) -> Outcome | _Reserved:
            reserved = self._begin_order(tx, merchant=merchant, command=command, idem=idem, channel=candidates[0].name,
                                         facts=facts, on_reserved=on_reserved)
            if audit_tx is not None and isinstance(reserved, Outcome) and not reserved.replayed:
                audit_tx(tx, reserved)
            return reserved

        reserved = await self._db.write(begin)
        # A channel that creates payments in this process (the sandbox) did it in that same
        # transaction; a provider is called between two (services/payments/gateway.py).
        if isinstance(reserved, Outcome):
            return reserved
        return await self._create_payment(merchant=merchant, candidates=candidates, order=reserved.order,
                                          lines=reserved.lines, idem_key=idem.key if idem else None,
                                          three_ds=reserved.three_ds, payer_ip=command.ip)

    async def _risk_facts(self, merchant: Merchant, command: OrderCreate) -> RiskFacts:
        """The payer's facts for the rules, with the merchant's pre-payment check's answer when it
        has one (asked here, before any transaction: it is a call to the merchant's server)."""
        email_domain = command.email.rsplit("@", 1)[-1].lower() if command.email else None
        checked = await self._prechecks.run(merchant=merchant, body={
            "player_id": command.player_id, "currency": command.currency,
            "items": [{"product_id": line.product_id, "quantity": line.quantity} for line in command.items],
            "ip": command.ip, "device_id": command.device_id, "billing_country": command.billing_country,
            "email_domain": email_domain})
        return RiskFacts(ip=command.ip, device_id=command.device_id, email=command.email,
                         billing_country=command.billing_country,
                         precheck=checked.outcome if checked else None, precheck_answer=checked.answer if checked else None,
                         precheck_latency_ms=checked.latency_ms if checked else None)

    def _begin_order(self, tx: Tx, *, merchant: Merchant, command: OrderCreate, idem: IdempotencyRequest | None,
                     channel: str, facts: RiskFacts | None, on_reserved: OnReserved | None) -> Outcome | _Reserved:
        return self._idempotency.begin(
            tx, merchant_id=merchant.id, request=idem, resume=lambda made: f"order:{made.order['id']}",
            fn=lambda tx: self._reserve_order(tx, merchant=merchant, command=command, channel=channel, facts=facts,
                                              on_reserved=on_reserved))

    def _reserve_order(self, tx: Tx, *, merchant: Merchant, command: OrderCreate, channel: str,
                       facts: RiskFacts | None, on_reserved: OnReserved | None) -> Outcome | _Reserved:
        """The reserve step of an order request; an Outcome when the request ends here (its key
        stores it): a risk rule blocked the order, or the channel made the payment in process."""
        made = self.reserve_in(tx, merchant=merchant, command=command, channel=channel, on_reserved=on_reserved,
                               facts=facts, minor_check=True)
        if made.blocked:  # the order is already failed
            return Outcome(status=201, body=encode(order_view(orders.get_order_view_tx(tx, order_id=made.order["id"]),
                                                              public_url=self.public_url)))
        # (a subscription's first order keeps the two steps: its hook wrote more than `made` holds)
        local = self._pay_locally(tx, merchant=merchant, reserved=made, channel=channel) if on_reserved is None else None
        return local or made

    def _pay_locally(self, tx: Tx, *, merchant: Merchant, reserved: _Reserved, channel: str) -> Outcome | None:
        """Create the payment inside the reserve transaction when the channel can do it without
        I/O, and end the request there: one write instead of two. None (the two-step path, with
        its fallback to other channels) when it cannot or its attempt did not succeed."""
        if not self._gateway.supports(channel, Capability.CREATE_PAYMENT_LOCALLY):
            return None
        request = self._payment_request(reserved.order, reserved.lines, channel, reserved.three_ds)
        attempt = self._gateway.create_payment_locally(merchant, channel, request)
        if not attempt.succeeded:  # the two-step path asks again and reports that attempt
            return None
        tx.after_commit(lambda: self._gateway.feed_breaker(merchant, attempt))
        payment = {"id": reserved.order["payment_id"], "merchant_id": merchant.id, "provider_ref": None}
        return self._record_payment(tx, merchant=merchant, order_id=reserved.order["id"], attempts=[attempt],
                                    lines=reserved.lines, idem_key=None, current=reserved.order, payment=payment)

    def _check_shape(self, command: OrderCreate) -> None:
        limits = self._config.orders
        self.check_lines(command)
        if command.ip is not None:
            try:
                ipaddress.ip_address(command.ip)
            except ValueError:
                raise InvalidRequest("ip is an IPv4 or IPv6 address.", code="invalid_ip", param="ip") from None
        if len(command.metadata) > limits.metadata_keys_max:
            raise InvalidRequest(f"At most {limits.metadata_keys_max} metadata keys.", code="too_many_metadata_keys", param="metadata")

    def check_lines(self, command: OrderCreate) -> None:
        """The currency and the lines of an order (or a quote, which has the same fields)."""
        limits = self._config.orders
        if not is_iso_currency(command.currency) and not is_virtual_price_code(command.currency):
            raise CurrencyNotSupported(f"'{command.currency}' is neither an ISO 4217 currency nor a virtual currency.",
                                       param="currency")
        if len(command.items) > limits.items_max:
            raise InvalidRequest(f"An order holds at most {limits.items_max} lines.", code="too_many_items", param="items")
        seen: set[str] = set()
        for index, line in enumerate(command.items):
            if line.quantity > limits.quantity_max:
                raise InvalidRequest(f"Quantity is at most {limits.quantity_max}.", code="quantity_too_large", param=f"items[{index}].quantity")
            if line.product_id in seen:
                raise InvalidRequest("Each product appears on one line only.", code="duplicate_line", param=f"items[{index}].product_id")
            seen.add(line.product_id)

    def reserve_in(self, tx: Tx, *, merchant: Merchant, command: OrderCreate, channel: str,
                   on_reserved: OnReserved | None = None, unit_amount: int | None = None,
                   facts: RiskFacts | None = None, minor_check: bool = False) -> _Reserved:
        """The reserve step inside the caller's transaction: subscriptions create their renewal
        and proration orders here (a proration line is priced by `unit_amount`, not the catalog).
        With `facts`, the risk rules decide first (a block fails the order and reserves nothing).
        With `minor_check` (orders the merchant creates), a minor's spending limit may refuse it
        (409 minor_spending_limit) before anything is written."""
        reserved = self._reserve(tx, merchant=merchant, command=command, channel=channel, unit_amount=unit_amount,
                                 facts=facts, minor_check=minor_check)
        if on_reserved is not None:
            on_reserved(tx, reserved.order)
        return reserved

    def _reserve(self, tx: Tx, *, merchant: Merchant, command: OrderCreate, channel: str,
                 unit_amount: int | None = None, facts: RiskFacts | None = None, minor_check: bool = False) -> _Reserved:
        """Checks first (they may refuse), then writes (they may not fail)."""
        if command.merchant_order_ref and orders.merchant_ref_taken(tx, merchant_id=merchant.id, ref=command.merchant_order_ref):
            raise MerchantOrderRefExists(f"An order with merchant_order_ref '{command.merchant_order_ref}' exists.", param="merchant_order_ref")
        lines, pricing = self.price_tx(tx, merchant=merchant, command=command)
        if unit_amount is not None:  # a plan change's prorated charge: priced by the caller, no promotion
            assert len(lines) == 1 and lines[0]["quantity"] == 1 and lines[0]["fx"] is None and unit_amount >= 0
            lines = [{**lines[0], "unit_amount": unit_amount, "amount": unit_amount, "discount": 0}]
            pricing = Pricing(line_discounts=[0], applied=[])
        total = sum(line["amount"] for line in lines)
        if channel == WALLET_CHANNEL:
            self._players.check_balance_tx(tx, merchant_id=merchant.id, player_id=command.player_id,
                                           currency=command.currency, amount=total)
        # A minor's limits (money payments only: wallet spending moves no money) refuse here, before any write.
        spend = self._kyc.check_minor_tx(tx, merchant_id=merchant.id, player_id=command.player_id, amount=total,
                                         currency=command.currency) if minor_check and channel != WALLET_CHANNEL else None
        assessment = None if facts is None or channel == WALLET_CHANNEL else self._risk.assess_order_tx(
            tx, merchant_id=merchant.id, merchant_currency=merchant.currency, player_id=command.player_id, amount=total,
            currency=command.currency, channel=channel, lines=lines, facts=facts)
        blocked = assessment is not None and assessment.decision.action == "block"
        now_ms = self._clock.now_ms()
        order_id, payment_id = new_id("ord"), new_id("pay")
        quote = next((line["fx"] for line in lines if line["fx"] is not None), None)
        for line in lines if not blocked else ():
            reserved = catalog.reserve(tx, product_id=line["product_id"], quantity=line["quantity"])
            assert reserved, "checked first"
        order = {
            "id": order_id, "merchant_id": merchant.id, "player_id": command.player_id, "status": "pending",
            "amount": total, "currency": command.currency, "channel": channel,
            "merchant_order_ref": command.merchant_order_ref, "metadata": encode(command.metadata).decode(),
            "return_url": command.return_url, "checkout_token": new_token(), "payment_id": payment_id,
            "expires_at_ms": now_ms + self._config.orders.reservation_ttl_s * 1000, "created_at_ms": now_ms,
            "fx": encode(quote.record()).decode() if quote is not None else None,
            "payment_flow": command.channel_options.flow if command.channel_options else None,
            "payer_openid": command.channel_options.openid if command.channel_options else None,
        }
        orders.insert_order(tx, order)
        if not blocked:
            self._promotions.hold_tx(tx, order_id=order_id, player_id=command.player_id, pricing=pricing, now_ms=now_ms)
        orders.insert_items(tx, [(order_id, i, line["product_id"], line["sku"], line["quantity"], line["unit_amount"],
                                  line["amount"], line["grants"]) for i, line in enumerate(lines)])
        orders.insert_payment(tx, {"id": payment_id, "order_id": order_id, "merchant_id": merchant.id, "channel": channel,
                                   "status": (PaymentStatus.SUCCEEDED if channel == WALLET_CHANNEL else PaymentStatus.UNKNOWN).value,
                                   "amount": total, "currency": command.currency,
                                   "created_at_ms": now_ms})
        orders.insert_event(tx, event_id=new_id("evt"), order_id=order_id, type="order.created", from_status=None,
                            to_status="pending", cause="api", now_ms=now_ms)
        if spend is not None and not blocked:
            self._kyc.record_spend_tx(tx, order_id=order_id, spend=spend)
        if assessment is None:
            return _Reserved(order=order, lines=lines)
        self._risk.record_order_tx(tx, order_id=order_id, merchant_id=merchant.id, facts=facts, assessment=assessment,
                                   amount_merchant=assessment.attributes.get("amount_merchant"))
        if blocked:  # no provider is called: the payment fails here, the order with it
            orders.move_payment(tx, payment_id=payment_id, from_status=PaymentStatus.UNKNOWN.value,
                                to_status=PaymentStatus.FAILED.value, now_ms=now_ms, fields={"failure_code": "risk_blocked"})
            lifecycle.move(tx, order, OrderEvent.PAYMENT_FAILED, cause="risk", now_ms=now_ms)
        return _Reserved(order=order, lines=lines, blocked=blocked, three_ds=assessment.decision.three_ds)

    def _wallet_order(self, tx: Tx, *, merchant: Merchant, command: OrderCreate) -> OrderView:
        """An order priced in virtual currency, in one transaction: checks (the balance among
        them) before any write, then the reservation, the wallet debit and delivery at once."""
        reserved = self._reserve(tx, merchant=merchant, command=command, channel=WALLET_CHANNEL)
        order = orders.get_order_tx(tx, order_id=reserved.order["id"])
        now_ms = self._clock.now_ms()
        self._players.pay_order_tx(tx, order=order, now_ms=now_ms)
        lifecycle.pay(tx, order, orders.order_items_tx(tx, order["id"]), cause="wallet", now_ms=now_ms,
                      game_delivery=self._game_delivery)
        return order_view(orders.get_order_view_tx(tx, order_id=order["id"]), public_url=self.public_url)

    def price_tx(self, tx: Tx, *, merchant: Merchant, command: OrderCreate) -> tuple[list[dict], Pricing]:
        """Every line priced from the catalog, then discounted by the promotions that apply (checks
        only: nothing is written). A line's `amount` is what is paid for it, after its discount."""
        lines = [self._price_line(tx, merchant=merchant, command=command, index=i) for i in range(len(command.items))]
        pricing = self._promotions.price_tx(tx, merchant_id=merchant.id, player_id=command.player_id, lines=lines,
                                            currency=command.currency, coupon=command.coupon)
        lines = [{**line, "discount": off, "amount": line["amount"] - off}
                 for line, off in zip(lines, pricing.line_discounts, strict=True)]
        if sum(line["amount"] for line in lines) > minor_units_max():
            raise InvalidRequest("The order total is too large.", code="amount_too_large", param="items")
        return lines, pricing

    def _price_line(self, tx: Tx, *, merchant: Merchant, command: OrderCreate, index: int) -> dict:
        line = command.items[index]
        param = f"items[{index}]"
        product = catalog.get_product_tx(tx, merchant_id=merchant.id, product_id=line.product_id)
        if product is None:
            raise NotFound(f"No such product: '{line.product_id}'", param=f"{param}.product_id")
        if not product["active"]:
            raise InvalidRequest(f"Product '{line.product_id}' is not active.", code="product_inactive", param=f"{param}.product_id")
        prices = msgspec.json.decode(product["prices"], type=dict[str, int])
        unit_amount, quote = prices.get(command.currency), None
        if unit_amount is None:
            unit_amount, quote = self._converted_price(tx, merchant=merchant, prices=prices, currency=command.currency)
        if unit_amount is None:
            raise CurrencyNotSupported(f"Product '{line.product_id}' has no price in {command.currency}, and no FX rate "
                                       f"converts its {merchant.currency} price.", param="currency")
        if product["stock"] is not None and product["stock"] < line.quantity:
            raise OutOfStock(f"Only {product['stock']} units of '{product['sku']}' are available.", param=param)
        if product["purchase_limit"] is not None:
            bought = orders.purchased_quantity(tx, merchant_id=merchant.id, player_id=command.player_id,
                                               product_id=line.product_id, statuses=tuple(s.value for s in ACTIVE_FOR_LIMITS))
            if bought + line.quantity > product["purchase_limit"]:
                raise PurchaseLimitExceeded(
                    f"Player may buy at most {product['purchase_limit']} of '{product['sku']}' ({bought} already).", param=param)
        return {"product_id": line.product_id, "sku": product["sku"], "category": product["category"],
                "quantity": line.quantity, "unit_amount": unit_amount,
                "amount": unit_amount * line.quantity, "grants": product["grants"], "fx": quote}

    def _converted_price(self, tx: Tx, *, merchant: Merchant, prices: dict[str, int], currency: str) -> tuple[int | None, Quote | None]:
        """The unit price converted from the merchant's currency at the rate in force: converted
        per unit and rounded half-even (apss.domain.fx.convert), then multiplied by the quantity."""
        base_amount = prices.get(merchant.currency)
        if base_amount is None or merchant.currency == currency or not is_iso_currency(currency):
            return None, None
        quote = fx_quote_tx(tx, base=merchant.currency, quote=currency, now_ms=self._clock.now_ms(),
                            age_max_ms=self._config.orders.fx_rate_age_max_s * 1000)
        if quote is None:
            return None, None
        return convert(base_amount, from_currency=merchant.currency, to_currency=currency, rate=quote.rate), quote

    # -- payment -----------------------------------------------------------------------------
    def payment_request(self, order: Mapping, items: list[Mapping], channel: str) -> PaymentRequest:
        return self._payment_request(order, items, channel)

    def _payment_request(self, order: Mapping, items: list[Mapping], channel: str, three_ds: bool = False,
                         payer_ip: str | None = None) -> PaymentRequest:
        summary = ", ".join(f"{item['sku']} x{item['quantity']}" for item in items)
        return PaymentRequest(
            payment_id=order["payment_id"], order_id=order["id"], merchant_id=order["merchant_id"],
            amount=order["amount"], currency=order["currency"], description=f"Order {order['id']}: {summary}"[:127],
            callback_url=f"{self.public_url}/v1/channels/{channel}/webhook/{order['merchant_id']}",
            return_url=order["return_url"], player_id=order["player_id"],
            metadata=msgspec.json.decode(order["metadata"], type=dict[str, str]),
            expires_at_s=order["expires_at_ms"] // 1000,
            # A subscription's order saves the payment method for its renewals, where the channel can.
            save_method="subscription_id" in order.keys() and order["subscription_id"] is not None,
            three_ds=three_ds,
            flow=order["payment_flow"], openid=order["payer_openid"],
            payer_ip=payer_ip if order["payment_flow"] == "h5" else None,
        )

    async def _create_payment(self, *, merchant: Merchant, candidates: list[Channel], order: Mapping,
                              lines: list[Mapping], idem_key: str | None, three_ds: bool = False,
                              payer_ip: str | None = None) -> Outcome:
        """Ask each candidate channel in turn, through the gateway, until one creates the
        payment (fallback). Whatever a channel does, the request ends in the record transaction."""
        attempts: list[Attempt] = []
        for channel in candidates:
            attempt = await self._gateway.create_payment(merchant, channel.name,
                                                         self._payment_request(order, lines, channel.name, three_ds,
                                                                               payer_ip))
            attempts.append(attempt)
            if attempt.succeeded:
                break
        return await self._db.write(lambda tx: self._record_payment(tx, merchant=merchant, order_id=order["id"],
                                                                    attempts=attempts, lines=lines, idem_key=idem_key))

    def _record_payment(self, tx: Tx, *, merchant: Merchant, order_id: str, attempts: list[Attempt],
                        lines: list[Mapping], idem_key: str | None, current: Mapping | None = None,
                        payment: Mapping | None = None) -> Outcome:
        """`current` and `payment` are read here unless the caller wrote them in this transaction.
        Without `idem_key` the caller stores the answer (services/idempotency.py `begin`)."""
        now_ms = self._clock.now_ms()
        current = current if current is not None else orders.get_order_tx(tx, order_id=order_id)
        payment = payment if payment is not None else orders.get_payment_tx(tx, payment_id=current["payment_id"])
        last = self._usable_attempt(tx, payment, attempts[-1])
        for attempt in [*attempts[:-1], last]:
            self._gateway.record(tx, attempt, payment_id=payment["id"], merchant_id=merchant.id)
        stored = self._idempotency.finished(tx, merchant_id=merchant.id, key=idem_key) if idem_key else None
        if stored is not None:  # the completer gave up on this request meanwhile: its answer stands
            if last.succeeded:
                orders.set_payment_details(tx, payment_id=payment["id"], now_ms=now_ms,
                                           fields={"provider_ref": payment["provider_ref"] or last.value.provider_ref})
                orders.request_close(tx, payment_id=payment["id"], now_ms=now_ms)
            return stored
        if last.channel != current["channel"]:
            orders.set_order_channel(tx, order_id=order_id, channel=last.channel, now_ms=now_ms)
            orders.set_payment_details(tx, payment_id=payment["id"], fields={"channel": last.channel}, now_ms=now_ms)
        created: PaymentCreated | None = last.value if last.succeeded else None
        if created is not None:
            details = {"next_action": encode(created.next_action).decode() if created.next_action else None}
            if payment["provider_ref"] is None:
                details["provider_ref"] = created.provider_ref
            # Guarded: a callback or the janitor may have moved the payment while the provider
            # answered us; then its status stands (never backwards) and only the details are written.
            if not orders.move_payment(tx, payment_id=payment["id"], from_status=PaymentStatus.UNKNOWN.value,
                                       to_status=created.status.value, now_ms=now_ms, fields=details):
                orders.set_payment_details(tx, payment_id=payment["id"], fields=details, now_ms=now_ms)
        elif last.outcome == "failed":  # definitely not created anywhere: the order fails now
            moved = orders.move_payment(tx, payment_id=payment["id"], from_status=PaymentStatus.UNKNOWN.value,
                                        to_status=PaymentStatus.FAILED.value, now_ms=now_ms,
                                        fields={"failure_code": last.provider_code or last.error_code})
            if moved and current["status"] == OrderStatus.PENDING.value:
                lifecycle.end_unpaid(tx, current, OrderEvent.PAYMENT_FAILED, cause=f"channel:{last.channel}", now_ms=now_ms)
        # unknown: the provider may have made it; the payment stays `unknown` for the janitor
        outcome_body = Outcome(status=201, body=encode(self._created_view(tx, current, created, lines, last.channel)))
        if idem_key is not None:
            self._idempotency.finish(tx, merchant_id=merchant.id, key=idem_key, outcome=outcome_body)
        return outcome_body

    def _usable_attempt(self, tx: Tx, payment: Mapping, attempt: Attempt) -> Attempt:
        """A created payment whose provider id another payment holds is an odd answer (a
        provider bug, a replayed session): not this payment's, a failed attempt (with an alert)."""
        if not attempt.succeeded:
            return attempt
        owner = orders.payment_by_refs(tx, channel=attempt.channel, refs=[attempt.value.provider_ref])
        if owner is None or owner["id"] == payment["id"]:
            return attempt
        lifecycle.raise_alert(tx, merchant_id=payment["merchant_id"], kind="provider_ref_conflict", severity="critical",
                              object_id=payment["id"], now_ms=self._clock.now_ms(),
                              message=f"{attempt.channel} answered payment {payment['id']} with the id of payment {owner['id']}")
        return Attempt(channel=attempt.channel, operation=attempt.operation, outcome="failed",
                       error_code="provider_ref_in_use")

    def _created_view(self, tx: Tx, order: Mapping, created: PaymentCreated | None, lines: list[Mapping],
                      channel: str) -> OrderView:
        """The answer to order creation. On the common path (the payment was created, the order
        is still pending) it is rendered from what is in hand; otherwise the order is re-read."""
        if created is None or order["status"] != OrderStatus.PENDING.value:
            return order_view(orders.get_order_view_tx(tx, order_id=order["id"]), public_url=self.public_url)
        items = [OrderItemView(product_id=line["product_id"], sku=line["sku"], quantity=line["quantity"],
                               unit_amount=line["unit_amount"], amount=line["amount"],
                               discount=line["unit_amount"] * line["quantity"] - line["amount"])
                 for line in lines]
        payment = payment_view(payment_id=order["payment_id"], channel=channel, status=created.status.value,
                               next_action=encode(created.next_action).decode() if created.next_action else None,
                               failure_code=None)
        promotions = promotion_store.order_promotion_ids_tx(tx, order_id=order["id"]) if any(i.discount for i in items) else []
        return order_view_of({**order, "channel": channel}, items=items, payment=payment, public_url=self.public_url,
                             promotions=promotions)

    async def resume(self, *, merchant: Merchant, order_id: str, idem_key: str) -> None:
        """Finish an order request that a crash cut between its transactions (same payment id,
        which is the provider's idempotency key: a retry finds the first attempt)."""
        order = await orders.fetch_order(self._db, order_id=order_id)
        items = await orders.fetch_items(self._db, order_id=order_id)
        channel = self._channels.registry.get(order["channel"])
        three_ds = await self._risk.three_ds_requested(order_id=order_id)
        await self._create_payment(merchant=merchant, candidates=[channel], order=order, lines=items, idem_key=idem_key,
                                   three_ds=three_ds, payer_ip=await self._risk.payer_ip(order_id=order_id))

    async def abandon(self, *, merchant: Merchant, order_id: str, idem_key: str) -> Outcome:
        """Finish an order request whose key stayed `running` too long without a crash (an
        exception, a 503 or a cancellation between its transactions): the order fails and its
        stock is released, and the key answers that 201 from now on, so a retry can never make
        a second order. A payment the provider may have made stays `unknown` for the janitor
        (and is closed there); if it is paid anyway, the late-payment policy applies."""

        def transaction(tx: Tx) -> Outcome:
            stored = self._idempotency.finished(tx, merchant_id=merchant.id, key=idem_key)
            if stored is not None:
                return stored
            order = orders.get_order_tx(tx, order_id=order_id)
            now_ms = self._clock.now_ms()
            if order["status"] == OrderStatus.PENDING.value:
                lifecycle.end_unpaid(tx, order, OrderEvent.PAYMENT_FAILED, cause="completer", now_ms=now_ms)
                orders.request_close(tx, payment_id=order["payment_id"], now_ms=now_ms)
            outcome = Outcome(status=201, body=encode(order_view(orders.get_order_view_tx(tx, order_id=order_id),
                                                                 public_url=self.public_url)))
            self._idempotency.finish(tx, merchant_id=merchant.id, key=idem_key, outcome=outcome)
            return outcome

        return await self._db.write(transaction)

    # -- cancel and expire -------------------------------------------------------------------
    async def cancel(self, *, merchant: Merchant, order_id: str, idem: IdempotencyRequest | None) -> Outcome:
        def transaction(tx: Tx) -> OrderView:
            order = orders.get_order_tx(tx, order_id=order_id, merchant_id=merchant.id)
            if order is None:
                raise NotFound(f"No such order: '{order_id}'", param="id")
            lifecycle.end_unpaid(tx, order, OrderEvent.CANCEL, cause="api", now_ms=self._clock.now_ms())
            return order_view(orders.get_order_view_tx(tx, order_id=order_id), public_url=self.public_url)

        return await self._idempotency.run(self._db, merchant_id=merchant.id, request=idem, fn=transaction, success_status=200)

    async def next_expiry_ms(self) -> int | None:
        """When the next pending order expires (the expiry job's due time in a test-clock advance)."""
        return await orders.next_pending_expiry_ms(self._db)

    async def expire_due(self) -> int:
        """Expire pending orders whose reservation ran out (the scheduler's expiry job)."""
        now_ms = self._clock.now_ms()
        due = await orders.pending_due(self._db, now_ms=now_ms, limit=self._config.scheduler.expiry_batch_max)
        if not due:
            return 0

        def transaction(tx: Tx) -> int:
            expired = 0
            for order_id in due:
                order = orders.get_order_tx(tx, order_id=order_id)
                # Re-checked inside the writer: a payment may have landed since the read.
                if order["status"] == OrderStatus.PENDING.value and order["expires_at_ms"] <= now_ms:
                    lifecycle.end_unpaid(tx, order, OrderEvent.EXPIRE, cause="expiry", now_ms=now_ms)
                    expired += 1
            return expired

        return await self._db.write(transaction)


def _flow_candidates(command: OrderCreate, candidates: list[Channel]) -> list[Channel]:
    """The channels that may make the payment in the order's `channel_options.flow`: the chosen
    one (the first candidate) must take the flow, and fallbacks that do not are left out (they
    would hand the game's client another kind of next action than the one it asked for)."""
    options = command.channel_options
    if options is None:
        return candidates
    assert candidates, "routing always names a channel"
    chosen, flows = candidates[0].name, flows_of(candidates[0])
    if options.flow not in flows:
        takes = f"it takes {', '.join(sorted(flows))}" if flows else "it takes no channel_options"
        raise InvalidRequest(f"The {chosen} channel has no '{options.flow}' flow: {takes}.",
                             code="channel_flow_not_supported", param="channel_options.flow")
    if options.flow == "jsapi" and options.openid is None:
        raise InvalidRequest("The jsapi flow needs the payer's openid.", code="openid_required",
                             param="channel_options.openid")
    if options.flow != "jsapi" and options.openid is not None:
        raise InvalidRequest(f"The {options.flow} flow takes no openid (jsapi only).", code="openid_not_applicable",
                             param="channel_options.openid")
    if options.flow == "h5" and command.ip is None:
        raise InvalidRequest("The h5 flow needs the payer's IP address in `ip` (WeChat asks for it).",
                             code="payer_ip_required", param="ip")
    usable = [channel for channel in candidates if options.flow in flows_of(channel)]
    assert usable[0].name == chosen
    return usable
