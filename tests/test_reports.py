"""Reports through the real server and the real scheduler on a moved clock: the daily report of a
day with payments, a refund and two currencies, to the unit; CSV; idempotent regeneration; on
demand; weekly reports and the 14-day catch-up after downtime."""

from __future__ import annotations

import csv
import io

import pytest

from apss.clock import TestClock, parse_rfc3339
from tests.conftest import RunningServer, wait_for

pytestmark = pytest.mark.both_backends
TUESDAY_10H = "2030-01-08T10:00:00Z"  # 2030-01-07 is a Monday


@pytest.fixture(scope="module")
def report_server(tmp_path_factory, backend, database_env):
    """A server of the module's own on the test's backend, its clock on a Tuesday of 2030."""
    clock = TestClock(parse_rfc3339(TUESDAY_10H))
    running = RunningServer(db_path=tmp_path_factory.mktemp("reports") / "apss.sqlite", clock=clock,
                            env=database_env(backend)).start()
    yield running
    running.stop()


def _paid(merchant, client, product, *, quantity=1, currency="USD") -> dict:
    order = merchant.order(client, product["id"], player_id="reporter", quantity=quantity, currency=currency).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _move_to(server, when: str) -> None:
    server.clock.advance(seconds=(parse_rfc3339(when) - server.clock.now_ms()) / 1000)


def _reports(client, period: str) -> list[dict]:
    return client.get("/v1/reports", params={"period": period, "limit": 100}).json()["data"]


def test_daily_and_weekly_reports_from_the_scheduler(report_server):
    server = report_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        sword = merchant.product(client, sku="rpt_sword", prices={"USD": 1000, "EUR": 900})
        gems = merchant.product(client, sku="rpt_gems", prices={"USD": 250})
        first = _paid(merchant, client, sword)
        _paid(merchant, client, gems, quantity=2)
        _paid(merchant, client, sword, currency="EUR")
        assert client.post(f"/v1/orders/{first['id']}/refunds", json={"amount": 400}).json()["status"] == "succeeded"
        merchant.order(client, sword["id"], player_id="never-pays")  # pending, then expired: not in any report
        _move_to(server, "2030-01-08T23:59:50Z")
        _paid(merchant, client, gems)
        _move_to(server, "2030-01-09T00:00:10Z")
        _paid(merchant, client, sword)  # the next day
        early = client.post("/v1/reports", json={"period": "daily", "start": "2030-01-09T00:00:00Z"})
        assert early.status_code == 400 and early.json()["error"]["code"] == "period_not_complete"
        _move_to(server, "2030-01-09T00:06:00Z")  # past the job's 5-minute interval
        server.wait_job("reports")

        [daily] = _reports(client, "daily")
        assert _reports(client, "weekly") == [], "the week has not ended"
        assert (daily["period_start"], daily["period_end"]) == ("2030-01-08T00:00:00Z", "2030-01-09T00:00:00Z")
        # USD: 1000 + 500 + 250; fees 2.9% + 30 each: 59 + 44 (14.5 -> 14) + 37 (7.25 -> 7); commission 30%:
        # 300 + 150 + 75, less 120 reversed by the refund of 400, whose other 280 leave the merchant's net.
        # EUR: 900, fee 26 (26.1) + 25, commission 270.
        assert daily["by_currency"] == [
            {"currency": "EUR", "gross": 900, "refunds": 0, "chargebacks": 0, "fees": 51, "commission": 270,
             "partner_shares": 0, "net": 630, "payments": 1, "refund_count": 0, "discounts": 0},
            {"currency": "USD", "gross": 1750, "refunds": 400, "chargebacks": 0, "fees": 140, "commission": 405,
             "partner_shares": 0, "net": 1225 - 280, "payments": 3, "refund_count": 1, "discounts": 0},
        ]
        summary = client.get("/v1/reports/summary", params={"from": daily["period_start"], "to": daily["period_end"]})
        assert summary.json()["data"] == daily["by_currency"], "the same numbers as the live summary"
        assert daily["by_channel"] == [
            {"channel": "sandbox", "currency": "EUR", "gross": 900, "refunds": 0, "chargebacks": 0, "fees": 51,
             "payments": 1, "refund_count": 0},
            {"channel": "sandbox", "currency": "USD", "gross": 1750, "refunds": 400, "chargebacks": 0, "fees": 140,
             "payments": 3, "refund_count": 1},
        ]
        assert daily["by_product"] == [
            {"product_id": gems["id"], "sku": "rpt_gems", "currency": "USD", "quantity": 3, "gross": 750, "orders": 2},
            {"product_id": sword["id"], "sku": "rpt_sword", "currency": "EUR", "quantity": 1, "gross": 900, "orders": 1},
            {"product_id": sword["id"], "sku": "rpt_sword", "currency": "USD", "quantity": 1, "gross": 1000, "orders": 1},
        ]
        assert client.get(f"/v1/reports/{daily['id']}").json() == daily

        # CSV, under both spellings
        for path in (f"/v1/reports/{daily['id']}.csv", f"/v1/reports/{daily['id']}/csv"):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(answer.text)))
            assert [(r["breakdown"], r["key"], r["currency"], r["gross"]) for r in rows] == [
                ("currency", "EUR", "EUR", "900"), ("currency", "USD", "USD", "1750"),
                ("channel", "sandbox", "EUR", "900"), ("channel", "sandbox", "USD", "1750"),
                ("product", "rpt_gems", "USD", "750"), ("product", "rpt_sword", "EUR", "900"),
                ("product", "rpt_sword", "USD", "1000")]
            usd = rows[1]
            assert (usd["refunds"], usd["fees"], usd["commission"], usd["net"], usd["payments"], usd["refund_count"]) == (
                "400", "140", "405", "945", "3", "1")
            assert rows[4]["quantity"] == "3" and rows[4]["product_id"] == gems["id"] and rows[4]["commission"] == ""
            assert rows[0]["period_start"] == "2030-01-08T00:00:00Z"

        # Regenerating is idempotent: on demand answers the stored report; the job makes nothing twice.
        again = client.post("/v1/reports", json={"period": "daily", "start": "2030-01-08T00:00:00Z"})
        assert again.status_code == 200 and again.json() == daily
        server.clock.advance(seconds=301)
        server.wait_job("reports")
        assert [r["id"] for r in _reports(client, "daily")] == [daily["id"]]
        assert server.raw("SELECT count(*) FROM reports WHERE merchant_id = ?", (merchant.id,)) == [(1,)]

        # The week of Monday 2030-01-07 ends on the 14th: one weekly report, and the daily ones missed meanwhile.
        _move_to(server, "2030-01-14T00:10:00Z")
        server.wait_job("reports")
        dailies = _reports(client, "daily")
        assert sorted(r["period_start"][:10] for r in dailies) == [f"2030-01-{d:02d}" for d in range(8, 14)]
        [weekly] = _reports(client, "weekly")
        assert (weekly["period_start"], weekly["period_end"]) == ("2030-01-07T00:00:00Z", "2030-01-14T00:00:00Z")
        usd_week = next(c for c in weekly["by_currency"] if c["currency"] == "USD")
        assert (usd_week["gross"], usd_week["payments"], usd_week["fees"]) == (2750, 4, 140 + 59)
        quiet = next(r for r in dailies if r["period_start"].startswith("2030-01-12"))
        assert (quiet["by_currency"], quiet["by_channel"], quiet["by_product"]) == ([], [], [])

        # After 20 days of downtime the job catches up on the last 14 days (and the weeks ending in them) only.
        _move_to(server, "2030-02-03T00:10:00Z")
        server.wait_job("reports")
        starts = sorted(r["period_start"][:10] for r in _reports(client, "daily"))
        assert len(starts) == 6 + 14 and starts[6] == "2030-01-20" and starts[-1] == "2030-02-02"
        assert sorted(r["period_start"][:10] for r in _reports(client, "weekly")) == ["2030-01-07", "2030-01-14", "2030-01-21"]


def test_on_demand_reports(report_server):
    merchant = report_server.new_merchant()
    with merchant.client() as client:
        made = client.post("/v1/reports", json={"period": "weekly", "start": "2029-12-31T00:00:00Z"})
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["period"], body["period_end"], body["by_currency"]) == ("weekly", "2030-01-07T00:00:00Z", [])
        assert client.post("/v1/reports", json={"period": "weekly", "start": "2029-12-31T00:00:00Z"}).json()["id"] == body["id"]
        tuesday = client.post("/v1/reports", json={"period": "weekly", "start": "2030-01-01T00:00:00Z"})
        assert tuesday.status_code == 400 and tuesday.json()["error"]["code"] == "period_start_invalid"
        noon = client.post("/v1/reports", json={"period": "daily", "start": "2030-01-01T12:00:00Z"})
        assert noon.status_code == 400 and noon.json()["error"]["param"] == "start"
        assert client.post("/v1/reports", json={"period": "monthly", "start": "2030-01-01T00:00:00Z"}).status_code == 400
        assert client.post("/v1/reports", json={"period": "daily", "start": "yesterday"}).status_code == 400
        assert client.get("/v1/reports", params={"period": "hourly"}).status_code == 400
    other = report_server.new_merchant()
    with other.client() as client:
        assert client.get(f"/v1/reports/{body['id']}").status_code == 404
        assert client.get(f"/v1/reports/{body['id']}.csv").status_code == 404
