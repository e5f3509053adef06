"""Player KYC, minors' spending limits and merchant KYC through the real server.

Minors under the built-in CN preset are refused (409 minor_spending_limit) at order creation
with nothing reserved (stock and order rows read from the raw database); amounts in another
currency are converted at the FX rate in force; a parallel burst cannot pass a monthly limit.
Large payments of players without verified KYC wait in in_review and are delivered when the
merchant verifies the player (refunded when it rejects them). Payouts of a merchant whose KYC is
not verified wait. The ledger check passes after every money test."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from apss.store.migrate import MIGRATIONS_DIR, apply_migrations
from tests.conftest import assert_error, assert_ledger_ok, wait_for

pytestmark = pytest.mark.both_backends


def _kyc(client: httpx.Client, player_id: str, **body) -> dict:
    response = client.put(f"/v1/players/{player_id}/kyc", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _pay(client: httpx.Client, order: dict) -> None:
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202


def _status(client: httpx.Client, order_id: str, wanted: str) -> dict:
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order_id}").json())["status"] == wanted and o)


def _stock(merchant, product_id: str) -> tuple[int, int, int]:
    [row] = merchant.server.raw("SELECT stock, reserved, sold FROM products WHERE id = ?", (product_id,))
    return tuple(row)


def _orders_of(merchant, player_id: str) -> int:
    return merchant.server.raw("SELECT count(*) FROM orders WHERE merchant_id = ? AND player_id = ?",
                               (merchant.id, player_id))[0][0]


def test_a_15_year_old_under_cn_pays_50_cny_is_refused_51_and_a_fifth_50_in_the_month(merchant):
    with merchant.client() as client:
        fifty = merchant.product(client, prices={"CNY": 5_000}, stock=10)
        fifty_one = merchant.product(client, prices={"CNY": 5_100}, stock=10)
        view = _kyc(client, "teen", status="verified", age=15, jurisdiction="CN")
        assert view["minor_limits"] == {"min_age": 8, "max_age": 16, "per_payment": 5_000, "per_month": 20_000,
                                        "currency": "CNY"}
        assert client.get("/v1/players/teen/kyc").json() == view
        first = merchant.order(client, fifty["id"], player_id="teen", currency="CNY").json()
        _pay(client, first)
        _status(client, first["id"], "fulfilled")
        refused = merchant.order(client, fifty_one["id"], player_id="teen", currency="CNY")
        assert_error(refused, 409, "conflict_error", "minor_spending_limit")
        assert "teen" not in refused.text and "15" not in refused.json()["error"]["message"]
        assert _stock(merchant, fifty_one["id"]) == (10, 0, 0), "nothing reserved"
        pending = [merchant.order(client, fifty["id"], player_id="teen", currency="CNY").json() for _ in range(3)]
        assert [o["status"] for o in pending] == ["pending"] * 3  # 200 CNY with the paid one: the month's limit
        fifth = merchant.order(client, fifty["id"], player_id="teen", currency="CNY", metadata={"try": "fifth"})
        assert_error(fifth, 409, "conflict_error", "minor_spending_limit")
        assert _stock(merchant, fifty["id"]) == (6, 3, 1), "the refused fifth reserved nothing"
        assert _orders_of(merchant, "teen") == 4, "a refused order leaves no order row"
        # a canceled order no longer counts against the month
        assert client.post(f"/v1/orders/{pending[0]['id']}/cancel").status_code == 200
        again = merchant.order(client, fifty["id"], player_id="teen", currency="CNY")
        assert again.status_code == 201 and again.json()["status"] == "pending", again.text
        # an adult of the same jurisdiction is not limited
        _kyc(client, "grown", status="verified", age=30, jurisdiction="CN")
        assert merchant.order(client, fifty_one["id"], player_id="grown", currency="CNY").status_code == 201
    assert_ledger_ok(merchant.server)


def test_a_7_year_old_is_refused_any_payment_and_a_birth_date_gives_the_age(merchant):
    with merchant.client() as client:
        cheap = merchant.product(client, prices={"CNY": 1}, stock=5)
        _kyc(client, "child", status="pending", age=7, jurisdiction="CN")
        assert_error(merchant.order(client, cheap["id"], player_id="child", currency="CNY"), 409, "conflict_error",
                     "minor_spending_limit")
        now = dt.datetime.fromtimestamp(merchant.server.clock.now_ms() / 1000, tz=dt.UTC)
        born = now.date().replace(year=now.year - 7) - dt.timedelta(days=40)  # seven, for a while yet
        view = _kyc(client, "child2", status="verified", birth_date=born.isoformat(), jurisdiction="CN")
        assert view["age"] == 7 and view["minor_limits"]["per_payment"] == 0
        assert_error(merchant.order(client, cheap["id"], player_id="child2", currency="CNY"), 409, "conflict_error",
                     "minor_spending_limit")
        assert _stock(merchant, cheap["id"]) == (5, 0, 0) and _orders_of(merchant, "child") == 0
        bad = client.put("/v1/players/child3/kyc", json={"status": "verified", "birth_date": "2020-02-30"})
        assert_error(bad, 400, "invalid_request_error", "birth_date_invalid", "birth_date")
        future = (now + dt.timedelta(days=3)).date().isoformat()
        bad = client.put("/v1/players/child3/kyc", json={"status": "verified", "birth_date": future})
        assert_error(bad, 400, "invalid_request_error", "birth_date_invalid", "birth_date")
        [(sealed,)] = merchant.server.raw(  # personal data: sealed at rest
            "SELECT birth_date_sealed FROM player_kyc WHERE merchant_id = ? AND player_id = 'child2'", (merchant.id,))
        assert sealed and born.isoformat() not in sealed
        assert client.get("/v1/players/child2/kyc").json()["birth_date"] == born.isoformat()


def test_a_usd_order_is_converted_at_the_rate_in_force(merchant):
    with merchant.server.admin() as admin:
        rates = admin.put("/v1/admin/fx_rates", json={"rates": [{"base": "USD", "quote": "CNY", "rate": "7.1"}]})
        assert rates.status_code == 200, rates.text
    with merchant.client() as client:
        under = merchant.product(client, prices={"USD": 704}, stock=5)  # 7.04 USD = 49.984 CNY -> 4998
        over = merchant.product(client, prices={"USD": 705}, stock=5)  # 7.05 USD = 50.055 CNY -> 5006 (half-even)
        _kyc(client, "teen-usd", status="verified", age=12, jurisdiction="CN")
        assert_error(merchant.order(client, over["id"], player_id="teen-usd"), 409, "conflict_error", "minor_spending_limit")
        allowed = merchant.order(client, under["id"], player_id="teen-usd")
        assert allowed.status_code == 201, allowed.text
        [spend] = merchant.server.raw("SELECT currency, amount, month FROM minor_spend WHERE order_id = ?",
                                      (allowed.json()["id"],))
        assert (spend["currency"], spend["amount"]) == ("CNY", 4_998)
        assert _stock(merchant, over["id"]) == (5, 0, 0)


def test_a_parallel_burst_cannot_pass_the_monthly_limit(merchant):
    with merchant.client() as client:
        hundred = merchant.product(client, prices={"CNY": 10_000}, stock=50)
        _kyc(client, "burst", status="verified", age=16, jurisdiction="CN")  # 100 CNY a payment, 400 a month

    async def burst() -> list[httpx.Response]:
        async with merchant.async_client() as aclient:
            return await asyncio.gather(*(aclient.post("/v1/orders", json={
                "player_id": "burst", "currency": "CNY", "items": [{"product_id": hundred["id"], "quantity": 1}]})
                for _ in range(12)))

    answers = asyncio.run(burst())
    assert sorted(r.status_code for r in answers) == [201] * 4 + [409] * 8
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"minor_spending_limit"}
    assert _stock(merchant, hundred["id"]) == (46, 4, 0) and _orders_of(merchant, "burst") == 4


def test_a_merchant_preset_replaces_the_limits_of_its_jurisdiction(merchant):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 1_001}, stock=5)
        cheaper = merchant.product(client, prices={"USD": 1_000}, stock=5)
        overlap = client.post("/v1/minor_limits", json={"jurisdiction": "XX", "bands": [
            {"min_age": 0, "max_age": 13, "per_payment": 0, "currency": "USD"},
            {"min_age": 12, "max_age": 18, "per_payment": 1000, "currency": "USD"}]})
        assert_error(overlap, 400, "invalid_request_error", "bands_overlap", "bands[1].min_age")
        made = client.post("/v1/minor_limits", json={"jurisdiction": "XX", "timezone": "Europe/Paris", "bands": [
            {"min_age": 0, "max_age": 18, "per_payment": 1000, "per_month": None, "currency": "USD"}]})
        assert made.status_code == 200, made.text
        listed = client.get("/v1/minor_limits").json()
        assert [(p["jurisdiction"], p["builtin"]) for p in listed["data"]] == [("CN", True), ("XX", False)]
        _kyc(client, "kid-xx", status="verified", age=10, jurisdiction="XX")
        assert_error(merchant.order(client, product["id"], player_id="kid-xx"), 409, "conflict_error",
                     "minor_spending_limit")
        assert merchant.order(client, cheaper["id"], player_id="kid-xx").status_code == 201
        with merchant.server.new_merchant("Other").client() as other:  # presets are the merchant's own
            assert [p["jurisdiction"] for p in other.get("/v1/minor_limits").json()["data"]] == ["CN"]


def test_a_large_payment_waits_for_kyc_and_is_delivered_when_verified_or_refunded_when_rejected(merchant):
    with merchant.client() as client:
        settings = client.put("/v1/risk/aml/settings", json={"kyc_payment_threshold": 50_000, "kyc_30d_threshold": 70_000})
        assert settings.status_code == 200, settings.text
        big = merchant.product(client, prices={"USD": 60_000}, stock=5)
        small = merchant.product(client, prices={"USD": 40_000}, stock=5)
        fine = merchant.order(client, small["id"], player_id="whale").json()  # under both thresholds: delivered
        _pay(client, fine)
        _status(client, fine["id"], "fulfilled")
        held = merchant.order(client, big["id"], player_id="whale").json()
        _pay(client, held)
        _status(client, held["id"], "in_review")
        risk = client.get(f"/v1/orders/{held['id']}/risk").json()
        assert [r["name"] for r in risk["rules_fired"]] == ["kyc_required"] and risk["action"] == "review"
        assert risk["attributes"]["kyc_status"] == "unverified"
        assert [r["order_id"] for r in client.get("/v1/risk/reviews").json()["data"]] == [held["id"]]
        owned = client.get("/v1/players/whale/inventory").json()["items"]
        assert owned == [{"sku": small["sku"], "quantity": 1}], "nothing of the held order is delivered"
        _kyc(client, "whale", status="pending")
        assert client.get(f"/v1/orders/{held['id']}").json()["status"] == "in_review"
        _kyc(client, "whale", status="verified")
        _status(client, held["id"], "fulfilled")
        items = {i["sku"]: i["quantity"] for i in client.get("/v1/players/whale/inventory").json()["items"]}
        assert items == {small["sku"]: 1, big["sku"]: 1}
        again = merchant.order(client, big["id"], player_id="whale").json()  # verified now: delivered at once
        _pay(client, again)
        _status(client, again["id"], "fulfilled")
        # the 30-day total: 40,000 then 40,000 more passes 70,000 -> held; the player rejected -> refunded
        one = merchant.order(client, small["id"], player_id="minnow").json()
        _pay(client, one)
        _status(client, one["id"], "fulfilled")
        two = merchant.order(client, small["id"], player_id="minnow").json()
        _pay(client, two)
        _status(client, two["id"], "in_review")
        _kyc(client, "minnow", status="rejected")
        _status(client, two["id"], "refunded")
        raw = merchant.server.raw
        assert raw("SELECT amount, status FROM refunds WHERE order_id = ?", (two["id"],)) == [(40_000, "succeeded")]
        holds = dict(raw("SELECT order_id, status FROM kyc_holds WHERE merchant_id = ?", (merchant.id,)))
        assert holds == {held["id"]: "released", two["id"]: "rejected"}
        assert _stock(merchant, small["id"]) == (3, 0, 2), "the rejected order's unit is back in stock"
    assert_ledger_ok(merchant.server)


def test_payouts_wait_for_a_verified_merchant_kyc(server):
    live = server.new_merchant("Live Studio", mode="live")
    with server.admin() as admin:
        assert admin.get(f"/v1/merchants/{live.id}").json()["kyc_status"] == "unverified"
    merchant = server.new_merchant("Payout Studio")
    with merchant.client() as client, server.admin() as admin:
        assert admin.get(f"/v1/merchants/{merchant.id}").json()["kyc_status"] == "verified"
        set_pending = admin.put(f"/v1/merchants/{merchant.id}/kyc", json={"status": "pending"})
        assert set_pending.status_code == 200 and set_pending.json()["kyc_status"] == "pending"
        assert_error(admin.put("/v1/merchants/mch_nope/kyc", json={"status": "verified"}), 404, "invalid_request_error",
                     "not_found")
        assert client.put(f"/v1/merchants/{merchant.id}/kyc", json={"status": "verified"}).status_code == 401
        product = merchant.product(client, prices={"USD": 1_000})
        order = merchant.order(client, product["id"], player_id="payer").json()
        _pay(client, order)
        _status(client, order["id"], "fulfilled")
        server.clock.advance(seconds=1)
        [batch] = [b for b in client.post("/v1/settlements/run").json()["data"] if b["currency"] == "USD"]
        assert (batch["status"], batch["payout_state"]) == ("pending", "awaiting_merchant_kyc")
        refused = admin.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": "wire-1"})
        assert_error(refused, 409, "conflict_error", "merchant_kyc_required")
        payouts = server.raw("SELECT count(*) FROM ledger_transactions WHERE kind = 'settlement_payout' AND reference = ?",
                             (batch["id"],))
        assert payouts == [(0,)], "nothing posted while the payout waits"
        assert admin.put(f"/v1/merchants/{merchant.id}/kyc", json={"status": "verified"}).status_code == 200
        assert client.get(f"/v1/settlements/{batch['id']}").json()["payout_state"] == "payable"
        paid = admin.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": "wire-1"})
        assert paid.status_code == 200 and paid.json()["payout_state"] == "paid", paid.text
    assert_ledger_ok(merchant.server)


def test_the_migration_makes_existing_merchants_verified(tmp_path: Path):
    older = tmp_path / "migrations"
    older.mkdir()
    for file in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if file.name.endswith("_aml_kyc.sql"):
            break
        shutil.copy(file, older / file.name)
    path = str(tmp_path / "old.sqlite")
    apply_migrations(path, directory=older)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO merchants (id, name, mode, created_at_ms) VALUES ('mch_old', 'Old', 'live', 0)")
    apply_migrations(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT kyc_status FROM merchants WHERE id = 'mch_old'").fetchone() == ("verified",)
