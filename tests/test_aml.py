"""AML monitoring through the real server: payments booked by the sandbox's callbacks raise cases
and alerts in the same transaction (structuring just under a threshold, the 24-hour and 30-day
totals), one open case per player and kind with later hits appended, case moves by the merchant,
the CSV export, isolation between merchants. Checked against the raw database and the ledger."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from tests.conftest import RawRow, assert_error, assert_ledger_ok, wait_for

pytestmark = pytest.mark.both_backends


def _settings(client: httpx.Client, **values) -> dict:
    response = client.put("/v1/risk/aml/settings", json=values)
    assert response.status_code == 200, response.text
    return response.json()


def _paid(merchant, client: httpx.Client, product_id: str, player_id: str, status: str = "fulfilled") -> dict:
    order = merchant.order(client, product_id, player_id=player_id).json()
    assert order["status"] == "pending", order
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == status and o)


def _cases(merchant, player_id: str) -> list[RawRow]:
    return merchant.server.raw("SELECT * FROM aml_cases WHERE merchant_id = ? AND player_id = ? ORDER BY id",
                               (merchant.id, player_id))


def test_structuring_just_under_the_threshold_opens_one_case_and_one_alert(merchant):
    with merchant.client() as client:
        settings = _settings(client, daily_threshold=1_000_000, rolling_30d_threshold=0, structuring_threshold=10_000,
                             structuring_count=3, structuring_window_h=24, structuring_margin_bps=1000)
        assert (settings["structuring_threshold"], settings["currency"]) == (10_000, "USD")
        near = merchant.product(client, prices={"USD": 9_500})
        below_band = merchant.product(client, prices={"USD": 8_999})  # more than 10% under: not structuring
        at = merchant.product(client, prices={"USD": 10_000})  # at the threshold: not "just under"
        for _ in range(3):
            _paid(merchant, client, below_band["id"], "careful")
            _paid(merchant, client, at["id"], "careful")
        assert _cases(merchant, "careful") == []
        first = [_paid(merchant, client, near["id"], "smurf") for _ in range(2)]
        assert _cases(merchant, "smurf") == [], "two near-threshold payments are not yet a pattern"
        third = _paid(merchant, client, near["id"], "smurf")
        fourth = _paid(merchant, client, near["id"], "smurf")
        cases = _cases(merchant, "smurf")
        assert [(c["kind"], c["status"], c["hits"], c["amount_total"]) for c in cases] == [("structuring", "open", 2, 19_000)]
        case_id = cases[0]["id"]
        assert case_id.startswith("amc_")
        raw = merchant.server.raw
        hits = raw("SELECT order_id, amount, observed, threshold FROM aml_case_hits WHERE case_id = ? ORDER BY seq", (case_id,))
        assert hits == [(third["id"], 9_500, 3, 3), (fourth["id"], 9_500, 4, 3)]
        alerts = raw("SELECT kind, severity FROM alerts WHERE merchant_id = ? AND object_id = ?", (merchant.id, case_id))
        assert alerts == [("aml_structuring", "warning")], "one alert per case, not per hit"
        assert all(o["id"] not in {h["order_id"] for h in hits} for o in first)
        # the alert is on the merchant's alert list (the dashboard's source)
        listed = client.get("/v1/alerts", params={"kind": "aml_structuring"}).json()["data"]
        assert [a["object_id"] for a in listed] == [case_id]
        detail = client.get(f"/v1/risk/aml/cases/{case_id}").json()
        assert [h["order_id"] for h in detail["hit_list"]] == [third["id"], fourth["id"]]
        exported = client.get("/v1/risk/aml/cases.csv")
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["id"], r["player_id"], r["kind"], r["status"], r["hits"], r["amount_total"]) for r in rows] == [
            (case_id, "smurf", "structuring", "open", "2", "19000")]
    assert_ledger_ok(merchant.server)


def test_the_daily_and_30_day_totals_over_their_thresholds_open_cases(merchant):
    server = merchant.server
    with merchant.client() as client:
        _settings(client, daily_threshold=100_000, rolling_30d_threshold=150_000, structuring_threshold=0)
        product = merchant.product(client, prices={"USD": 40_000})
        _paid(merchant, client, product["id"], "whale")
        _paid(merchant, client, product["id"], "whale")
        assert _cases(merchant, "whale") == [], "80,000 in a day is under 100,000"
        third = _paid(merchant, client, product["id"], "whale")
        [daily] = _cases(merchant, "whale")
        assert (daily["kind"], daily["hits"]) == ("daily_threshold", 1)
        server.clock.advance(seconds=25 * 3600)  # the day window has moved on; the 30 days have not
        fourth = _paid(merchant, client, product["id"], "whale")
        cases = {c["kind"]: c for c in _cases(merchant, "whale")}
        assert set(cases) == {"daily_threshold", "rolling_30d_threshold"}
        assert cases["daily_threshold"]["hits"] == 1, "40,000 in the last 24 hours is under the daily threshold"
        [hit] = server.raw("SELECT order_id, observed, threshold FROM aml_case_hits WHERE case_id = ?",
                           (cases["rolling_30d_threshold"]["id"],))
        assert hit == (fourth["id"], 160_000, 150_000)
        [first_hit] = server.raw("SELECT order_id, observed FROM aml_case_hits WHERE case_id = ?", (daily["id"],))
        assert first_hit == (third["id"], 120_000)
        # filters
        listed = client.get("/v1/risk/aml/cases", params={"player_id": "whale", "limit": 1}).json()
        assert listed["has_more"] is True and len(listed["data"]) == 1
        rest = client.get("/v1/risk/aml/cases", params={"player_id": "whale", "cursor": listed["next_cursor"]}).json()
        assert {c["id"] for c in listed["data"] + rest["data"]} == {c["id"] for c in cases.values()}
        assert client.get("/v1/risk/aml/cases", params={"player_id": "nobody"}).json()["data"] == []
    assert_ledger_ok(merchant.server)


def test_case_moves_follow_the_table_and_a_closed_case_lets_a_new_one_open(merchant):
    server = merchant.server
    with merchant.client() as client:
        _settings(client, daily_threshold=10_000, rolling_30d_threshold=0, structuring_threshold=0)
        product = merchant.product(client, prices={"USD": 20_000})
        _paid(merchant, client, product["id"], "mover")
        [case] = _cases(merchant, "mover")
        path = f"/v1/risk/aml/cases/{case['id']}"
        assert_error(client.post(path, json={"status": "open"}), 409, "conflict_error", "aml_case_transition_invalid", "status")
        moved = client.post(path, json={"status": "investigating", "note": "asked the player for a source of funds"})
        assert moved.status_code == 200 and moved.json()["status"] == "investigating", moved.text
        _paid(merchant, client, product["id"], "mover")  # appends to the investigated case
        assert [(c["id"], c["hits"]) for c in _cases(merchant, "mover")] == [(case["id"], 2)]
        filtered = client.get("/v1/risk/aml/cases", params={"status": "investigating"}).json()["data"]
        assert [c["id"] for c in filtered] == [case["id"]]
        bad = client.post(path, json={"status": "escalated"})
        assert bad.status_code == 400, bad.text
        reported = client.post(path, json={"status": "reported"}, headers={"Idempotency-Key": "report-1"})
        assert reported.status_code == 200 and reported.json()["status"] == "reported"
        replay = client.post(path, json={"status": "reported"}, headers={"Idempotency-Key": "report-1"})
        assert replay.headers.get("idempotent-replayed") == "true" and replay.json() == reported.json()
        assert_error(client.post(path, json={"status": "closed"}), 409, "conflict_error", "aml_case_transition_invalid")
        assert_error(client.post(path, json={"status": "investigating"}), 409, "conflict_error",
                     "aml_case_transition_invalid")
        events = client.get(path).json()["events"]
        assert [(e["from_status"], e["to_status"]) for e in events] == [
            (None, "open"), ("open", "investigating"), ("investigating", "reported")]
        assert events[1]["note"] == "asked the player for a source of funds"
        server.clock.advance(seconds=25 * 3600)
        _paid(merchant, client, product["id"], "mover")  # 20,000 in a day again: a new case, the old one is final
        cases = _cases(merchant, "mover")
        assert [(c["status"], c["hits"]) for c in cases] == [("reported", 2), ("open", 1)]
        # another merchant sees none of it
        other = server.new_merchant("Other Studio")
        with other.client() as intruder:
            assert_error(intruder.get(path), 404, "invalid_request_error", "not_found")
            assert_error(intruder.post(path, json={"status": "closed"}), 404, "invalid_request_error", "not_found")
            assert intruder.get("/v1/risk/aml/cases").json()["data"] == []
            assert intruder.get("/v1/risk/aml/cases.csv").text.count("\r\n") == 1  # the header only
    assert_ledger_ok(merchant.server)
