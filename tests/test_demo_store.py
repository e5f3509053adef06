"""The demo store seeded on a fresh database (config seed.demo), through the real server over HTTP:
its catalog holds a monthly plan, its welcome coupon discounts a quote, and a restart seeds nothing
twice."""

from __future__ import annotations

import httpx

from apss.clock import SystemClock
from tests.conftest import RunningServer, assert_error

DEMO = {"APSS_SEED_DEMO": "true"}


def _demo_key(server: RunningServer) -> str:
    """The key from the once-only line `python run.py` prints (README "Five minutes with curl")."""
    [line] = [line for line in server.announced if line.startswith("Demo merchant ")]
    return line.rsplit(" ", 1)[1]


def _products(client: httpx.Client) -> dict[str, dict]:
    return {p["sku"]: p for p in client.get("/v1/products", params={"limit": 100}).json()["data"]}


def test_the_demo_store_has_a_monthly_plan_and_a_welcome_coupon(tmp_path):
    db_path = tmp_path / "apss.sqlite"
    first = RunningServer(db_path=db_path, clock=SystemClock(), env=DEMO).start()
    try:
        key = _demo_key(first)
        assert key.startswith("sk_test_")
        with httpx.Client(base_url=first.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            products = _products(client)
            plan = products["battle_pass_monthly"]
            assert (plan["category"], plan["billing"], plan["prices"]) == (
                "membership", {"interval": "month", "interval_count": 1}, {"USD": 499, "EUR": 459})
            [welcome] = client.get("/v1/promotions").json()["data"]
            assert (welcome["code"], welcome["percent_off_bps"], welcome["active"]) == ("WELCOME10", 1000, True)
            assert (welcome["redemptions_max"], welcome["redemptions_per_player_max"]) == (1000, 1)
            assert welcome["categories"] == ["currency_pack", "digital_content", "item"]

            gems = products["gems_500"]["id"]
            quote = client.post("/v1/quotes", json={"player_id": "alice", "currency": "USD", "coupon": "welcome10",
                                                    "items": [{"product_id": gems, "quantity": 2}]})
            assert quote.status_code == 200, quote.text
            # 10% of 998 = 99.8 -> 100 (half-even to the cent)
            assert (quote.json()["subtotal"], quote.json()["discount"], quote.json()["amount"]) == (998, 100, 898)
            assert quote.json()["promotions"] == [welcome["id"]]
            on_plan = client.post("/v1/quotes", json={"player_id": "alice", "currency": "USD", "coupon": "WELCOME10",
                                                      "items": [{"product_id": plan["id"], "quantity": 1}]})
            assert_error(on_plan, 400, "invalid_request_error", "coupon_not_applicable")
    finally:
        first.stop()

    second = RunningServer(db_path=db_path, clock=SystemClock(), env=DEMO).start()
    try:
        assert not [line for line in second.announced if line.startswith("Demo merchant ")], "seeded once"
        with second.admin() as admin:
            merchants = admin.get("/v1/merchants", params={"limit": 100}).json()["data"]
        assert [m["name"] for m in merchants] == ["Demo Studio"]
        with httpx.Client(base_url=second.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            assert len(client.get("/v1/promotions").json()["data"]) == 1
            assert sorted(_products(client)) == sorted(products)
    finally:
        second.stop()
