"""WeChat Pay API v3 channel: Native pay (QR code), callbacks, refunds, queries, trade bills."""

from apss.channels.wechatpay.client import WechatPayChannel

__all__ = ["WechatPayChannel"]
