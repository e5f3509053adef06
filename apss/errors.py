"""Typed operating errors, each named after the rule it enforces.

No HTTP knowledge lives here: api/errors.py alone maps these classes to statuses and error
types. Programmer errors are `assert`s, never these.
"""

from __future__ import annotations

__all__ = [
    "AdminAuthThrottled",
    "AmlCaseTransitionInvalid",
    "ApssError",
    "AuthenticationFailed",
    "CallbackRejected",
    "ChannelNotAvailable",
    "ChannelTimeout",
    "ChannelUnavailable",
    "ChannelUnreachable",
    "ClockAdvanceTooFar",
    "ClockBackwards",
    "ClockNotTest",
    "ConfigInvalid",
    "Conflict",
    "CurrencyNotSupported",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "InvalidRequest",
    "InvalidTransition",
    "LiveMerchantsInTestMode",
    "LiveModeUnavailable",
    "MerchantKycRequired",
    "MerchantOrderRefExists",
    "MinorSpendingLimit",
    "NotFound",
    "NotReady",
    "OutOfStock",
    "PaymentClosed",
    "ProviderDeclined",
    "ProviderFlowNotSupported",
    "PurchaseLimitExceeded",
    "RateLimited",
    "SchemaTooNew",
    "SkuExists",
    "StockOutOfRange",
    "TargetNotAllowed",
]


class ApssError(Exception):
    """An operating error with a stable `code` (the broken rule) and an optional `param`."""

    code: str = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class InvalidRequest(ApssError):
    code = "invalid_request"


class CurrencyNotSupported(InvalidRequest):
    code = "currency_not_supported"


class StockOutOfRange(InvalidRequest):
    """A product's free units would leave 0..STOCK_MAX (a removal below zero is OutOfStock)."""

    code = "stock_out_of_range"


class TargetNotAllowed(InvalidRequest):
    """An outbound request to a URL a merchant gave would reach a target the SSRF rules refuse
    (when saved: `url_not_allowed`, `api_base_not_allowed`; when connecting: `target_not_allowed`)."""

    code = "url_not_allowed"


class ChannelNotAvailable(InvalidRequest):
    code = "channel_not_available"


class CallbackRejected(InvalidRequest):
    """A provider callback whose signature, timestamp or shape cannot be trusted."""

    code = "callback_signature_invalid"


class ClockBackwards(InvalidRequest):
    """A test-clock advance to a time before the clock's now: time never runs backwards."""

    code = "clock_backwards"


class ClockAdvanceTooFar(InvalidRequest):
    """A test-clock advance further than `clock.advance_max_s` in one call."""

    code = "clock_advance_too_far"


class AuthenticationFailed(ApssError):
    code = "invalid_api_key"


class NotFound(ApssError):
    code = "not_found"


class Conflict(ApssError):
    code = "conflict"


class OutOfStock(Conflict):
    code = "out_of_stock"


class PaymentClosed(Conflict):
    """The payer acts on a payment its provider closed (its order ended unpaid)."""

    code = "payment_closed"


class PurchaseLimitExceeded(Conflict):
    code = "purchase_limit_exceeded"


class SkuExists(Conflict):
    code = "sku_exists"


class MerchantOrderRefExists(Conflict):
    code = "merchant_order_ref_exists"


class InsufficientBalance(Conflict):
    code = "insufficient_balance"


class InvalidTransition(Conflict):
    """An illegal state move requested through the API (the state machine refuses it)."""

    code = "invalid_state"


class AmlCaseTransitionInvalid(InvalidTransition):
    """An AML case moved along no edge of its table (open -> investigating -> reported | closed)."""

    code = "aml_case_transition_invalid"


class MinorSpendingLimit(Conflict):
    """A payment over the minors' limit of the player's jurisdiction (per payment or per month)."""

    code = "minor_spending_limit"


class MerchantKycRequired(Conflict):
    """A payout for a merchant whose KYC is not verified: the batch waits."""

    code = "merchant_kyc_required"


class ClockNotTest(Conflict):
    """The clock is the system clock (config clock.mode = "system"): only a test clock moves."""

    code = "clock_not_test"


class LiveModeUnavailable(Conflict):
    """A live merchant on a server whose clock is a test clock: live money never runs on it."""

    code = "live_mode_unavailable"


class IdempotencyKeyInUse(ApssError):
    code = "idempotency_key_in_use"


class IdempotencyKeyReused(ApssError):
    code = "idempotency_key_reused"


class RateLimited(ApssError):
    code = "rate_limited"
    retry_after_s: int = 1


class AdminAuthThrottled(RateLimited):
    """Too many failed admin authentications from one address: every admin authentication from it
    is refused until `retry_after_s` has passed (a right token too, or the answer would tell)."""

    code = "admin_auth_throttled"

    def __init__(self, message: str, *, retry_after_s: int = 60) -> None:
        super().__init__(message)
        assert retry_after_s >= 1
        self.retry_after_s = retry_after_s


class NotReady(ApssError):
    code = "not_ready"


class ChannelUnavailable(ApssError):
    """A provider could not be reached or answered with an error; the outcome may be unknown."""

    code = "channel_unavailable"


class ChannelUnreachable(ChannelUnavailable):
    """The request never reached the provider (connection refused, DNS, connect timeout): nothing
    was done there, so the gateway reads it as a definite failure."""

    code = "channel_unreachable"


class ChannelTimeout(ChannelUnavailable):
    """The provider did not answer in time: the payment may or may not exist there (`unknown`)."""

    code = "channel_timeout"


class ProviderDeclined(ApssError):
    """The provider definitely refused the request (a 4xx with its own error code, a declined
    card): nothing was done there. `provider_code` is the provider's code, never its message."""

    code = "provider_declined"

    def __init__(self, message: str, *, provider_code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.provider_code = provider_code or "declined"


class ProviderFlowNotSupported(ApssError):
    code = "provider_flow_not_supported"


class ConfigInvalid(Exception):
    """Bad configuration: one line naming the key. Not an ApssError: it never reaches HTTP."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer APSS than this one."""


class LiveMerchantsInTestMode(Exception):
    """The test-clock mode on a database that holds a live merchant: the server does not start."""
