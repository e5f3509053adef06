"""Stripe: Checkout Sessions for payments, Stripe-Signature webhooks, refunds, queries, statements."""

from apss.channels.stripe.client import StripeChannel

__all__ = ["StripeChannel"]
