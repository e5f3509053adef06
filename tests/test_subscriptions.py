"""Subscriptions through the real server over HTTP, on a real SQLite file, with the scheduler on
a moved test clock: a year of monthly renewals from January 31, retries, hard declines, cancel,
resume, change with proration, an idempotent renewal job, the report and the ledger check."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from apss.clock import TestClock, format_rfc3339, parse_rfc3339
from apss.domain.subscriptions import Billing, Interval, add_intervals, period_bounds_ms, prorate, retry_at_ms
from tests.conftest import RunningServer, wait_for

DAY_S = 86_400
START = "2027-01-31T10:00:00Z"


# -- pure rules ---------------------------------------------------------------------------------
def test_month_ends_come_from_the_anchor():
    anchor = parse_rfc3339(START)
    ends = [format_rfc3339(add_intervals(anchor, Billing(interval=Interval.MONTH), i))[:10] for i in range(1, 7)]
    assert ends == ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31", "2027-06-30", "2027-07-31"]
    leap = parse_rfc3339("2028-01-31T00:00:00Z")
    assert format_rfc3339(add_intervals(leap, Billing(interval=Interval.MONTH), 1))[:10] == "2028-02-29"
    assert format_rfc3339(add_intervals(leap, Billing(interval=Interval.YEAR), 1))[:10] == "2029-01-31"
    feb29 = parse_rfc3339("2028-02-29T00:00:00Z")
    assert format_rfc3339(add_intervals(feb29, Billing(interval=Interval.YEAR), 1))[:10] == "2029-02-28"
    assert format_rfc3339(add_intervals(feb29, Billing(interval=Interval.YEAR), 4))[:10] == "2032-02-29"
    quarter = Billing(interval=Interval.MONTH, interval_count=3)
    assert [format_rfc3339(x)[:10] for x in period_bounds_ms(anchor, quarter, 1)] == ["2027-04-30", "2027-07-31"]
    assert add_intervals(anchor, Billing(interval=Interval.WEEK, interval_count=2), 1) - anchor == 14 * DAY_S * 1000


def test_proration_is_exact_and_rounds_half_even():
    # 10 of 30 days left: credit 999 x 1/3 = 333, charge 1999 x 1/3 = 666.33 -> 666, net 333
    p = prorate(old_amount=999, new_amount=1999, period_start_ms=0, period_end_ms=30, now_ms=20)
    assert (p.credit, p.charge, p.net) == (333, 666, 333)
    # ties go to the even unit: 5 x 1/2 = 2.5 -> 2, 7 x 1/2 = 3.5 -> 4
    p = prorate(old_amount=5, new_amount=7, period_start_ms=0, period_end_ms=2, now_ms=1)
    assert (p.credit, p.charge, p.net) == (2, 4, 2)


def test_retries_count_from_the_first_failure():
    assert [retry_at_ms(0, (1, 3, 5), n) for n in range(4)] == [86_400_000, 3 * 86_400_000, 5 * 86_400_000, None]


# -- through the server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    clock = TestClock(parse_rfc3339(START))
    running = RunningServer(db_path=tmp_path_factory.mktemp("subs") / "apss.sqlite", clock=clock,
                            env={"APSS_SUBSCRIPTIONS_GRACE_S": "3600"}).start()
    yield running
    running.stop()


def advance(server: RunningServer, seconds: float) -> None:
    """Move the clock, then wait for a renewal run (and the sandbox callbacks) that saw the new time."""
    server.clock.advance(seconds=seconds)
    server.wait_job("subscriptions")
    server.wait_job("sandbox_callbacks")


def advance_to(server: RunningServer, rfc3339: str) -> None:
    advance(server, max(0, (parse_rfc3339(rfc3339) - server.clock.now_ms()) / 1000))


def plan(merchant, client, *, price: int = 999, interval: str = "month", sku: str | None = None) -> dict:
    return merchant.product(client, category="membership", prices={"USD": price}, billing={"interval": interval},
                            **({"sku": sku} if sku else {}))


def subscribe(client, product_id: str, *, player: str, pay: bool = True, **fields) -> dict:
    created = client.post("/v1/subscriptions", json={"player_id": player, "product_id": product_id, "currency": "USD",
                                                     **fields})
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["id"].startswith("sub_") and sub["status"] == "incomplete"
    assert sub["latest_order"]["subscription_id"] == sub["id"]
    if pay:
        assert client.post(f"/v1/sandbox/payments/{sub['latest_order']['payment']['id']}/succeed").status_code == 202
        wait_for(lambda: client.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "active")
    return client.get(f"/v1/subscriptions/{sub['id']}").json()


def membership(client, player: str) -> list[dict]:
    return client.get(f"/v1/players/{player}/inventory").json()["memberships"]


def orders_of(server: RunningServer, subscription_id: str) -> list[tuple]:
    with sqlite3.connect(server.db_path) as conn:
        return conn.execute("SELECT so.kind, so.period_index, o.status, (SELECT count(*) FROM payments p WHERE p.order_id = o.id)"
                            " FROM subscription_orders so JOIN orders o ON o.id = so.order_id WHERE so.subscription_id = ?"
                            " ORDER BY so.period_index, so.kind", (subscription_id,)).fetchall()


def ledger_ok(server: RunningServer) -> None:
    with server.admin() as admin:
        check = admin.get("/v1/admin/ledger/check").json()
    assert check["ok"] is True and check["problem"] is None, check


def events(client, subscription_id: str) -> list[str]:
    return [e["type"] for e in client.get(f"/v1/subscriptions/{subscription_id}/events").json()["data"]]


def test_a_year_of_monthly_renewals_from_january_31(srv):
    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = plan(merchant, client, sku="vip_year")
        assert product["billing"] == {"interval": "month", "interval_count": 1}
        sub = subscribe(client, product["id"], player="yearly")
        assert (sub["current_period_start"], sub["current_period_end"]) == (START, "2027-02-28T10:00:00Z")
        assert membership(client, "yearly") == [{"sku": "vip_year", "expires_at": "2027-02-28T10:00:00Z"}]
        ends = []
        for _ in range(12):
            advance_to(srv, client.get(f"/v1/subscriptions/{sub['id']}").json()["current_period_end"])
            current = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["current_period_start"]
                               != (ends[-1] if ends else START) and s)
            assert current["status"] == "active" and current["latest_order"]["status"] == "fulfilled"
            assert membership(client, "yearly")[0]["expires_at"] == current["current_period_end"]
            ends.append(current["current_period_start"])
        assert [e[:10] for e in ends] == ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31", "2027-06-30", "2027-07-31",
                                          "2027-08-31", "2027-09-30", "2027-10-31", "2027-11-30", "2027-12-31", "2028-01-31"]
        assert [row[:3] for row in orders_of(srv, sub["id"])] == [("first", 0, "fulfilled")] + [
            ("renewal", i, "fulfilled") for i in range(1, 13)]
        assert events(client, sub["id"]) == ["subscription.created", "subscription.activated"] + ["subscription.renewed"] * 12
    ledger_ok(srv)
