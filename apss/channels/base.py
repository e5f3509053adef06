"""The payment channel Protocol, the neutral types that cross it, and the registry.

Every provider (sandbox, stripe, paypal, alipay, wechatpay, pix, apple, google) is one package
under channels/ with a `client.py` (I/O, auth, signatures) and a `mapping.py` (pure wire conversion, every provider
status listed plus an `unknown` fallback). Services speak only these neutral types; no provider
type leaks past a channel package. Channels never touch the database.
"""

from __future__ import annotations

import enum
import importlib.metadata
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from apss.domain.payments import FLOWS, CallbackKind, PaymentStatus
from apss.errors import ProviderFlowNotSupported

__all__ = [
    "AcknowledgesStorePurchases",
    "CAPABILITY_PROTOCOLS",
    "CallbackEvent",
    "CallbackReply",
    "CallbackRequest",
    "CancelsPayments",
    "Capability",
    "Captures",
    "Channel",
    "ChannelContext",
    "ChannelRegistry",
    "ChargesSavedMethods",
    "CreatesPayments",
    "Credentials",
    "DisputeEvidence",
    "DisputeEvidenceResult",
    "DisputeReport",
    "ENTRY_POINT_GROUP",
    "NextAction",
    "ParsesStatements",
    "PaymentCreated",
    "PaymentQuery",
    "PaymentReport",
    "PaymentRequest",
    "QueriesRefunds",
    "QueriesStatus",
    "REQUIRED_CAPABILITIES",
    "RefundQuery",
    "RefundRequest",
    "RefundResult",
    "Refunds",
    "Setting",
    "StatementLine",
    "StoreAction",
    "StoreNotification",
    "StorePurchase",
    "StoreReceipt",
    "SubmitsDisputeEvidence",
    "VerifiesCallbacks",
    "VerifiesStorePurchases",
    "capabilities_of",
    "flow_not_supported",
    "flows_of",
    "load_entry_points",
]

# A merchant's decrypted settings for one channel (API.md "Channel settings"); for the sandbox,
# {"webhook_secret": ...}. Never logged, never repr'd by a channel.
Credentials = Mapping[str, str]


class _Neutral(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ChannelContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel factory gets (app.py and the `apss.channels` entry points)."""

    public_url: str
    http: Any  # the shared httpx.AsyncClient for provider calls
    clock: Any  # apss.clock.Clock


class Setting(_Neutral):
    """One field of a merchant's settings for a channel (API.md "Channel settings")."""

    secret: bool  # sealed at rest, never returned or logged after it is saved
    required: bool = True
    required_live: bool = False  # required for live merchants only (PIX's mTLS pair)
    chars_max: int | None = None  # the provider's own limit (PIX's merchant_name: 25)


class NextAction(_Neutral):
    """What the payer is sent to: API.md's `next_action` (exactly one of url, data, value, params).
    `sdk_params`: what the provider's client SDK takes, signed (WeChat's JSAPI and APP parameters,
    Alipay's app order string)."""

    type: Literal["redirect", "qr_code", "client_secret", "sdk_params"]
    url: str | None = None
    data: str | None = None
    value: str | None = None
    params: dict[str, str] | None = None

    def __post_init__(self) -> None:
        present = {"redirect": self.url, "qr_code": self.data, "client_secret": self.value,
                   "sdk_params": self.params}
        assert present[self.type], f"next_action {self.type} needs its field"
        assert sum(v is not None for v in present.values()) == 1, "a next_action carries one field"


class PaymentRequest(_Neutral):
    payment_id: str  # ours; also the idempotency key at the provider, so a retry finds the first
    order_id: str
    merchant_id: str
    amount: int  # minor units
    currency: str
    description: str
    callback_url: str  # /v1/channels/{channel}/webhook/{merchant_id} under server.public_url
    return_url: str | None = None
    player_id: str = ""
    metadata: dict[str, str] = {}
    # When the reservation ends (unix seconds): the provider must refuse the payer after it
    # (Stripe Checkout `expires_at`, Alipay `time_expire`, WeChat `time_expire`...).
    expires_at_s: int | None = None
    # A subscription's first order: keep the payment method for off-session renewals where the
    # channel can (Stripe `setup_future_usage=off_session` with a Customer; the sandbox always can).
    save_method: bool = False
    # A risk rule asked for 3-D Secure (Stripe: payment_method_options.card.request_three_d_secure
    # = any; the sandbox shows a challenge step). Channels without card payments ignore it.
    three_ds: bool = False
    # The order's `channel_options.flow` (None: the channel's default flow), only ever one of the
    # channel's `flows` (checkout checks it), with what the flow needs: the payer's WeChat openid
    # (jsapi) and IP address (WeChat h5's scene_info.payer_client_ip).
    flow: str | None = None
    openid: str | None = None
    payer_ip: str | None = None


class PaymentCreated(_Neutral):
    provider_ref: str
    status: PaymentStatus
    next_action: NextAction | None = None
    provider_refs: list[str] = []  # any further ids the provider gave the payment (intent, charge...)


class CallbackRequest(_Neutral):
    """A provider callback exactly as received: raw body bytes, headers with lower-case names."""

    headers: dict[str, str]
    body: bytes
    now_s: int
    query: dict[str, str] = {}


class DisputeReport(_Neutral):
    """What a provider says of a dispute, in neutral terms (on dispute events)."""

    provider_dispute_id: str  # the provider's own id: a dispute is recorded once per (merchant, channel, id)
    status: Literal["needs_response", "under_review", "won", "lost"]
    reason: str | None = None  # the provider's reason code (Stripe `fraudulent`, PayPal `UNAUTHORISED`...)
    evidence_due_by_s: int | None = None  # unix seconds
    inquiry: bool = False  # the bank only asks (Stripe `warning_*`): no money has moved


class CallbackEvent(_Neutral):
    """One verified provider event, converted to neutral terms."""

    event_id: str  # the provider's event id: callbacks are applied once per (channel, event_id)
    kind: CallbackKind
    payment_id: str | None = None  # ours, when the provider echoes it
    provider_ref: str | None = None
    amount: int | None = None  # minor units, as the provider reports it
    currency: str | None = None
    failure_code: str | None = None
    refund_id: str | None = None
    provider_refund_ref: str | None = None
    # Every further provider id the event names (Stripe: session cs_, intent pi_, charge ch_;
    # PayPal: order and capture ids; Alipay trade_no; WeChat transaction_id): the payment is
    # matched on any of them, and acquires those it did not have.
    provider_refs: list[str] = []
    # A successful payment that saved its method for off-session charges (PaymentRequest.save_method):
    # the reference the channel's charge_saved_method takes, opaque outside the channel (Stripe
    # encodes `cus_...:pm_...`, the sandbox uses its payment reference). None when nothing was saved.
    saved_method_ref: str | None = None
    # The card that paid, where the provider reports it (Stripe's charge, the sandbox's test
    # card): the risk rules see them at callback time (card_fingerprint, card_bin, card_country).
    card_fingerprint: str | None = None
    card_bin: str | None = None
    card_country: str | None = None
    dispute: DisputeReport | None = None  # on dispute.* events


class CallbackReply(_Neutral):
    """Exactly what the provider expects back (Alipay's bare `success`, 2xx for Stripe...)."""

    status_code: int
    body: bytes = b""
    media_type: str = "text/plain"


class RefundRequest(_Neutral):
    refund_id: str  # ours; also the idempotency key at the provider
    payment_id: str
    provider_ref: str
    amount: int
    currency: str
    reason: str | None = None
    metadata: dict[str, str] = {}  # the order's metadata (the sandbox reads its magic values here)


class RefundResult(_Neutral):
    provider_refund_ref: str
    status: Literal["pending", "succeeded", "failed"]
    failure_code: str | None = None


class PaymentQuery(_Neutral):
    payment_id: str
    provider_ref: str | None
    amount: int
    currency: str


class PaymentReport(_Neutral):
    status: PaymentStatus
    provider_ref: str | None = None
    amount: int | None = None
    currency: str | None = None
    failure_code: str | None = None
    provider_refs: list[str] = []  # as CallbackEvent.provider_refs
    saved_method_ref: str | None = None  # as CallbackEvent.saved_method_ref


class StatementLine(_Neutral):
    """One row of a provider statement, for reconciliation."""

    provider_ref: str
    kind: Literal["payment", "refund", "fee", "adjustment", "payout", "other"]
    amount: int  # minor units, gross, signed as the provider reports it
    fee: int | None  # positive when charged, negative when given back; None: the statement does not say
    currency: str
    occurred_at_s: int | None = None
    payment_id: str | None = None
    # A line that totals the sales (or refunds) of one product over a period instead of naming one
    # payment (the App Store's reports): the store product id (our sku), the units (negative for
    # refunds, as reported) and the period [occurred_at_s, period_end_s).
    product: str | None = None
    quantity: int | None = None
    period_end_s: int | None = None


class RefundQuery(_Neutral):
    refund_id: str  # ours; the provider's idempotency key for the refund
    payment_id: str
    provider_ref: str  # the payment's reference at the provider
    provider_refund_ref: str | None
    amount: int
    currency: str


# -- capabilities ---------------------------------------------------------------------------
# A channel is a small object with a name, its settings, and whichever of the capability
# protocols below it implements. Services never call a channel directly: every provider call goes
# through the payments gateway (apss/services/gateway.py), which asks the registry whether the
# channel has the capability, records the attempt and classifies the outcome.
#
# What an adapter raises, and how the gateway reads it:
# - ProviderDeclined (or InvalidRequest, CurrencyNotSupported): a definite refusal, nothing was
#   done at the provider: `failed`, with the provider's code.
# - ChannelTimeout, ChannelUnavailable, or anything else: the provider may have done it (timeout,
#   5xx, unreadable answer): `unknown`; never guessed, the janitor asks later.


@runtime_checkable
class Channel(Protocol):
    """What every channel has: a name, whether it is for test merchants only, its settings."""

    name: str
    test_only: bool  # the sandbox: test merchants only
    settings: dict[str, Setting]  # what a merchant stores for this channel; `api_base` is optional


@runtime_checkable
class CreatesPayments(Channel, Protocol):
    async def create_payment(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        """Create the payment at the provider, to expire at `request.expires_at_s`."""
        ...


@runtime_checkable
class CreatesPaymentsLocally(Channel, Protocol):
    def create_payment_locally(self, request: PaymentRequest, credentials: Credentials) -> PaymentCreated:
        """Create the payment without any I/O (a provider living in this process: the sandbox),
        so checkout can do it inside the order's own write transaction. Same answers and errors
        as `create_payment`."""
        ...


@runtime_checkable
class VerifiesCallbacks(Channel, Protocol):
    async def verify_callback(self, request: CallbackRequest, credentials: Credentials) -> list[CallbackEvent]:
        """Check signature and timestamp before anything else; raises CallbackRejected."""
        ...

    def callback_reply(self, *, accepted: bool) -> CallbackReply: ...


@runtime_checkable
class Refunds(Channel, Protocol):
    async def refund(self, request: RefundRequest, credentials: Credentials) -> RefundResult: ...


@runtime_checkable
class Captures(Channel, Protocol):
    async def capture_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport:
        """Capture a payment the payer approved (PayPal's orders)."""
        ...


@runtime_checkable
class QueriesStatus(Channel, Protocol):
    async def query_payment(self, query: PaymentQuery, credentials: Credentials) -> PaymentReport: ...


@runtime_checkable
class QueriesRefunds(Channel, Protocol):
    async def query_refund(self, query: RefundQuery, credentials: Credentials) -> RefundResult: ...


@runtime_checkable
class ParsesStatements(Channel, Protocol):
    def parse_statement(self, data: bytes) -> list[StatementLine]: ...


@runtime_checkable
class ChargesSavedMethods(Channel, Protocol):
    async def charge_saved_method(self, request: PaymentRequest, method_ref: str,
                                  credentials: Credentials) -> PaymentReport:
        """Charge a payment method saved at the provider, off-session (renewals). `method_ref` is
        the first payment's `saved_method_ref`."""
        ...


@runtime_checkable
class CancelsPayments(Channel, Protocol):
    async def cancel_payment(self, query: PaymentQuery, credentials: Credentials) -> None:
        """Void or close an unpaid payment so the payer can no longer complete it (Stripe's
        session expire, Alipay trade.close, WeChat close order). Closing one that is already
        closed or expired is a success."""
        ...


class DisputeEvidence(_Neutral):
    """The evidence APSS answers a dispute with: Stripe's `evidence[...]` field names, as text."""

    dispute_id: str  # ours (dsp_); also the idempotency key at the provider
    provider_dispute_id: str
    payment_id: str
    provider_ref: str
    fields: dict[str, str]  # product_description, customer_purchase_ip, service_date, uncategorized_text, ...


class DisputeEvidenceResult(_Neutral):
    status: Literal["needs_response", "under_review", "won", "lost"]  # the dispute's status at the provider after it
    submitted: bool


@runtime_checkable
class SubmitsDisputeEvidence(Channel, Protocol):
    async def submit_dispute_evidence(self, evidence: DisputeEvidence, credentials: Credentials) -> DisputeEvidenceResult:
        """Send the evidence and submit it to the bank (no later changes)."""
        ...


class StoreReceipt(_Neutral):
    """What a game's app hands over for one store purchase (POST /v1/iap/{store})."""

    token: str  # Apple: the signed transaction (JWS); Google: the purchase token
    product_id: str | None = None  # Google: the product id it was bought as (its API is addressed by it)
    subscription: bool = False  # Google: a subscription (purchases.subscriptionsv2), else a one-time product


class StorePurchase(_Neutral):
    """One app-store purchase as the store vouches for it (Apple's signed transaction, verified
    offline; Google's purchase resource, read from its API), in neutral terms."""

    transaction_id: str  # the store's id of this purchase (a renewal has its own): delivered once
    original_transaction_id: str  # the first purchase's id: shared by a subscription's renewals
    product_id: str  # the store's product id, the sku of the merchant's product
    app_id: str  # the app it was bought in (Apple's bundleId, Google's packageName)
    environment: str  # the store's environment (Apple: Production | Sandbox; Google: Production | Test)
    type: str  # the store's product type (Apple: Consumable, ... Auto-Renewable Subscription; Google: product | subscription)
    quantity: int
    # Minor units charged, None when the store did not say: then the merchant's own price of the
    # product in `currency` (Google's resources carry no price), or refused without a currency.
    amount: int | None
    currency: str | None
    purchased_at_ms: int
    signed_at_ms: int
    reason: str | None = None  # PURCHASE | RENEWAL (Apple's transactionReason)
    expires_at_ms: int | None = None  # subscriptions
    revoked_at_ms: int | None = None  # refunded, revoked or canceled by the store
    revocation_reason: int | None = None
    ownership: str | None = None  # PURCHASED | FAMILY_SHARED
    # purchased; pending (not paid yet: Google's slow payment methods); inactive (a subscription
    # expired, on hold or paused): only a purchased one is delivered the first time.
    state: Literal["purchased", "pending", "inactive"] = "purchased"
    acknowledged: bool = True  # False: the store wants it acknowledged after delivery (Google, 3 days)
    order_ref: str | None = None  # the store's order id when it is not the transaction id (Google's orderId)
    # An auto-renewable subscription (Apple's Auto-Renewable Subscription, Google's subscriptionsv2):
    # its transactions are the periods of one APSS subscription, from the period's start (Apple's
    # purchaseDate of the transaction; None for Google, whose periods follow one another) to
    # `expires_at_ms`, exactly as the store dates them.
    renews: bool = False
    period_start_ms: int | None = None
    grace_until_ms: int | None = None  # a failed renewal keeps the entitlement to here (billing grace period)


# What a store notification asks of APSS (each store's mapping names its own types' actions).
# The subscription ones apply to the APSS subscription of the purchase's chain: `billing_retry`
# (the store failed to charge a renewal and is retrying: past_due, no entitlement), `grace_period`
# (past_due, entitled to the purchase's `grace_until_ms`), `expire` (over: canceled, the
# entitlement ends), `auto_renew_off` / `auto_renew_on` (cancel_at_period_end set / cleared).
StoreAction = Literal["deliver", "refund", "revoke", "refund_reversed", "record", "billing_retry", "grace_period",
                      "expire", "auto_renew_off", "auto_renew_on"]



class StoreNotification(_Neutral):
    """A verified store server notification (Apple's App Store Server Notifications v2; Google's
    real-time developer notifications, confirmed by its API)."""

    notification_id: str  # notificationUUID, Pub/Sub messageId: applied once per merchant
    type: str  # REFUND, DID_RENEW, SUBSCRIPTION_RENEWED, VOIDED_PURCHASE, ... as the store names them
    subtype: str | None
    signed_at_ms: int
    action: StoreAction = "record"
    purchase: StorePurchase | None = None  # the purchase it is about, as the store vouches for it
    refund_quantity: int | None = None  # a refund of that many units only (Google's quantity-based partial refunds)


@runtime_checkable
class VerifiesStorePurchases(Channel, Protocol):
    """An app store (Apple, Google): purchases are made and paid in the store's app UI, APSS
    verifies what the app hands it and the store's notifications; it never creates a payment."""

    async def verify_purchase(self, receipt: StoreReceipt, credentials: Credentials) -> StorePurchase:
        """The purchase as the store vouches for it (signature chain or the store's API, app,
        environment); raises CallbackRejected with a `store_*` code."""
        ...

    async def verify_notification(self, request: CallbackRequest, credentials: Credentials) -> StoreNotification:
        """Verify a store notification (its signature, or by asking the store); raises CallbackRejected."""
        ...

    def callback_reply(self, *, accepted: bool) -> CallbackReply: ...


@runtime_checkable
class AcknowledgesStorePurchases(Channel, Protocol):
    """A store that refunds a purchase nobody acknowledged (Google Play: within 3 days)."""

    async def acknowledge_purchase(self, receipt: StoreReceipt, credentials: Credentials) -> None:
        """Acknowledge a delivered purchase; one acknowledged before is a success."""
        ...


class Capability(enum.StrEnum):
    CREATE_PAYMENT = "create_payment"
    CREATE_PAYMENT_LOCALLY = "create_payment_locally"
    VERIFY_CALLBACK = "verify_callback"
    REFUND = "refund"
    CAPTURE = "capture"
    QUERY_STATUS = "query_status"
    QUERY_REFUND = "query_refund"
    PARSE_STATEMENT = "parse_statement"
    CHARGE_SAVED_METHOD = "charge_saved_method"
    CANCEL_PAYMENT = "cancel_payment"
    SUBMIT_DISPUTE_EVIDENCE = "submit_dispute_evidence"
    VERIFY_STORE_PURCHASE = "verify_store_purchase"
    ACKNOWLEDGE_STORE_PURCHASE = "acknowledge_store_purchase"


CAPABILITY_PROTOCOLS: dict[Capability, type] = {
    Capability.CREATE_PAYMENT: CreatesPayments,
    Capability.CREATE_PAYMENT_LOCALLY: CreatesPaymentsLocally,
    Capability.VERIFY_CALLBACK: VerifiesCallbacks,
    Capability.REFUND: Refunds,
    Capability.CAPTURE: Captures,
    Capability.QUERY_STATUS: QueriesStatus,
    Capability.QUERY_REFUND: QueriesRefunds,
    Capability.PARSE_STATEMENT: ParsesStatements,
    Capability.CHARGE_SAVED_METHOD: ChargesSavedMethods,
    Capability.CANCEL_PAYMENT: CancelsPayments,
    Capability.SUBMIT_DISPUTE_EVIDENCE: SubmitsDisputeEvidence,
    Capability.VERIFY_STORE_PURCHASE: VerifiesStorePurchases,
    Capability.ACKNOWLEDGE_STORE_PURCHASE: AcknowledgesStorePurchases,
}
# Every channel must take payments and their callbacks; the rest is optional. An app store
# (VERIFY_STORE_PURCHASE) takes neither: the store's own app takes the payment.
REQUIRED_CAPABILITIES = frozenset({Capability.CREATE_PAYMENT, Capability.VERIFY_CALLBACK})


def capabilities_of(channel: Channel) -> frozenset[Capability]:
    """What `channel` implements: each capability whose protocol's methods it has."""
    return frozenset(cap for cap, protocol in CAPABILITY_PROTOCOLS.items() if isinstance(channel, protocol))


def flows_of(channel: Channel) -> frozenset[str]:
    """The `channel_options.flow` values a channel takes: its optional `flows` attribute (a
    frozenset of apss.domain.payments.FLOWS). A channel without it takes none: its one flow is
    its default, and an order naming a flow is refused before anything is reserved."""
    flows = getattr(channel, "flows", frozenset())
    assert isinstance(flows, frozenset) and flows <= set(FLOWS), (channel.name, flows)
    return flows


def flow_not_supported(channel: str, flow: str) -> ProviderFlowNotSupported:
    return ProviderFlowNotSupported(f"the {channel} channel does not support {flow} yet")


class ChannelRegistry:
    """Channels by name, with what each can do; registering a name twice is a programmer error
    (Litestar's registries)."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._capabilities: dict[str, frozenset[Capability]] = {}

    def register(self, channel: Channel) -> None:
        assert isinstance(channel, Channel), channel
        if channel.name in self._channels:
            raise ValueError(f"a channel named {channel.name!r} is already registered")
        capabilities = capabilities_of(channel)
        missing = REQUIRED_CAPABILITIES - capabilities
        if missing and Capability.VERIFY_STORE_PURCHASE not in capabilities:
            raise ValueError(f"channel {channel.name!r} lacks {sorted(c.value for c in missing)}")
        self._channels[channel.name] = channel
        self._capabilities[channel.name] = capabilities

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def names(self) -> list[str]:
        return list(self._channels)

    def supports(self, name: str, capability: Capability) -> bool:
        return capability in self._capabilities.get(name, frozenset())

    def capabilities(self, name: str) -> frozenset[Capability]:
        return self._capabilities.get(name, frozenset())

    def capable(self, name: str, capability: Capability) -> Any:
        """The channel, typed by the caller as `capability`'s protocol; ProviderFlowNotSupported
        when it lacks it (Hyperswitch's `FlowNotSupported`)."""
        channel = self._channels.get(name)
        assert channel is not None, f"unknown channel {name!r}"
        if capability not in self._capabilities[name]:
            raise flow_not_supported(name, capability.value.replace("_", " "))
        return channel


ENTRY_POINT_GROUP = "apss.channels"


def load_entry_points(registry: ChannelRegistry, context: ChannelContext, *, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register the channels that installed packages declare under the `apss.channels` entry
    point group. Each entry point names a factory `f(context: ChannelContext) -> Channel`.
    Returns the names registered."""
    names = []
    for entry in importlib.metadata.entry_points(group=group):
        channel = entry.load()(context)
        registry.register(channel)
        names.append(channel.name)
    return names
