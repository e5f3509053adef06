"""PayPal Orders v2 channel (create order + capture, Payments v2 refunds, self-verified webhooks)."""

from apss.channels.paypal.client import PayPalCertFetcher, PayPalChannel

__all__ = ["PayPalCertFetcher", "PayPalChannel"]
