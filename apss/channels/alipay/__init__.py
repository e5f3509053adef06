"""Alipay Open Platform (RSA2): QR-code (precreate) and cashier-page payments, notifies, refunds."""

from apss.channels.alipay.client import AlipayChannel

__all__ = ["AlipayChannel"]
