"""Prices in virtual currency: an order in GEMS is paid from the wallet in its own transaction
(fulfilled at once, or 409 insufficient_balance with nothing reserved), under real concurrency,
with the deferred revenue recognised when spent and deferred again by a refund."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.conftest import assert_error, assert_ledger_ok, wait_for

pytestmark = pytest.mark.both_backends


def _vc_balances(client) -> dict[str, int]:
    return {b["account"].split(":")[0]: b["balance"] for b in client.get("/v1/ledger/balances").json()["data"]
            if b["account"].startswith("vc_")}


def _gems_for(merchant, client, player_id: str, *, packs: int) -> None:
    """The player buys `packs` packs of 100 GEMS for money (sandbox payment)."""
    pack = merchant.product(client, category="currency_pack", prices={"USD": 1000},
                            grants=[{"type": "currency", "currency": "GEMS", "amount": 100}])
    order = merchant.order(client, pack["id"], player_id=player_id, quantity=packs).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")


def test_virtual_codes_are_never_iso_and_must_be_the_merchants(merchant):
    with merchant.client() as client:
        assert_error(client.post("/v1/products", json={
            "sku": "fake_usd", "name": "Fake", "category": "currency_pack", "prices": {"EUR": 100},
            "grants": [{"type": "currency", "currency": "USD", "amount": 100}]}),
            400, "invalid_request_error", "currency_code_reserved", "grants[0].currency")
        assert_error(client.post("/v1/products", json={
            "sku": "nobody_grants", "name": "X", "category": "item", "prices": {"USD": 100, "RUBIES": 5}}),
            400, "invalid_request_error", "currency_not_supported", "prices.RUBIES")
        _gems_for(merchant, client, "nobody", packs=1)  # now the merchant has GEMS
        sword = merchant.product(client, prices={"USD": 499, "GEMS": 30})
        assert sword["prices"] == {"USD": 499, "GEMS": 30}
        assert_error(merchant.order(client, sword["id"], currency="RUBIES"), 400, "invalid_request_error",
                     "currency_not_supported", "currency")
        assert_error(merchant.order(client, sword["id"], currency="GEMS", channel="sandbox"), 400,
                     "invalid_request_error", "channel_not_available", "channel")



@pytest.mark.anyio
async def test_50_concurrent_gem_orders_on_a_wallet_for_10_fulfil_exactly_10(merchant):
    server = merchant.server
    with merchant.client() as client:
        _gems_for(merchant, client, "whale", packs=3)  # 300 GEMS
        assert client.get("/v1/players/whale/wallet").json()["balances"] == {"GEMS": 300}
        sword = merchant.product(client, sku="gem_sword", prices={"USD": 499, "GEMS": 30})
        deferred = _vc_balances(client)["vc_deferred"]
        assert deferred > 0
    async with merchant.async_client(max_connections=50) as client:
        responses = await asyncio.gather(*(client.post("/v1/orders", json={
            "player_id": "whale", "currency": "GEMS", "items": [{"product_id": sword["id"], "quantity": 1}]})
            for _ in range(50)))
    assert Counter(r.status_code for r in responses) == {201: 10, 409: 40}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"insufficient_balance"}
    made = [r.json() for r in responses if r.status_code == 201]
    assert {(o["status"], o["channel"], o["payment"]["channel"], o["payment"]["status"], o["amount"]) for o in made} == {
        ("fulfilled", "wallet", "wallet", "succeeded", 30)}
    assert server.raw("SELECT balance FROM wallet_balances WHERE merchant_id = ? AND player_id = 'whale'"
                      " AND currency = 'GEMS'", (merchant.id,)) == [(0,)]
    assert server.raw("SELECT count(*) FROM orders WHERE merchant_id = ? AND currency = 'GEMS'", (merchant.id,)) == [(10,)]
    assert server.raw("SELECT reserved, sold FROM products WHERE id = ?", (sword["id"],)) == [(0, 10)], "nothing held"
    with merchant.client() as client:
        assert client.get("/v1/players/whale/inventory").json()["items"] == [{"sku": "gem_sword", "quantity": 10}]
        vc = _vc_balances(client)
        assert (vc["vc_deferred"], vc["vc_recognised"]) == (0, deferred), "all the GEMS were spent: all recognised"

        refund = client.post(f"/v1/orders/{made[0]['id']}/refunds", json={})
        assert refund.status_code == 201 and (refund.json()["status"], refund.json()["amount"]) == ("succeeded", 30)
        assert client.get(f"/v1/orders/{made[0]['id']}").json()["status"] == "refunded"
        assert client.get("/v1/players/whale/wallet").json()["balances"] == {"GEMS": 30}, "credited back"
        assert client.get("/v1/players/whale/inventory").json()["items"] == [{"sku": "gem_sword", "quantity": 9}]
        vc = _vc_balances(client)
        assert vc["vc_deferred"] == deferred // 10 and vc["vc_deferred"] + vc["vc_recognised"] == deferred
        again = client.post("/v1/orders", json={"player_id": "whale", "currency": "GEMS",
                                                "items": [{"product_id": sword["id"], "quantity": 1}]})
        assert again.status_code == 201 and again.json()["status"] == "fulfilled"
        assert client.get("/v1/players/whale/wallet").json()["balances"] == {"GEMS": 0}
        assert _vc_balances(client)["vc_deferred"] == 0
    assert_ledger_ok(server)
