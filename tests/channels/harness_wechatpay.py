"""The WeChat Pay channel wired to its local stand-in, for the shared contract test.

Failure callbacks: real WeChat Pay sends payment notifications only for `TRANSACTION.SUCCESS`
(a Native payment that is never paid just stays NOTPAY and is closed by us or expires, found by
query). `signed_callback(succeeded=False)` therefore builds a transaction notification with
`trade_state` PAYERROR (event_type `TRANSACTION.PAYERROR`), a shape WeChat does not send today,
which the channel maps to one payment.failed event like every failed/closed trade state.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from apss.channels.base import CallbackRequest
from apss.channels.wechatpay import WechatPayChannel
from tests.channels import standin_wechatpay as standin

__all__ = ["Harness", "make_harness"]

MCHID = "1230000109"
APPID = "wx8888888888888888"
MERCHANT_SERIAL_NO = "444F4864EA9B34415A9BC3C8A56A7E2B2B6BF3A1"
PUBLIC_KEY_ID = "PUB_KEY_ID_0112300001092025112500000000000001"
APIV3_KEY = "a12d3924fd499edac8a5efc4d56b7e89"  # 32 ASCII characters
API_BASE = "https://api.standin.test"

_keys: dict[str, Any] = {}


def _key(name: str) -> Any:
    # RSA-2048 generation costs ~0.1 s: one merchant key and one platform key per test process.
    if name not in _keys:
        _keys[name] = standin.new_rsa_key()
    return _keys[name]


class Harness:
    def __init__(self) -> None:
        merchant_key, platform_key = _key("merchant"), _key("platform")
        self.platform_key = platform_key
        self.standin = standin.StandIn(
            mchid=MCHID, appid=APPID, merchant_public_key=merchant_key.public_key(),
            merchant_serial_no=MERCHANT_SERIAL_NO, platform_key=platform_key,
            public_key_id=PUBLIC_KEY_ID, apiv3_key=APIV3_KEY, api_base=API_BASE,
        )
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.standin), timeout=10.0)
        self.channel = WechatPayChannel(public_url="http://apss.test", http=self.http)
        self.credentials = {
            "mchid": MCHID, "appid": APPID, "merchant_private_key": standin.private_pem(merchant_key),
            "merchant_serial_no": MERCHANT_SERIAL_NO, "apiv3_key": APIV3_KEY,
            "platform_public_key": standin.public_pem(platform_key), "platform_public_key_id": PUBLIC_KEY_ID,
            "api_base": API_BASE,
        }
        self.currency = "CNY"

    async def signed_callback(self, *, succeeded: bool, payment_id: str, provider_ref: str, amount: int,
                              currency: str, event_id: str, now_s: int) -> CallbackRequest:
        # WeChat echoes only out_trade_no (= payment_id, which create_payment returns as provider_ref).
        del provider_ref
        trade_state = "SUCCESS" if succeeded else "PAYERROR"
        plaintext = standin.transaction_plaintext(mchid=MCHID, appid=APPID, out_trade_no=payment_id,
                                                  trade_state=trade_state, total=amount, currency=currency)
        headers, body = standin.build_callback(
            key=self.platform_key, public_key_id=PUBLIC_KEY_ID, apiv3_key=APIV3_KEY, event_id=event_id,
            event_type=f"TRANSACTION.{trade_state}", summary="支付成功" if succeeded else "支付失败",
            plaintext=plaintext, timestamp_s=now_s, original_type="transaction",
        )
        return CallbackRequest(headers=headers, body=body, now_s=now_s)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        # Change the last character of the envelope id: the JSON stays valid, only the signature fails.
        envelope = json.loads(request.body)
        marker = f'"id":"{envelope["id"]}"'.encode()
        assert request.body.count(marker) == 1
        changed = marker[:-2] + (b"X" if marker[-2:-1] != b"X" else b"Y") + b'"'
        return CallbackRequest(headers=request.headers, body=request.body.replace(marker, changed),
                               now_s=request.now_s, query=request.query)

    def stale(self, request: CallbackRequest) -> CallbackRequest:
        """The same callback signed validly 301 s before the receiver's now (tolerance 300 s)."""
        headers = dict(request.headers)
        headers.update(standin.signed_headers(key=self.platform_key, public_key_id=PUBLIC_KEY_ID,
                                              body=request.body, timestamp_s=request.now_s - 301))
        return CallbackRequest(headers=headers, body=request.body, now_s=request.now_s, query=request.query)

    async def aclose(self) -> None:
        await self.http.aclose()


def make_harness() -> Harness:
    return Harness()
