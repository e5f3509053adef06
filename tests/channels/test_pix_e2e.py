"""PIX through the real server over HTTP, against the PIX stand-in served on a real port: the
settings, a BRL order's BR Code and expiry, a payment confirmed by query before it is applied,
forged, mismatched and duplicated callbacks, a partial return booked once, the ledger check."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from apss.channels.pix import mapping
from tests.channels.brcode_decoder import decode
from tests.channels.standin_pix import PixStandIn, e2eid
from tests.conftest import assert_ledger_ok
from tests.test_channels_e2e import _Served

CLIENT_ID = "pix-client-e2e"
CLIENT_SECRET = "pix-secret-e2e-5f1c9a"
CHAVE = "loja@estudio.example"


@pytest.fixture(scope="module")
def pix():
    standin = PixStandIn(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, chave=CHAVE)
    served = _Served(standin)
    yield standin, served.url
    served.stop()


def _settings(url: str, **changes: str) -> dict[str, str]:
    return {"api_base": url, "token_url": f"{url}/oauth/token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "chave": CHAVE, "merchant_name": "Estudio de Jogos", "merchant_city": "SAO PAULO", **changes}


@pytest.fixture
def pix_merchant(merchant, pix):
    _, url = pix
    with merchant.client() as client:
        saved = client.put("/v1/channels/pix", json=_settings(url))
        assert saved.status_code == 200, saved.text
    return merchant


def _order(merchant, client, *, stock: int = 5, price: int = 1999, player_id: str = "jogador-1") -> dict:
    product = merchant.product(client, stock=stock, prices={"BRL": price})
    response = merchant.order(client, product["id"], player_id=player_id, currency="BRL", channel="pix")
    assert response.status_code == 201, response.text
    return response.json()


def _paid(standin: PixStandIn, merchant, client, *, player_id: str, valor: str | None = None) -> tuple[dict, dict]:
    """An order whose charge the stand-in's payer paid (`valor`: another amount), the PSP's notice delivered."""
    order = _order(merchant, client, player_id=player_id)
    entry = standin.pay(mapping.txid_for(order["payment"]["id"]), valor=valor)
    assert standin.deliver(entry).status_code == 200
    return order, entry


def _inventory(client, player_id: str) -> list:
    return client.get(f"/v1/players/{player_id}/inventory").json()["items"]


def _callback_url(merchant) -> str:
    return f"{merchant.server.base_url}/v1/channels/pix/webhook/{merchant.id}"


def test_settings_are_checked_and_secrets_never_returned(merchant, pix):
    _, url = pix
    with merchant.client() as client:
        long_name = client.put("/v1/channels/pix", json=_settings(url, merchant_name="N" * 26))
        assert long_name.status_code == 400 and long_name.json()["error"]["code"] == "setting_invalid"
        assert long_name.json()["error"]["param"] == "merchant_name"
        long_city = client.put("/v1/channels/pix", json=_settings(url, merchant_city="C" * 16))
        assert long_city.status_code == 400 and long_city.json()["error"]["param"] == "merchant_city"
        bad_token_url = client.put("/v1/channels/pix", json=_settings(url, token_url="ftp://x"))
        assert bad_token_url.status_code == 400 and bad_token_url.json()["error"]["param"] == "token_url"
        missing = client.put("/v1/channels/pix", json={k: v for k, v in _settings(url).items() if k != "chave"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "chave"
        saved = client.put("/v1/channels/pix", json=_settings(url))
        assert saved.status_code == 200, saved.text
        body = saved.json()
        assert body["callback_url"] == _callback_url(merchant)
        assert "client_secret" not in body["settings"] and body["settings"]["chave"] == CHAVE
        assert CLIENT_SECRET not in client.get("/v1/channels").text


def test_a_brl_order_pays_by_br_code_confirmed_by_query_and_delivers_once(pix_merchant, pix):
    standin, _ = pix
    merchant = pix_merchant
    with merchant.client() as client:
        order = _order(merchant, client, player_id="jogador-pago")
        payment = order["payment"]
        assert order["channel"] == "pix" and payment["status"] == "requires_action"
        txid = mapping.txid_for(payment["id"])
        cob = standin.cobs[txid]
        # The charge expires with the reservation (config default 900 s, the test clock stands still).
        assert cob["calendario"]["expiracao"] == merchant.server.config.orders.reservation_ttl_s == 900
        assert cob["valor"]["original"] == "19.99" and cob["chave"] == CHAVE
        assert standin.webhooks[CHAVE] == _callback_url(merchant)
        # The payer's QR: a BR Code whose CRC checks and whose amount is the order's.
        assert payment["next_action"]["type"] == "qr_code"
        fields = decode(payment["next_action"]["data"])
        assert (fields["53"], fields["54"], fields["58"]) == ("986", "19.99", "BR")
        assert fields["26"]["25"] == cob["location"]

        # A forged notice while the PSP still holds the charge unpaid: acknowledged, nothing moves.
        forged = standin.notice({"endToEndId": e2eid(), "txid": txid, "valor": "19.99",
                                 "horario": "2026-11-25T15:04:05.000Z"})
        answer = httpx.post(_callback_url(merchant) + "/pix", content=forged, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending"

        entry = standin.pay(txid)
        assert standin.deliver(entry).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        assert standin.deliver(entry).status_code == 200  # the PSP retries: delivered once
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        assert [e["to_status"] for e in events].count("paid") == 1
        assert [(i["quantity"]) for i in _inventory(client, "jogador-pago")] == [1]
        # A notice the PSP's record contradicts (another amount) is refused with the PSP's failure reply.
        tampered = standin.notice({**entry, "valor": "0.01"})
        refused = httpx.post(_callback_url(merchant) + "/pix", content=tampered,
                             headers={"Content-Type": "application/json"})
        assert refused.status_code == 400
    assert_ledger_ok(merchant.server)


def test_a_pix_of_another_amount_is_not_fulfilled(pix_merchant, pix):
    standin, _ = pix
    merchant = pix_merchant
    with merchant.client() as client:
        # The PSP took less than the order (a PSP that allows it).
        order, _ = _paid(standin, merchant, client, player_id="jogador-menos", valor="1.00")
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] != "fulfilled"
        assert _inventory(client, "jogador-menos") == []
        alerts = client.get("/v1/alerts").json()["data"]
        assert [a["severity"] for a in alerts if a["kind"] == "amount_mismatch"
                and a["object_id"] == order["payment"]["id"]] == ["critical"], alerts
    assert_ledger_ok(merchant.server)


def test_a_partial_return_is_made_at_the_psp_and_booked_once(pix_merchant, pix):
    standin, _ = pix
    merchant = pix_merchant
    with merchant.client() as client:
        order, entry = _paid(standin, merchant, client, player_id="jogador-devolucao")
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        created = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 500, "reason": "goodwill"})
        assert created.status_code == 201, created.text
        refund = created.json()
        assert refund["status"] == "pending"
        returns = [r for r in standin.returns() if r["id"] == mapping.return_id_for(refund["id"])]
        assert [(r["valor"], r["natureza"], r["status"]) for r in returns] == [("5.00", "ORIGINAL", "EM_PROCESSAMENTO")]
        # The PSP settles the return and calls back (twice): the refund succeeds once.
        settled = standin.settle_return(entry["endToEndId"], returns[0]["id"], "DEVOLVIDO")
        assert standin.deliver(settled).status_code == 200
        assert standin.deliver(settled).status_code == 200
        assert client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        assert len([r for r in standin.returns() if r["id"] == returns[0]["id"]]) == 1
    with sqlite3.connect(merchant.server.db_path) as raw:
        postings = raw.execute("SELECT kind FROM ledger_transactions WHERE reference = ?", (refund["id"],)).fetchall()
    assert len(postings) == 1, postings
    assert_ledger_ok(merchant.server)


def test_orders_in_other_currencies_are_refused_clearly(pix_merchant):
    merchant = pix_merchant
    with merchant.client() as client:
        product = merchant.product(client, stock=1, prices={"USD": 500})
        response = merchant.order(client, product["id"], currency="USD", channel="pix")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "failed" and body["payment"]["failure_code"] == "currency_not_supported", body
