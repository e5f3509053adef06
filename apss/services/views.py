"""The objects the API returns (API.md shapes), built from store rows. Encoded once, here, so
that a stored idempotent response and a fresh one are the same bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from apss.clock import format_rfc3339
from apss.domain.catalog import Grant
from apss.domain.orders import OrderStatus
from apss.domain.payments import ChannelOptions, PaymentStatus
from apss.domain.subscriptions import Billing
from apss.store.db import Row, Tx

__all__ = [
    "AccountView",
    "EntitlementView",
    "InventoryView",
    "ItemView",
    "MerchantList",
    "OrderEventList",
    "OrderList",
    "ProductList",
    "MembershipView",
    "MerchantCreatedView",
    "MerchantView",
    "NextActionView",
    "OrderEventView",
    "OrderItemView",
    "OrderView",
    "PaymentAttemptView",
    "PaymentDetailView",
    "PaymentView",
    "ProductView",
    "PublishableKeyView",
    "RateLimitView",
    "SandboxActionView",
    "SecretKeyView",
    "WalletDebitView",
    "WalletView",
    "encode",
    "keep_order_view",
    "kept_order_view",
    "order_view",
    "order_view_of",
    "payment_view",
    "product_view",
]

_encoder = msgspec.json.Encoder()
_grants_decoder = msgspec.json.Decoder(list[Grant])


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


Mode = Literal["test", "live"]  # a merchant's: test merchants use the sandbox, live ones real money


class _View(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ProductView(_View, omit_defaults=True):  # `billing` only on plans
    id: str
    sku: str
    name: str
    category: str
    prices: dict[str, int]
    stock: int | None
    reserved: int
    sold: int
    purchase_limit: int | None
    grants: list[Grant]
    active: bool
    browser_sellable: bool  # a publishable key may start a checkout for it (README "Embedding the checkout")
    created_at: str
    billing: Billing | None = None  # plans only (subscriptions)


def product_view(row: Row) -> ProductView:
    assert row["reserved"] >= 0 and row["sold"] >= 0
    return ProductView(
        id=row["id"], sku=row["sku"], name=row["name"], category=row["category"],
        prices=msgspec.json.decode(row["prices"], type=dict[str, int]), stock=row["stock"],
        reserved=row["reserved"], sold=row["sold"], purchase_limit=row["purchase_limit"],
        grants=_grants_decoder.decode(row["grants"]), active=bool(row["active"]),
        browser_sellable=bool(row["browser_sellable"]), created_at=format_rfc3339(row["created_at_ms"]),
        billing=msgspec.json.decode(row["billing"], type=Billing) if row["billing"] else None,
    )


class NextActionView(_View, omit_defaults=True):
    type: Literal["redirect", "qr_code", "client_secret", "sdk_params"]
    url: str | None = None
    data: str | None = None
    value: str | None = None
    # sdk_params: what the provider's client SDK takes, signed (README "Mobile flows")
    params: dict[str, str] | None = None


class PaymentView(_View):
    id: str
    channel: str
    status: PaymentStatus
    next_action: NextActionView | None
    failure_code: str | None = None


class PaymentAttemptView(_View):
    """One provider call the gateway made for the payment (creation, capture, refund, query, close)."""

    channel: str
    operation: str  # create_payment | capture | refund | query_payment | query_refund | cancel_payment
    outcome: Literal["succeeded", "failed", "unknown"]  # failed: a definite refusal; unknown: the provider may have done it
    error_code: str | None
    provider_code: str | None
    created_at: str


class PaymentDetailView(_View):
    """A payment on its own: which channel took it after which attempts (routing and fallback)."""

    id: str
    order_id: str
    channel: str
    status: PaymentStatus
    amount: int
    currency: str
    provider_ref: str | None
    provider_refs: list[str]  # every id the payment acquired at its provider
    failure_code: str | None
    attempts: list[PaymentAttemptView]
    created_at: str


class OrderItemView(_View):
    product_id: str
    sku: str
    quantity: int
    unit_amount: int
    amount: int  # what is paid for the line: unit_amount * quantity - discount
    discount: int = 0


class FxView(_View):
    """How the order was priced from the merchant's currency (API: rates are strings)."""

    base_currency: str
    rate: str
    rate_as_of: str
    inverse: bool


class OrderView(_View):
    id: str
    status: OrderStatus
    player_id: str
    items: list[OrderItemView]
    subtotal: int  # the lines at their unit prices
    discount: int  # what the promotions took off (subtotal - amount)
    amount: int
    currency: str
    channel: str
    # The flow the order's payment was made with, as the order asked (null: the channel's default).
    channel_options: ChannelOptions | None
    promotions: list[str]  # the promotions applied, in the order they were applied
    merchant_order_ref: str | None
    metadata: dict[str, str]
    expires_at: str
    created_at: str
    checkout_url: str
    payment: PaymentView | None
    fx: FxView | None = None
    subscription_id: str | None = None  # first, renewal and proration orders of a subscription


def order_view(row: Row, *, public_url: str) -> OrderView:
    """From the one order query of store/orders.py (order, items as JSON, payment columns)."""
    items = [
        OrderItemView(product_id=p, sku=s, quantity=q, unit_amount=u, amount=a, discount=u * q - a)
        for p, s, q, u, a in msgspec.json.decode(row["items_json"])
    ]
    payment = None
    if row["payment_id"] is not None and row["p_status"] is not None:
        payment = payment_view(payment_id=row["payment_id"], channel=row["p_channel"], status=row["p_status"],
                               next_action=row["p_next_action"], failure_code=row["p_failure_code"])
    return order_view_of(row, items=items, payment=payment, public_url=public_url,
                         promotions=msgspec.json.decode(row["promotions_json"] or "[]"))


# The order view a webhook event of this transaction function rendered last (outbox.py), with
# the row-change count it was true at: no row written since, it is still the order's view.
_KEPT_ORDER_VIEW = "views.order_view"


def keep_order_view(tx: Tx, view: OrderView) -> None:
    """Keep `view` as the order's view while this transaction function writes no other row."""
    tx.memo[_KEPT_ORDER_VIEW] = (view.id, tx.changes, view)


def kept_order_view(tx: Tx, order_id: str) -> OrderView | None:
    """The view of the order kept by `keep_order_view`, if no row was written since."""
    kept = tx.memo.get(_KEPT_ORDER_VIEW)
    if kept is None or kept[0] != order_id or kept[1] != tx.changes:
        return None
    return kept[2]


def payment_view(*, payment_id: str, channel: str, status: str, next_action: str | None,
                 failure_code: str | None) -> PaymentView:
    return PaymentView(id=payment_id, channel=channel, status=status, failure_code=failure_code,
                       next_action=msgspec.json.decode(next_action, type=NextActionView) if next_action else None)


def order_view_of(row: Mapping[str, Any], *, items: list[OrderItemView], payment: PaymentView | None,
                  public_url: str, promotions: list[str] | None = None) -> OrderView:
    """From an order row and what is already in hand (order creation renders without re-reading)."""
    assert sum(item.amount for item in items) == row["amount"], "order total differs from its lines"
    discount = sum(item.discount for item in items)
    assert discount >= 0 and (discount == 0) == (not promotions), "a discount comes from the promotions applied"
    return OrderView(
        id=row["id"], status=row["status"], player_id=row["player_id"], items=items,
        subtotal=row["amount"] + discount, discount=discount, amount=row["amount"], currency=row["currency"],
        channel=row["channel"], channel_options=_channel_options(row), promotions=list(promotions or []),
        merchant_order_ref=row["merchant_order_ref"],
        metadata=msgspec.json.decode(row["metadata"], type=dict[str, str]),
        expires_at=format_rfc3339(row["expires_at_ms"]), created_at=format_rfc3339(row["created_at_ms"]),
        checkout_url=f"{public_url}/checkout/{row['checkout_token']}", payment=payment, fx=_fx_view(row["fx"]),
        subscription_id=row["subscription_id"] if "subscription_id" in row.keys() else None,
    )


def _channel_options(row: Mapping[str, Any]) -> ChannelOptions | None:
    flow = row["payment_flow"] if "payment_flow" in row.keys() else None
    return ChannelOptions(flow=flow, openid=row["payer_openid"]) if flow is not None else None


def _fx_view(stored: str | None) -> FxView | None:
    if stored is None:
        return None
    fx = msgspec.json.decode(stored)
    return FxView(base_currency=fx["base"], rate=fx["rate"], rate_as_of=format_rfc3339(fx["as_of_ms"]), inverse=fx["inverse"])


class OrderEventView(_View):
    id: str
    type: str
    from_status: str | None
    to_status: str
    cause: str
    created_at: str


class _Page(_View):
    has_more: bool
    next_cursor: str | None


class ProductList(_Page):
    data: list[ProductView]


class OrderList(_Page):
    data: list[OrderView]


class OrderEventList(_Page):
    data: list[OrderEventView]


class MerchantList(_Page):
    data: list[MerchantView]


class RateLimitView(_View):
    requests_per_s: int  # sustained, per merchant (all its secret keys); 0: unlimited
    burst: int  # at once
    default: bool  # the server's [api] defaults, not the merchant's own


class MerchantView(_View):
    id: str
    name: str
    mode: Mode
    currency: str
    publishable_key: str | None  # public: it only opens and starts checkouts (README "Embedding the checkout")
    allowed_origins: list[str]
    kyc_status: Literal["unverified", "pending", "verified", "rejected"]  # payouts wait for verified
    rate_limit: RateLimitView
    created_at: str


class MerchantCreatedView(_View):
    id: str
    name: str
    mode: Mode
    currency: str
    secret_key: str
    publishable_key: str
    kyc_status: Literal["unverified", "pending", "verified", "rejected"]
    created_at: str


class SecretKeyView(_View):
    secret_key: str


class PublishableKeyView(_View):
    publishable_key: str


class AccountView(_View, omit_defaults=True):
    id: str
    name: str
    mode: Mode
    currency: str
    publishable_key: str | None
    allowed_origins: list[str]
    sandbox_webhook_secret: str | None = None


class ItemView(_View):
    sku: str
    quantity: int


class MembershipView(_View):
    sku: str
    expires_at: str


class EntitlementView(_View):
    sku: str
    granted_at: str


class InventoryView(_View):
    player_id: str
    items: list[ItemView]
    memberships: list[MembershipView]
    entitlements: list[EntitlementView]


class WalletView(_View):
    player_id: str
    balances: dict[str, int]


class WalletDebitView(_View):
    player_id: str
    currency: str
    amount: int
    balance: int


class SandboxActionView(_View):
    payment_id: str
    status: str
