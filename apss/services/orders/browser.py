"""Checkout sessions started from a web page with a publishable key (README "Embedding the checkout").

A publishable key is public: anyone can read it from the merchant's page. So what it can do is
narrow. It opens the hosted checkout of an order (`open`), and it starts an order for one product
the merchant marked `browser_sellable` (`start`), through the same checkout as a game server's
order (pricing, promotions, stock, purchase limits, routing), with nothing a page could abuse:
no metadata (the sandbox's magic values live there), no channel choice, no virtual currency
(that would spend a player's wallet), and a `return_url` only on one of the merchant's sites.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from apss.domain.money import is_iso_currency
from apss.domain.origins import normalise_origin
from apss.errors import ApssError, CurrencyNotSupported, InvalidRequest, NotFound
from apss.services.idempotency import IdempotencyRequest, Outcome
from apss.services.merchants.keys import Merchant, Merchants
from apss.services.orders.checkout import Checkout, OrderCreate, OrderLine, PlayerId
from apss.services.orders.queries import OrderQueries
from apss.services.promotions.promotions import CouponEntered
from apss.store import catalog
from apss.store.db import Database

__all__ = ["BROWSER_QUANTITY_MAX", "BrowserCheckout", "CheckoutSessionCreate", "CheckoutSessionView"]

BROWSER_QUANTITY_MAX = 1000  # one line from a page; a bigger sale is the game server's to make
# Orders a page started say so to the merchant's webhooks and order lists.
_SOURCE_METADATA = {"apss_source": "publishable_key"}


class CheckoutSessionCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_id: Annotated[str, Meta(min_length=1, max_length=64)]
    player_id: PlayerId
    quantity: Annotated[int, Meta(ge=1, le=BROWSER_QUANTITY_MAX)] = 1
    # ISO 4217; default: the merchant's own currency (converted by the FX table when unpriced)
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")] | None = None
    coupon: CouponEntered | None = None
    return_url: Annotated[str, Meta(pattern=r"^https?://", max_length=2048)] | None = None


class CheckoutSessionView(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    status: str
    checkout_url: str
    expires_at: str


_order_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class BrowserCheckout:
    def __init__(self, *, db: Database, checkout: Checkout, merchants: Merchants, orders: OrderQueries) -> None:
        self._db = db
        self._checkout = checkout
        self._merchants = merchants
        self._orders = orders

    async def open(self, *, merchant: Merchant, order_id: str) -> CheckoutSessionView:
        """The checkout link of one of the merchant's orders (a game server made it; the page has its id)."""
        order = await self._orders.get(merchant_id=merchant.id, order_id=order_id)
        return CheckoutSessionView(order_id=order.id, status=order.status, checkout_url=order.checkout_url,
                                   expires_at=order.expires_at)

    async def start(self, *, merchant: Merchant, command: CheckoutSessionCreate, idem: IdempotencyRequest | None) -> Outcome:
        """A new order for one browser-sellable product. Answers 201 with the session (or the
        checkout's own refusal: out_of_stock, purchase_limit_exceeded, coupon_invalid, ...)."""
        currency = command.currency or merchant.currency
        if not is_iso_currency(currency):
            raise CurrencyNotSupported("A checkout started from a web page is paid in money (an ISO 4217 currency); "
                                       "virtual currency is spent through the game server.", param="currency")
        if command.return_url is not None:
            self._check_return_url(merchant, command.return_url)
        product = await catalog.get_product(self._db, merchant_id=merchant.id, product_id=command.product_id)
        if product is None:
            raise NotFound(f"No such product: '{command.product_id}'", param="product_id")
        if not product["browser_sellable"]:
            raise InvalidRequest("This product cannot be bought from a web page: set browser_sellable on it first.",
                                 code="product_not_browser_sellable", param="product_id")
        order = OrderCreate(player_id=command.player_id, currency=currency, coupon=command.coupon,
                            items=[OrderLine(product_id=command.product_id, quantity=command.quantity)],
                            return_url=command.return_url, metadata=_SOURCE_METADATA)
        outcome = await self._checkout.create(merchant=merchant, command=order, idem=idem)
        if outcome.status != 201:  # a refusal, stored and replayed as it is
            return outcome
        made = _order_decoder.decode(outcome.body)
        session = CheckoutSessionView(order_id=made["id"], status=made["status"], checkout_url=made["checkout_url"],
                                      expires_at=made["expires_at"])
        return Outcome(status=201, body=_encoder.encode(session), replayed=outcome.replayed)

    def _check_return_url(self, merchant: Merchant, url: str) -> None:
        """Only back to one of the merchant's own sites: never an open redirect from our page."""
        parts = urlsplit(url)
        try:
            origin = normalise_origin(f"{parts.scheme}://{parts.netloc}", live=merchant.mode == "live", param="return_url")
        except (ApssError, ValueError):
            origin = None
        if origin is None or origin not in self._merchants.allowed_origins(merchant.id):
            raise InvalidRequest("return_url must be on one of your allowed_origins.", code="return_url_not_allowed",
                                 param="return_url")
