"""The simulation's providers: the local stand-ins of tests/channels (Stripe, PayPal, Alipay,
WeChat Pay) wired to the merchant's channels, each with what the simulation plays on its side:
the payer paying or failing in it, the callbacks it sends (signed as that provider signs, when
they are sent), refunds settling late, and its own records of charges and refunds that the
invariants read.

The app's one provider HTTP client reaches all of them through `HostRouter`: each stand-in's
hosts lead to its ASGI app through its own FaultyTransport, so the seeded provider faults hit
every channel. Ids the stand-ins draw at random come from `SeededRandomness` (world._run).
"""

from __future__ import annotations

import base64
import functools
import random
import uuid
from decimal import Decimal
from typing import Any

import httpx

from apss.domain.money import CURRENCY_EXPONENTS
from tests.channels import standin_wechatpay
from tests.channels.standin_alipay import AlipayStandin, generate_keys, sign_notify
from tests.channels.standin_paypal import PayPalStandin, make_signing_cert
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request

__all__ = ["AlipaySim", "HostRouter", "PayPalSim", "SeededRandomness", "SimProvider", "StripeSim", "WechatPaySim"]

Announcement = tuple[str, Any]  # (the callback's type, what it carries), queued by the simulation


class HostRouter(httpx.AsyncBaseTransport):
    """One transport for the app's provider client: the request's host picks the stand-in. A host
    no stand-in serves is recorded (an invariant reports it) and refused."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport], unrouted: list[str]) -> None:
        self._routes = routes
        self._unrouted = unrouted

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._routes.get(request.url.host)
        if transport is None:
            self._unrouted.append(request.url.host)
            raise httpx.ConnectError(f"no stand-in serves {request.url.host}", request=request)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._routes.values():
            await transport.aclose()


class SeededRandomness:
    """Stands in for the `secrets` and `uuid` modules the stand-ins draw ids and nonces from."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choice(self, seq):  # noqa: ANN001, ANN201 - secrets.choice
        return self._rng.choice(seq)

    def token_hex(self, nbytes: int = 32) -> str:
        return self._rng.randbytes(nbytes).hex()

    def token_urlsafe(self, nbytes: int = 32) -> str:
        return base64.urlsafe_b64encode(self._rng.randbytes(nbytes)).rstrip(b"=").decode()

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._rng.randbytes(16), version=4)


class SimProvider:
    """What the simulation needs of one provider; every method is deterministic given the rng."""

    name = ""
    hosts: tuple[str, ...] = ()
    app: Any = None

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.announced: set[str] = set()  # what `observe` already turned into callbacks

    def settings(self) -> dict[str, str]:
        raise NotImplementedError

    def event_id(self, seq: int) -> str:
        return f"evt_sim_{seq}"

    def signed(self, event: dict[str, Any], *, now_s: int) -> tuple[dict[str, str], bytes]:
        """The callback's headers and body, signed now (signatures carry the sending time)."""
        raise NotImplementedError

    def acknowledged(self, response: httpx.Response) -> bool:
        return 200 <= response.status_code < 300

    def pay(self, payment_id: str, *, succeed: bool) -> list[Announcement] | None:
        """The payer acts in the provider's page; None when the provider shows nothing to pay."""
        raise NotImplementedError

    def observe(self) -> list[Announcement]:
        """Callbacks for what the provider did on APSS's calls since last asked (captures, refunds)."""
        return []

    def before_refund(self) -> None:
        """Decide how the provider will answer the next refund (at once, or pending)."""

    def pending_refunds(self) -> list[str]:
        return []

    def settle_refund(self, key: str, *, succeeded: bool) -> list[Announcement]:
        raise NotImplementedError

    def tick(self, now_s: int) -> None:
        """The provider's own clock-driven changes (expiries)."""

    def paid(self) -> set[str]:
        """Our payment ids the provider holds as charged (refunded later or not)."""
        raise NotImplementedError

    def refunds(self) -> dict[str, tuple[int, str]]:
        """Our refund id -> (amount in minor units, pending/succeeded/failed) as the provider holds it."""
        raise NotImplementedError


def _minor(value: str, currency: str) -> int:
    return int(Decimal(value).scaleb(CURRENCY_EXPONENTS[currency]))


# -- Stripe --------------------------------------------------------------------------------------

class StripeSim(SimProvider):
    name = "stripe"
    hosts = ("api.stripe.standin.test",)

    def __init__(self, rng: random.Random, *, now_s) -> None:  # noqa: ANN001
        super().__init__(rng)
        self.standin = StripeStandIn(secret_key="sk_test_sim_0123456789", webhook_secret="whsec_sim_0123456789",
                                     pi_on_create=True, now_s=now_s)
        self.app = self.standin

    def settings(self) -> dict[str, str]:
        return {"secret_key": self.standin.secret_key, "webhook_secret": self.standin.webhook_secret,
                "api_base": f"https://{self.hosts[0]}"}

    def signed(self, event: dict[str, Any], *, now_s: int) -> tuple[dict[str, str], bytes]:
        request = signed_callback_request(event["type"], event["obj"], secret=self.standin.webhook_secret,
                                          now_s=now_s, event_id=event["id"])
        return dict(request.headers), request.body

    def pay(self, payment_id: str, *, succeed: bool) -> list[Announcement] | None:
        sessions = [s for s, v in sorted(self.standin.sessions.items())
                    if v["metadata"].get("apss_payment_id") == payment_id and v["status"] == "open"]
        if not sessions:
            return None
        intent = self.standin.pay(sessions[0], succeeded=succeed)
        events: list[Announcement] = []
        if succeed and self.rng.random() < 0.3:
            events.append(("checkout.session.completed", self.standin.public_session(sessions[0])))
        events.append(("payment_intent.succeeded" if succeed else "payment_intent.payment_failed", intent))
        return events

    def before_refund(self) -> None:
        self.standin.refund_status = "pending" if self.rng.random() < 0.25 else "succeeded"

    def pending_refunds(self) -> list[str]:
        return [key for key, r in sorted(self.standin.refunds.items()) if r["status"] == "pending"]

    def settle_refund(self, key: str, *, succeeded: bool) -> list[Announcement]:
        refund = self.standin.refunds[key]
        refund["status"] = "succeeded" if succeeded else "failed"
        if not succeeded:
            refund["failure_reason"] = "expired_or_canceled_card"
        return [("refund.updated", refund)]

    def tick(self, now_s: int) -> None:
        """Stripe expires an open Checkout Session at its `expires_at`, canceling its PaymentIntent."""
        for session_id, session in sorted(self.standin.sessions.items()):
            if session["status"] == "open" and session["expires_at"] <= now_s:
                self.standin.expire_by_time(session_id)
                intent = self.standin.intents.get(session["payment_intent"] or "")
                if intent is not None and intent["status"] != "succeeded":
                    intent["status"] = "canceled"

    def paid(self) -> set[str]:
        return {i["metadata"]["apss_payment_id"] for i in self.standin.intents.values()
                if i["status"] == "succeeded" and "apss_payment_id" in i["metadata"]}

    def refunds(self) -> dict[str, tuple[int, str]]:
        return {r["metadata"]["apss_refund_id"]: (r["amount"], r["status"]) for r in self.standin.refunds.values()
                if "apss_refund_id" in r["metadata"]}


# -- PayPal --------------------------------------------------------------------------------------

class _PayPalStandin(PayPalStandin):
    """The PayPal stand-in with the payer's instrument decided per order: an order whose payer's
    funding the simulation declines has its capture DECLINED."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.declines: set[str] = set()

    def _capture(self, order_id: str) -> tuple[int, dict[str, Any]]:
        self.capture_status = "DECLINED" if order_id in self.declines else "COMPLETED"
        return super()._capture(order_id)


_PAYPAL_CHARGED = ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED")
_PAYPAL_REFUND_STATUSES = {"COMPLETED": "succeeded", "PENDING": "pending", "FAILED": "failed"}


class PayPalSim(SimProvider):
    """Approval webhook -> APSS captures -> PAYMENT.CAPTURE.COMPLETED (or .DENIED); refunds COMPLETED
    or PENDING, settled later with PAYMENT.CAPTURE.REFUNDED. The webhook certificate is served by
    the stand-in at PayPal's certificate host and fetched by the channel's own fetcher."""

    name = "paypal"
    hosts = ("api-m.standin.paypal.test", "api.sandbox.paypal.com")

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.standin = _PayPalStandin(client_id="SimStandinClient", client_secret="sim-paypal-secret-0123456789",
                                      webhook_id="5SIM0000000000000", signer=make_signing_cert())
        self.app = self.standin

    def settings(self) -> dict[str, str]:
        return {"client_id": self.standin.client_id, "client_secret": self.standin.client_secret,
                "webhook_id": self.standin.webhook_id, "api_base": f"https://{self.hosts[0]}"}

    def event_id(self, seq: int) -> str:
        return f"WH-SIM{seq:08d}"

    def signed(self, event: dict[str, Any], *, now_s: int) -> tuple[dict[str, str], bytes]:
        resource_type = {"CHECKOUT.ORDER.APPROVED": "checkout-order", "PAYMENT.CAPTURE.REFUNDED": "refund"}.get(
            event["type"], "capture")
        request = self.standin.webhook(event["type"], event["obj"], event_id=event["id"], now_s=now_s,
                                       resource_type=resource_type)
        return dict(request.headers), request.body

    def _order_of(self, payment_id: str) -> dict[str, Any] | None:
        return next((o for _, o in sorted(self.standin.orders.items())
                     if o["purchase_units"][0].get("custom_id") == payment_id), None)

    def pay(self, payment_id: str, *, succeed: bool) -> list[Announcement] | None:
        order = self._order_of(payment_id)
        if order is None or order["status"] != "PAYER_ACTION_REQUIRED":
            return None
        self.standin.approve(order["id"])
        if not succeed:
            self.standin.declines.add(order["id"])  # approved, but the funding is declined at capture
        return [("CHECKOUT.ORDER.APPROVED", self.standin._public(order["id"]))]

    def observe(self) -> list[Announcement]:
        events: list[Announcement] = []
        for capture_id, order_id in self.standin.captures.items():
            if capture_id not in self.announced:
                self.announced.add(capture_id)
                resource = self.standin.capture_resource(order_id)
                charged = resource["status"] in _PAYPAL_CHARGED
                events.append(("PAYMENT.CAPTURE.COMPLETED" if charged else "PAYMENT.CAPTURE.DENIED",
                               {**resource, "status": "COMPLETED" if charged else resource["status"]}))
        for refund in self._refunds():
            if refund["id"] not in self.announced and refund["status"] == "COMPLETED":
                self.announced.add(refund["id"])
                events.append(("PAYMENT.CAPTURE.REFUNDED", refund))
        return events

    def _refunds(self) -> list[dict[str, Any]]:
        return [r for _, o in sorted(self.standin.orders.items()) for u in o["purchase_units"]
                for r in u.get("payments", {}).get("refunds", [])]

    def before_refund(self) -> None:
        self.standin.refund_status = "PENDING" if self.rng.random() < 0.25 else "COMPLETED"

    def pending_refunds(self) -> list[str]:
        return [r["id"] for r in self._refunds() if r["status"] == "PENDING"]

    def settle_refund(self, key: str, *, succeeded: bool) -> list[Announcement]:
        refund = next(r for r in self._refunds() if r["id"] == key)
        if not succeeded:  # PayPal sends no webhook a refund failing: APSS's query finds it
            refund.update(status="FAILED", status_details={"reason": "ECHECK"})
            return []
        refund["status"] = "COMPLETED"
        self.announced.add(key)
        return [("PAYMENT.CAPTURE.REFUNDED", refund)]

    def paid(self) -> set[str]:
        return {o["purchase_units"][0]["custom_id"] for o in self.standin.orders.values()
                if any(c["status"] in _PAYPAL_CHARGED
                       for c in o["purchase_units"][0].get("payments", {}).get("captures", []))}

    def refunds(self) -> dict[str, tuple[int, str]]:
        return {r["invoice_id"]: (_minor(r["amount"]["value"], r["amount"]["currency_code"]),
                                  _PAYPAL_REFUND_STATUSES[r["status"]]) for r in self._refunds()}


# -- Alipay --------------------------------------------------------------------------------------

class AlipaySim(SimProvider):
    """The buyer pays (TRADE_SUCCESS) or the trade closes unpaid (TRADE_CLOSED), each notified by a
    form POST signed RSA2 with Alipay's key; refunds are synchronous and notified on the trade's
    notify (refund_fee, out_biz_no). Acknowledged only by the body `success`."""

    name = "alipay"
    hosts = ("alipay.standin.test",)
    APP_ID = "2021000000000777"

    def __init__(self, rng: random.Random, *, now_s) -> None:  # noqa: ANN001
        super().__init__(rng)
        self.keys = generate_keys()
        self.now_s = now_s
        self.standin = AlipayStandin(app_id=self.APP_ID, keys=self.keys, now_s=now_s)
        self.app = self.standin

    def settings(self) -> dict[str, str]:
        return {"app_id": self.APP_ID, "app_private_key": self.keys.app_private_pkcs8,
                "alipay_public_key": self.keys.alipay_public_bare, "api_base": f"https://{self.hosts[0]}/gateway.do"}

    def event_id(self, seq: int) -> str:
        return f"2026sim{seq:010d}"

    def signed(self, event: dict[str, Any], *, now_s: int) -> tuple[dict[str, str], bytes]:
        params = {**event["obj"], "notify_id": event["id"]}
        return ({"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                sign_notify(self.keys.alipay_private, params))

    def acknowledged(self, response: httpx.Response) -> bool:
        return response.status_code == 200 and response.content == b"success"

    def _notify(self, out_trade_no: str) -> dict[str, str]:
        # What the trade was when Alipay queued the notify (its notify_id is set when sent).
        return self.standin.notify_params(out_trade_no, notify_id="", now_s=self.now_s())

    def pay(self, payment_id: str, *, succeed: bool) -> list[Announcement] | None:
        trade = self.standin.trades.get(payment_id)
        if trade is None or trade.status != "WAIT_BUYER_PAY":
            return None
        if succeed:
            self.standin.pay(payment_id)
        else:
            self.standin.close(payment_id)  # the buyer never pays: Alipay closes the trade
        return [("trade_status_sync", self._notify(payment_id))]

    def observe(self) -> list[Announcement]:
        events: list[Announcement] = []
        for out_trade_no, trade in sorted(self.standin.trades.items()):
            refunded = 0
            for request_no, amount in trade.refunds.items():
                refunded += _minor(amount, "CNY")
                if request_no not in self.announced:
                    self.announced.add(request_no)
                    params = self._notify(out_trade_no)
                    params.update(out_biz_no=request_no, refund_fee=f"{refunded // 100}.{refunded % 100:02d}")
                    events.append(("trade_status_sync", params))
        return events

    def paid(self) -> set[str]:
        return {t.out_trade_no for t in self.standin.trades.values()
                if t.status in ("TRADE_SUCCESS", "TRADE_FINISHED") or t.refunds}

    def refunds(self) -> dict[str, tuple[int, str]]:
        return {request_no: (_minor(amount, "CNY"), "succeeded") for t in self.standin.trades.values()
                for request_no, amount in t.refunds.items()}


# -- WeChat Pay ----------------------------------------------------------------------------------

@functools.cache
def _wechat_key(name: str) -> Any:
    del name  # one merchant key and one platform key per process: RSA generation is slow
    return standin_wechatpay.new_rsa_key()


_WECHAT_REFUND_STATUSES = {"SUCCESS": "succeeded", "PROCESSING": "pending", "ABNORMAL": "failed", "CLOSED": "failed"}


class WechatPaySim(SimProvider):
    """The payer scans and pays (TRANSACTION.SUCCESS, the resource AES-256-GCM encrypted with the
    APIv3 key, the notice signed with the platform key) or gives up (WeChat sends nothing; the
    order is closed or expires). Refunds answer PROCESSING mostly and settle later with
    REFUND.SUCCESS or REFUND.ABNORMAL."""

    name = "wechatpay"
    hosts = ("api.wechatpay.standin.test",)
    MCHID, APPID = "1230000777", "wx7777777777777777"
    SERIAL, KEY_ID = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "PUB_KEY_ID_0112300007772026010500000000000001"
    APIV3_KEY = "s1m0123456789abcdefs1m0123456789"

    def __init__(self, rng: random.Random, *, now_s) -> None:  # noqa: ANN001
        super().__init__(rng)
        self.merchant_key, self.platform_key = _wechat_key("merchant"), _wechat_key("platform")
        self.standin = standin_wechatpay.StandIn(
            mchid=self.MCHID, appid=self.APPID, merchant_public_key=self.merchant_key.public_key(),
            merchant_serial_no=self.SERIAL, platform_key=self.platform_key, public_key_id=self.KEY_ID,
            apiv3_key=self.APIV3_KEY, api_base=f"https://{self.hosts[0]}", now_s=now_s)
        self.app = self.standin

    def settings(self) -> dict[str, str]:
        return {"mchid": self.MCHID, "appid": self.APPID,
                "merchant_private_key": standin_wechatpay.private_pem(self.merchant_key),
                "merchant_serial_no": self.SERIAL, "apiv3_key": self.APIV3_KEY,
                "platform_public_key": standin_wechatpay.public_pem(self.platform_key),
                "platform_public_key_id": self.KEY_ID, "api_base": f"https://{self.hosts[0]}"}

    def event_id(self, seq: int) -> str:
        return f"sim-{seq:08d}-wechat"

    def signed(self, event: dict[str, Any], *, now_s: int) -> tuple[dict[str, str], bytes]:
        if event["type"].startswith("REFUND."):
            return self.standin.refund_callback_for(event["obj"], status=event["type"].split(".", 1)[1],
                                                    event_id=event["id"], timestamp_s=now_s)
        return standin_wechatpay.build_callback(
            key=self.platform_key, public_key_id=self.KEY_ID, apiv3_key=self.APIV3_KEY, event_id=event["id"],
            event_type=event["type"], summary="支付成功", plaintext=event["obj"], timestamp_s=now_s,
            original_type="transaction")

    def pay(self, payment_id: str, *, succeed: bool) -> list[Announcement] | None:
        payment = self.standin.payments.get(payment_id)
        if payment is None or payment["trade_state"] != "NOTPAY":
            return None
        if not succeed:
            return []  # the payer gives up: WeChat notifies nothing, the order is closed or expires
        self.standin.pay(payment_id)
        plaintext = standin_wechatpay.transaction_plaintext(
            mchid=self.MCHID, appid=self.APPID, out_trade_no=payment_id, trade_state="SUCCESS",
            total=payment["total"], transaction_id=payment["transaction_id"])
        return [("TRANSACTION.SUCCESS", plaintext)]

    def observe(self) -> list[Announcement]:
        events: list[Announcement] = []
        for out_refund_no, refund in self.standin.refunds.items():
            if out_refund_no not in self.announced and refund["status"] == "SUCCESS":
                self.announced.add(out_refund_no)
                events.append(("REFUND.SUCCESS", out_refund_no))
        return events

    def before_refund(self) -> None:
        self.standin.refund_status = "SUCCESS" if self.rng.random() < 0.3 else "PROCESSING"

    def pending_refunds(self) -> list[str]:
        return [key for key, r in self.standin.refunds.items() if r["status"] == "PROCESSING"]

    def settle_refund(self, key: str, *, succeeded: bool) -> list[Announcement]:
        status = "SUCCESS" if succeeded else "ABNORMAL"
        self.standin.refunds[key]["status"] = status
        self.announced.add(key)
        return [(f"REFUND.{status}", key)]

    def paid(self) -> set[str]:
        return {otn for otn, p in self.standin.payments.items() if p["trade_state"] in ("SUCCESS", "REFUND")}

    def refunds(self) -> dict[str, tuple[int, str]]:
        return {key: (r["refund"], _WECHAT_REFUND_STATUSES[r["status"]]) for key, r in self.standin.refunds.items()}
