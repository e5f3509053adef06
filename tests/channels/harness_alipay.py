"""The Alipay channel wired to the local stand-in, for the shared contract test.

Failure callbacks: Alipay notifies TRADE_CLOSED when an unpaid trade times out (when the merchant
enabled that notify), which the channel reports as payment.failed (failure_code `trade_closed`).
Staleness: Alipay's notifies carry no signed timestamp window, so `stale()` returns None.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx

from apss.channels.alipay import AlipayChannel
from apss.channels.base import CallbackRequest
from apss.domain.money import CURRENCY_EXPONENTS
from tests.channels.standin_alipay import AlipayStandin, generate_keys, sign_notify

__all__ = ["Harness", "make_harness"]

APP_ID = "2021000000000001"
API_BASE = "https://alipay.standin/gateway.do"
_FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
_CST = timezone(timedelta(hours=8))


def _yuan(amount: int, currency: str) -> str:
    assert currency == "CNY" and CURRENCY_EXPONENTS[currency] == 2, currency
    return f"{amount // 100}.{amount % 100:02d}"


class Harness:
    currency = "CNY"

    def __init__(self) -> None:
        keys = generate_keys()
        self.standin = AlipayStandin(app_id=APP_ID, keys=keys)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.standin), timeout=5.0)
        self.channel = AlipayChannel(public_url="https://apss.example", http=self.http)
        self.credentials = {
            "app_id": APP_ID,
            "app_private_key": keys.app_private_pkcs8,
            "alipay_public_key": keys.alipay_public_bare,
            "api_base": API_BASE,
        }
        self._alipay_key = keys.alipay_private

    async def signed_callback(
        self,
        *,
        succeeded: bool,
        payment_id: str,
        provider_ref: str,
        amount: int,
        currency: str,
        event_id: str,
        now_s: int,
    ) -> CallbackRequest:
        at = datetime.fromtimestamp(now_s, tz=_CST).strftime("%Y-%m-%d %H:%M:%S")
        params = {
            "notify_time": at,
            "notify_type": "trade_status_sync",
            "notify_id": event_id,
            "app_id": APP_ID,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": provider_ref,
            "out_trade_no": payment_id,
            "trade_status": "TRADE_SUCCESS" if succeeded else "TRADE_CLOSED",
            "total_amount": _yuan(amount, currency),
            "subject": "测试商品",
            "gmt_create": at,
        }
        if succeeded:
            params["gmt_payment"] = at
        else:
            params["gmt_close"] = at
        body = sign_notify(self._alipay_key, params)
        return CallbackRequest(headers=dict(_FORM_HEADERS), body=body, now_s=now_s)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        """Change one digit of total_amount: signed content, still a well-formed form."""
        marker = b"total_amount="
        index = request.body.index(marker) + len(marker)
        digit = request.body[index : index + 1]
        assert digit.isdigit()
        changed = b"1" if digit != b"1" else b"2"
        body = request.body[:index] + changed + request.body[index + 1 :]
        return CallbackRequest(headers=request.headers, body=body, now_s=request.now_s, query=request.query)

    def stale(self, request: CallbackRequest) -> CallbackRequest | None:
        return None  # Alipay's notifies have no timestamp tolerance to fall outside of

    async def aclose(self) -> None:
        await self.http.aclose()


def make_harness() -> Harness:
    return Harness()
