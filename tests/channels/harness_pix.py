"""The PIX channel wired to its local stand-in, for the shared contract test.

PIX callbacks are not signed: the channel confirms each notice by asking the PSP (GET /cob).
So "signed_callback" here is the PSP's notice after the stand-in's payer paid the charge, and
"tamper" changes the amount the notice claims (the PSP's record disagrees: rejected). There is no
timestamp to go stale (`stale` is None). PIX sends no failure callbacks; `signed_callback(
succeeded=False)` posts a notice for a charge the PSP still holds unpaid (ATIVA), which the
channel confirms as unpaid and applies nothing (no events).
"""

from __future__ import annotations

import json

import httpx

from apss.channels.base import CallbackRequest, PaymentRequest
from apss.channels.pix import PixChannel
from apss.ids import new_id
from tests.channels.standin_pix import PixStandIn, e2eid

__all__ = ["API_BASE", "CHAVE", "Harness", "make_harness"]

API_BASE = "https://pix.standin.test/api/v2"
CLIENT_ID = "Client_Id_standin_4e1b"
CLIENT_SECRET = "Client_Secret_standin_9c7d2a"
CHAVE = "7d9f0335-8dcc-4054-9bf9-0dbd61d36906"


class _Mounted:
    """The stand-in under /api/v2 of its host, like a PSP's base path (the token at its root)."""

    def __init__(self, standin: PixStandIn) -> None:
        self.standin = standin

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] == "http" and scope["path"].startswith("/api/v2/"):
            scope = {**scope, "path": scope["path"][len("/api/v2"):]}
        await self.standin(scope, receive, send)


class Harness:
    def __init__(self, *, copia_e_cola: bool = True) -> None:
        self.standin = PixStandIn(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, chave=CHAVE,
                                  copia_e_cola=copia_e_cola)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=_Mounted(self.standin)), timeout=10.0)
        self.channel = PixChannel(public_url="http://apss.test", http=self.http)
        self.credentials = {"api_base": API_BASE, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "chave": CHAVE, "merchant_name": "Estudio de Jogos", "merchant_city": "SAO PAULO"}
        self.currency = "BRL"

    async def signed_callback(self, *, succeeded: bool, payment_id: str, provider_ref: str, amount: int,
                              currency: str, event_id: str, now_s: int) -> CallbackRequest:
        del amount, currency, event_id, now_s  # the PSP's record decides all of them
        if succeeded:
            entry = self.standin.pay(provider_ref)
        else:
            unpaid = PaymentRequest(payment_id=new_id("pay"), order_id=new_id("ord"), merchant_id="mch_1", amount=100,
                                    currency="BRL", description="unpaid", callback_url=f"http://apss.test/{payment_id}")
            created = await self.channel.create_payment(unpaid, self.credentials)
            entry = {"endToEndId": e2eid(), "txid": created.provider_ref, "valor": "1.00",
                     "horario": "2026-11-25T15:04:05.000Z"}
        return CallbackRequest(headers={"content-type": "application/json"}, body=self.standin.notice(entry),
                               now_s=0)

    def tamper(self, request: CallbackRequest) -> CallbackRequest:
        body = json.loads(request.body)
        body["pix"][0]["valor"] = "0.01" if body["pix"][0]["valor"] != "0.01" else "0.02"
        return CallbackRequest(headers=request.headers, body=json.dumps(body).encode(), now_s=request.now_s)

    def stale(self, request: CallbackRequest) -> None:
        return None  # unsigned: nothing carries a time

    async def aclose(self) -> None:
        await self.http.aclose()


def make_harness(**kwargs: bool) -> Harness:
    return Harness(**kwargs)
