"""Players over HTTP: inventory, wallet, debits (never below zero, also under concurrency),
membership extension and entitlements granted once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from apss.clock import format_rfc3339
from tests.conftest import assert_error, unique_sku, wait_for

pytestmark = pytest.mark.both_backends

DAY_MS = 86_400_000



def buy_and_pay(merchant, client: httpx.Client, product_id: str, *, player_id: str, quantity: int = 1) -> dict:
    response = merchant.order(client, product_id, player_id=player_id, quantity=quantity)
    assert response.status_code == 201, response.text
    order = response.json()
    paid = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
    assert paid.status_code == 202, paid.text
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def gems_pack(merchant, client: httpx.Client, amount: int = 500) -> dict:
    return merchant.product(client, sku=unique_sku("gems"), category="currency_pack",
                            grants=[{"type": "currency", "currency": "GEMS", "amount": amount}])


def test_player_with_nothing(merchant):
    with merchant.client() as client:
        inventory = client.get("/v1/players/nobody/inventory")
        assert inventory.status_code == 200, inventory.text
        assert inventory.json() == {"player_id": "nobody", "items": [], "memberships": [], "entitlements": []}
        wallet = client.get("/v1/players/nobody/wallet")
        assert wallet.status_code == 200, wallet.text
        assert wallet.json() == {"player_id": "nobody", "balances": {}}


def test_wallet_after_buying_a_currency_pack_and_debits(merchant, server):
    with merchant.client() as client:
        pack = gems_pack(merchant, client)
        order = buy_and_pay(merchant, client, pack["id"], player_id="whale")
        assert order["payment"]["status"] == "succeeded"
        assert client.get("/v1/players/whale/wallet").json() == {"player_id": "whale", "balances": {"GEMS": 500}}
        # A currency pack puts nothing in the inventory.
        assert client.get("/v1/players/whale/inventory").json() == {
            "player_id": "whale", "items": [], "memberships": [], "entitlements": []}
        debit = client.post("/v1/players/whale/wallet/debit", json={"currency": "GEMS", "amount": 120, "reason": "hat"})
        assert debit.status_code == 201, debit.text
        assert debit.json() == {"player_id": "whale", "currency": "GEMS", "amount": 120, "balance": 380}
        assert_error(client.post("/v1/players/whale/wallet/debit", json={"currency": "GEMS", "amount": 381}), 409,
                     "conflict_error", "insufficient_balance", "amount")
        assert client.get("/v1/players/whale/wallet").json()["balances"] == {"GEMS": 380}
        assert_error(client.post("/v1/players/whale/wallet/debit", json={"currency": "COINS", "amount": 1}), 409,
                     "conflict_error", "insufficient_balance", "amount")
        assert client.get("/v1/players/whale/wallet").json()["balances"] == {"GEMS": 380}
        for bad in ({"currency": "GEMS", "amount": 0}, {"currency": "GEMS", "amount": -5}, {"currency": "gems", "amount": 1}):
            assert_error(client.post("/v1/players/whale/wallet/debit", json=bad), 400, "invalid_request_error",
                         "parameter_invalid")
        exact = client.post("/v1/players/whale/wallet/debit", json={"currency": "GEMS", "amount": 380})
        assert exact.status_code == 201 and exact.json()["balance"] == 0
        assert client.get("/v1/players/whale/wallet").json() == {"player_id": "whale", "balances": {"GEMS": 0}}
    # Another merchant's player of the same id owns nothing.
    other = server.new_merchant()
    with other.client() as client:
        assert client.get("/v1/players/whale/wallet").json() == {"player_id": "whale", "balances": {}}


def test_currency_pack_quantity_multiplies_the_grant(merchant):
    with merchant.client() as client:
        pack = gems_pack(merchant, client, amount=250)
        buy_and_pay(merchant, client, pack["id"], player_id="p2", quantity=3)
        assert client.get("/v1/players/p2/wallet").json()["balances"] == {"GEMS": 750}


def test_debit_with_idempotency_key_debits_once(merchant):
    with merchant.client() as client:
        buy_and_pay(merchant, client, gems_pack(merchant, client)["id"], player_id="idem")
        body = {"currency": "GEMS", "amount": 100}
        first = client.post("/v1/players/idem/wallet/debit", json=body, headers={"Idempotency-Key": "debit-1"})
        again = client.post("/v1/players/idem/wallet/debit", json=body, headers={"Idempotency-Key": "debit-1"})
        assert first.status_code == again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true" and again.content == first.content
        assert client.get("/v1/players/idem/wallet").json()["balances"] == {"GEMS": 400}


@pytest.mark.anyio
async def test_concurrent_debits_never_go_below_zero(merchant):
    with merchant.client() as client:
        buy_and_pay(merchant, client, gems_pack(merchant, client)["id"], player_id="racer")
    async with merchant.async_client() as client:
        responses = await asyncio.gather(*(
            client.post("/v1/players/racer/wallet/debit", json={"currency": "GEMS", "amount": 50}) for _ in range(30)))
        ok = [r for r in responses if r.status_code == 201]
        refused = [r for r in responses if r.status_code != 201]
        assert len(ok) == 10 and len(refused) == 20
        for response in refused:
            assert_error(response, 409, "conflict_error", "insufficient_balance", "amount")
        assert sorted(r.json()["balance"] for r in ok) == list(range(0, 500, 50))
        assert all(r.json()["balance"] >= 0 for r in ok)
        wallet = (await client.get("/v1/players/racer/wallet")).json()
        assert wallet == {"player_id": "racer", "balances": {"GEMS": 0}}


def test_membership_bought_twice_extends_from_the_first_expiry(merchant):
    clock = merchant.server.clock
    with merchant.client() as client:
        vip = merchant.product(client, sku=unique_sku("vip"), category="membership")
        first_ms = clock.now_ms()
        buy_and_pay(merchant, client, vip["id"], player_id="member")
        inventory = client.get("/v1/players/member/inventory").json()
        assert inventory == {"player_id": "member", "items": [], "entitlements": [],
                             "memberships": [{"sku": vip["sku"], "expires_at": format_rfc3339(first_ms + 30 * DAY_MS)}]}
        clock.advance(seconds=10)  # well under the reservation TTL: other tests' orders are unaffected
        buy_and_pay(merchant, client, vip["id"], player_id="member")
        inventory = client.get("/v1/players/member/inventory").json()
        assert inventory["memberships"] == [{"sku": vip["sku"], "expires_at": format_rfc3339(first_ms + 60 * DAY_MS)}]
        # Two units in one order extend by 2 x 30 days.
        buy_and_pay(merchant, client, vip["id"], player_id="member", quantity=2)
        inventory = client.get("/v1/players/member/inventory").json()
        assert inventory["memberships"] == [{"sku": vip["sku"], "expires_at": format_rfc3339(first_ms + 120 * DAY_MS)}]


def test_entitlement_is_granted_once(merchant):
    clock = merchant.server.clock
    with merchant.client() as client:
        book = merchant.product(client, sku=unique_sku("book"), category="digital_content")
        first_ms = clock.now_ms()
        buy_and_pay(merchant, client, book["id"], player_id="reader")
        clock.advance(seconds=5)
        buy_and_pay(merchant, client, book["id"], player_id="reader", quantity=2)
        inventory = client.get("/v1/players/reader/inventory").json()
        assert inventory == {"player_id": "reader", "items": [], "memberships": [],
                             "entitlements": [{"sku": book["sku"], "granted_at": format_rfc3339(first_ms)}]}


def test_items_accumulate_in_inventory(merchant):
    with merchant.client() as client:
        sword = merchant.product(client, sku=unique_sku("sword"))
        bundle = merchant.product(client, sku=unique_sku("bundle"), grants=[
            {"type": "item", "sku": sword["sku"], "quantity": 2}, {"type": "item", "sku": "arrow", "quantity": 10}])
        buy_and_pay(merchant, client, sword["id"], player_id="archer")
        buy_and_pay(merchant, client, bundle["id"], player_id="archer", quantity=3)
        inventory = client.get("/v1/players/archer/inventory").json()
        assert inventory["items"] == sorted([{"sku": "arrow", "quantity": 30}, {"sku": sword["sku"], "quantity": 7}],
                                            key=lambda item: item["sku"])


@pytest.mark.parametrize("player_id", ["bad!id", "has space", "x" * 129, "caf%C3%A9", "semi;colon"])
def test_bad_player_id_in_path(merchant, player_id):
    with merchant.client() as client:
        for method, path, body in (("GET", "inventory", None), ("GET", "wallet", None),
                                   ("POST", "wallet/debit", {"currency": "GEMS", "amount": 1})):
            response = client.request(method, f"/v1/players/{player_id}/{path}", json=body)
            assert_error(response, 400, "invalid_request_error", "parameter_invalid", "player_id")


def test_longest_and_all_allowed_characters_in_player_id(merchant):
    player_id = ("Az09_.:-" * 16)[:128]
    with merchant.client() as client:
        response = client.get(f"/v1/players/{player_id}/inventory")
        assert response.status_code == 200, response.text
        assert response.json()["player_id"] == player_id
