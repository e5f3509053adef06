"""The reads that stay flat at millions of orders (bench/growth.py) answer what they answered
before: the overview's counters equal raw SQL counts on the database, a summary reading whole days
from stored daily reports equals the one summed from the ledger alone, and filtered order lists
equal the full list filtered."""

from __future__ import annotations

import re
import sqlite3

import httpx
import pytest

from apss.clock import TestClock, format_rfc3339, parse_rfc3339
from tests.conftest import ADMIN_TOKEN, RunningServer, wait_for

DAY_MS = 86_400_000
START = "2030-03-04T10:00:00Z"


@pytest.fixture(scope="module")
def growth_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("growth") / "apss.sqlite",
                            clock=TestClock(parse_rfc3339(START))).start()
    yield running
    running.stop()


def _paid(client: httpx.Client, merchant, product: dict, *, player_id: str, currency: str = "USD") -> dict:
    order = merchant.order(client, product["id"], player_id=player_id, currency=currency).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _admin(server: RunningServer) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, follow_redirects=True, timeout=30)
    csrf = re.search(r"name=csrf value='([^']+)'", client.get("/admin/login").text).group(1)
    assert "/admin/logout" in client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN}).text
    return client


def _three_days(server: RunningServer, merchant) -> dict:
    """Paid orders in two currencies on three days, a refund, and pending orders today."""
    with merchant.client() as client:
        sword = merchant.product(client, prices={"USD": 1000, "EUR": 900})
        first = _paid(client, merchant, sword, player_id="alice")
        _paid(client, merchant, sword, player_id="bob", currency="EUR")
        server.clock.advance(seconds=86_400)
        _paid(client, merchant, sword, player_id="alice")
        assert client.post(f"/v1/orders/{first['id']}/refunds", json={"amount": 300}).json()["status"] == "succeeded"
        server.clock.advance(seconds=86_400)
        _paid(client, merchant, sword, player_id="carol")
        pending = [merchant.order(client, sword["id"], player_id=f"waiting-{i}").json() for i in range(3)]
        assert all(o["status"] == "pending" for o in pending)
        return sword


def test_overview_counters_equal_raw_sql_counts(growth_server):
    server = growth_server
    merchant = server.new_merchant("Overview Studio")
    _three_days(server, merchant)
    now_ms = server.clock.now_ms()
    today_ms = now_ms - now_ms % DAY_MS
    with sqlite3.connect(server.db_path) as db:
        orders_today, paid_today = db.execute(
            "SELECT count(*), sum(status IN ('paid', 'delivering', 'fulfilled', 'partially_refunded', 'refunded',"
            " 'in_review')) FROM orders WHERE merchant_id = ? AND created_at_ms >= ?", (merchant.id, today_ms)).fetchone()
        pending = db.execute("SELECT count(*) FROM orders WHERE merchant_id = ? AND status = 'pending'",
                             (merchant.id,)).fetchone()[0]
        gross_today = db.execute(
            "SELECT sum(e.debit) FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
            " WHERE t.merchant_id = ? AND t.kind = 'payment_captured' AND t.created_at_ms >= ?"
            " AND (e.account LIKE 'provider_clearing:%' OR e.account LIKE 'fees_expense:%')",
            (merchant.id, today_ms)).fetchone()[0]
    assert (orders_today, paid_today, pending, gross_today) == (4, 1, 3, 1000)
    admin = _admin(server)
    try:
        live = admin.get("/admin/live.json", params={"merchant": merchant.id}).json()
        overview = admin.get("/admin", params={"merchant": merchant.id}).text
    finally:
        admin.close()
    assert (live["orders_today"], live["paid_today"], live["pending"]) == (str(orders_today), str(paid_today), str(pending))
    assert "10.00" in live["revenue_today"]
    assert f"id=counter-orders_today>{orders_today}<" in overview


def test_a_summary_reading_stored_days_equals_the_one_from_the_ledger(growth_server):
    server = growth_server
    merchant = server.new_merchant("Summary Studio")
    day0_ms = server.clock.now_ms() - server.clock.now_ms() % DAY_MS
    _three_days(server, merchant)
    server.clock.advance(seconds=301)  # past the report job's interval: yesterday and the day before are stored
    server.wait_job("reports")
    with merchant.client() as client:
        stored = client.get("/v1/reports", params={"period": "daily"}).json()["data"]
        assert len(stored) >= 2
        # Part days at both ends, the whole day between from its stored report.
        window = {"from": format_rfc3339(day0_ms + 6 * 3_600_000), "to": format_rfc3339(server.clock.now_ms())}
        with_reports = client.get("/v1/reports/summary", params=window).json()["data"]
        with sqlite3.connect(server.db_path) as db:
            db.execute("DELETE FROM reports WHERE merchant_id = ?", (merchant.id,))
        from_ledger = client.get("/v1/reports/summary", params=window).json()["data"]
    assert with_reports == from_ledger
    usd = next(s for s in from_ledger if s["currency"] == "USD")
    assert (usd["gross"], usd["refunds"], usd["payments"], usd["refund_count"]) == (3000, 300, 3, 1)


def test_filtered_order_lists_equal_the_full_list_filtered(growth_server):
    server = growth_server
    merchant = server.new_merchant("Lists Studio")
    _three_days(server, merchant)
    with merchant.client() as client:
        everything = client.get("/v1/orders", params={"limit": 100}).json()["data"]
        for params, keep in (({"status": "pending"}, lambda o: o["status"] == "pending"),
                             ({"player_id": "alice"}, lambda o: o["player_id"] == "alice"),
                             ({"status": "fulfilled", "player_id": "alice"},
                              lambda o: o["status"] == "fulfilled" and o["player_id"] == "alice")):
            pages, cursor = [], None
            while True:  # one order per page: the cursor is applied with the filters
                page = client.get("/v1/orders", params={**params, "limit": 1, **({"cursor": cursor} if cursor else {})}).json()
                pages += page["data"]
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
            assert [o["id"] for o in pages] == [o["id"] for o in everything if keep(o)], params


def _order_points(overview: str) -> dict[str, int]:
    chart = overview[overview.index("<svg id='orders'"):]
    return {label: int(value) for label, value in re.findall(r"data-label='([^']+)' data-value='(\d+)'", chart)}


def test_the_orders_chart_counts_each_day_as_raw_sql_does_and_today_moves(growth_server):
    server = growth_server
    merchant = server.new_merchant("Chart Studio")
    sword = _three_days(server, merchant)
    with sqlite3.connect(server.db_path) as db:
        per_day = dict(db.execute(
            "SELECT strftime('%Y-%m-%d', created_at_ms / 1000, 'unixepoch'), count(*) FROM orders WHERE merchant_id = ?"
            " GROUP BY 1", (merchant.id,)).fetchall())
    admin = _admin(server)
    try:
        first = _order_points(admin.get("/admin", params={"merchant": merchant.id}).text)
        assert {day: n for day, n in first.items() if n} == per_day
        with merchant.client() as client:  # today's count is read again; the days before are remembered
            merchant.order(client, sword["id"], player_id="late")
        today = format_rfc3339(server.clock.now_ms())[:10]
        again = _order_points(admin.get("/admin", params={"merchant": merchant.id}).text)
        assert again == {**first, today: first[today] + 1}
    finally:
        admin.close()
