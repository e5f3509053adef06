"""Settlement through the real server with a moved clock: daily and weekly cycles at cut-offs in
the merchant's time zone, T+N, catch-up after a downtime, idempotent reruns, minimum payout
carried forward, the rolling reserve, payouts posted to the ledger, CSV, isolation.

Every test starts its own server with a TestClock at a known instant (cut-offs depend on it), on
SQLite and on PostgreSQL (`both_backends`).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Iterator

import pytest

from apss.clock import TestClock, parse_rfc3339
from tests.conftest import Merchant, RunningServer, wait_for

JOB = "settlement"
# sandbox card fees: 2.9% + 30; default commission 30%. A 1000 USD payment: fee 59, commission 300, net 700.
PRICE = 1000
pytestmark = pytest.mark.both_backends


class Settling:
    """One test's server, with the loop it runs on (to run the job or stop its task from here)."""

    def __init__(self, server: RunningServer, loops: list[asyncio.AbstractEventLoop]) -> None:
        self.server = server
        self._loops = loops

    @property
    def clock(self) -> TestClock:
        return self.server.clock

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loops[0]

    def on_loop(self, make: Callable[[], object]) -> object:
        async def run() -> object:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def move_to(self, when: str) -> None:
        """Move the clock to `when` and wait until the settlement job ran with it."""
        target_ms = parse_rfc3339(when)
        assert target_ms >= self.clock.now_ms(), (when, self.clock.now_ms())
        self.clock.advance(seconds=(target_ms - self.clock.now_ms()) / 1000)
        self.wait_job()

    def wait_job(self) -> None:
        """Wait until a run of the job that started at the clock's present time completed (poked,
        as a move shorter than its interval would not make it due)."""
        now_ms = self.clock.now_ms()
        scheduler = self.server.services.scheduler
        self.loop.call_soon_threadsafe(scheduler.poke, JOB)
        wait_for(lambda: scheduler.completed_as_of_ms(JOB) >= now_ms, timeout_s=20)

    def stop_job(self) -> None:
        """The settlement job stops (its task is cancelled) while the server goes on: a downtime."""
        async def cancel() -> None:
            [task] = [t for t in asyncio.all_tasks() if t.get_name() == f"job:{JOB}"]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.on_loop(cancel)


def _start(db_path, clock: TestClock, env: dict[str, str]) -> Settling:
    server = RunningServer(db_path=db_path, clock=clock, env=env)
    loops: list[asyncio.AbstractEventLoop] = []

    async def capture_loop(app) -> None:
        loops.append(asyncio.get_running_loop())

    server.app.on_startup.append(capture_loop)
    server.start()
    assert loops, "the startup hooks ran"
    return Settling(server, loops)


@pytest.fixture
def start(tmp_path, backend, database_env) -> Iterator[Callable[..., Settling]]:
    started: list[Settling] = []
    databases: dict[str, dict[str, str]] = {}  # db_name -> its server's environment: a restart finds it again

    def make(at: str | None = None, *, clock: TestClock | None = None, db_name: str = "apss.sqlite") -> Settling:
        env = databases.setdefault(db_name, database_env(backend))
        running = _start(tmp_path / db_name, clock or TestClock(parse_rfc3339(at)), env)
        started.append(running)
        return running

    yield make
    for running in started:
        running.server.stop()


def _paid(merchant: Merchant, client, product: dict, player_id: str = "p1") -> dict:
    order = merchant.order(client, product["id"], player_id=player_id).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _batches(client, **params) -> list[dict]:
    response = client.get("/v1/settlements", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["has_more"] is False
    return sorted(body["data"], key=lambda s: s["period_end"])


def _detail(client, settlement_id: str) -> dict:
    response = client.get(f"/v1/settlements/{settlement_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _schedule(client, **body) -> dict:
    response = client.put("/v1/account/settlement_schedule", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_daily_cutoff_in_the_merchant_time_zone(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        first = _paid(merchant, client, product)
        # midnight in Shanghai (UTC+8) is 16:00 UTC, eight hours before midnight UTC
        schedule = _schedule(client, cycle="daily", cutoff_time="00:00", timezone="Asia/Shanghai")
        assert schedule["next_cutoff_at"] == "2026-03-02T16:00:00Z" and schedule["cycle"] == "daily"
        assert client.get("/v1/account/settlement_schedule").json() == schedule
        settling.move_to("2026-03-02T15:59:59Z")
        assert _batches(client) == []
        settling.move_to("2026-03-02T16:00:00Z")
        [batch] = _batches(client)
        assert (batch["period_end"], batch["cutoff_at"], batch["status"], batch["currency"]) == (
            "2026-03-02T16:00:00Z", "2026-03-02T16:00:00Z", "pending", "USD")
        assert {k: batch[k] for k in ("gross", "refunds", "fees", "commission", "partner_shares", "net_payable")} == {
            "gross": 1000, "refunds": 0, "fees": 59, "commission": 300, "partner_shares": 0, "net_payable": 700}
        [line] = _detail(client, batch["id"])["lines"]
        assert line == {"line": 1, "kind": "payment", "reference": first["payment"]["id"], "order_id": first["id"],
                        "channel": "sandbox", "amount": 1000, "fee": 59, "commission": 300, "partner_shares": 0,
                        "net": 700, "occurred_at": "2026-03-02T12:00:00Z"}

        second = _paid(merchant, client, product, player_id="p2")
        refund = client.post(f"/v1/orders/{first['id']}/refunds", json={"amount": 400})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
        settling.move_to("2026-03-03T08:00:00Z")  # past midnight UTC, not yet midnight in Shanghai
        assert len(_batches(client)) == 1
        settling.move_to("2026-03-03T16:00:05Z")
        old, new = _batches(client)
        assert old["id"] == batch["id"]
        assert (new["period_start"], new["period_end"]) == ("2026-03-02T16:00:00Z", "2026-03-03T16:00:00Z")
        assert (new["gross"], new["refunds"], new["commission"], new["net_payable"]) == (1000, 400, 300 - 120, 700 - 280)
        lines = _detail(client, new["id"])["lines"]
        assert [(x["kind"], x["reference"], x["amount"], x["commission"], x["net"]) for x in lines] == [
            ("payment", second["payment"]["id"], 1000, 300, 700),
            ("refund", refund.json()["id"], -400, -120, -280)]


def test_weekly_cycle_on_its_weekday_across_a_dst_change(start):
    settling = start("2026-03-02T10:00:00Z")  # a Monday
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        missing = client.put("/v1/account/settlement_schedule", json={"cycle": "weekly", "timezone": "Europe/Berlin"})
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "weekday_required"
        # Friday 18:00 in Berlin: 17:00 UTC in winter (CET), 16:00 UTC from March 29 (CEST)
        schedule = _schedule(client, cycle="weekly", weekday=4, cutoff_time="18:00", timezone="Europe/Berlin")
        assert schedule["next_cutoff_at"] == "2026-03-06T17:00:00Z"
        _paid(merchant, client, product)
        settling.move_to("2026-03-05T17:00:00Z")  # Thursday 18:00: not the weekday
        assert _batches(client) == []
        settling.move_to("2026-03-06T16:59:00Z")
        assert _batches(client) == []
        settling.move_to("2026-03-06T17:00:01Z")
        [first] = _batches(client)
        assert first["period_end"] == "2026-03-06T17:00:00Z" and first["gross"] == 1000
        settling.move_to("2026-03-13T17:00:01Z")  # a week without activity makes no batch
        assert len(_batches(client)) == 1
        _paid(merchant, client, product, player_id="p2")
        settling.move_to("2026-03-27T17:00:01Z")  # two weekly cut-offs at once
        first_again, second = _batches(client)
        assert first_again == first
        assert (second["period_start"], second["period_end"], second["gross"]) == (
            "2026-03-13T17:00:00Z", "2026-03-20T17:00:00Z", 1000)
        _paid(merchant, client, product, player_id="p3")
        settling.move_to("2026-04-03T15:59:59Z")  # 17:59:59 in Berlin, now in summer time
        assert len(_batches(client)) == 2
        settling.move_to("2026-04-03T16:00:01Z")
        third = _batches(client)[2]
        assert (third["period_start"], third["period_end"], third["gross"]) == (
            "2026-03-27T17:00:00Z", "2026-04-03T16:00:00Z", 1000)
        assert client.get("/v1/account/settlement_schedule").json()["last_cutoff_at"] == "2026-04-03T16:00:00Z"


def test_t_plus_settles_the_activity_of_n_days_before(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="t_plus", t_plus_days=2, cutoff_time="00:00", timezone="UTC")
        _paid(merchant, client, product)
        settling.move_to("2026-03-04T00:00:01Z")  # cut-offs of Mar 3 and 4 cover activity until Mar 1 and 2
        assert _batches(client) == []
        settling.move_to("2026-03-05T00:00:01Z")
        [batch] = _batches(client)
        assert (batch["period_end"], batch["cutoff_at"], batch["gross"]) == ("2026-03-03T00:00:00Z", "2026-03-05T00:00:00Z", 1000)


def test_catch_up_after_a_downtime_makes_every_missed_batch_once_in_order(start, tmp_path):
    clock = TestClock(parse_rfc3339("2026-03-02T12:00:00Z"))
    settling = start(clock=clock)
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC")
        settling.stop_job()
        orders = [_paid(merchant, client, product, player_id="day-1")]
        for day in (3, 4):
            clock.advance(seconds=86_400)
            orders.append(_paid(merchant, client, product, player_id=f"day-{day}"))
        clock.advance(seconds=13 * 3600)  # 2026-03-05T01:00Z: the cut-offs of Mar 3, 4 and 5 are missed
        assert _batches(client) == []
    settling.server.stop()

    restarted = start(clock=clock)  # same database, same clock: the job catches up at start
    restarted.wait_job()
    merchant.server = restarted.server
    with merchant.client() as client:
        batches = _batches(client)
        assert [(b["period_start"], b["period_end"]) for b in batches] == [
            ("2026-03-02T12:00:00Z", "2026-03-03T00:00:00Z"),  # the first batch starts when the merchant did
            ("2026-03-03T00:00:00Z", "2026-03-04T00:00:00Z"), ("2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z")]
        assert [b["id"] for b in batches] == sorted(b["id"] for b in batches), "made in cut-off order"
        assert [[line["order_id"] for line in _detail(client, b["id"])["lines"]] for b in batches] == [[o["id"]] for o in orders]
        # a rerun, twice at once, and a later run make nothing new
        made = restarted.on_loop(lambda: asyncio.gather(restarted.server.services.settlements.run_due(),
                                                        restarted.server.services.settlements.run_due()))
        assert made == [0, 0]
        restarted.move_to("2026-03-05T01:05:00Z")
        assert _batches(client) == batches


def test_idempotent_reruns_make_nothing_twice(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    settlements = settling.server.services.settlements
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC")
        _paid(merchant, client, product)
        settling.clock.advance(seconds=12 * 3600 + 1)
        made = settling.on_loop(lambda: asyncio.gather(*(settlements.run_due() for _ in range(5))))
        batches = _batches(client)
        assert len(batches) == 1 and sum(made) in (0, 1), made  # the scheduler's own run may have made it
        assert settling.on_loop(settlements.run_due) == 0
        settling.move_to("2026-03-03T00:05:00Z")
        assert _batches(client) == batches


def test_below_the_minimum_payout_a_batch_is_carried_into_the_next(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client, settling.server.admin() as admin:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC", minimum_payout={"USD": 1000})
        _paid(merchant, client, product)
        settling.move_to("2026-03-03T00:00:01Z")
        [carried] = _batches(client)
        assert (carried["status"], carried["net_payable"]) == ("carried", 700)
        refused = admin.post(f"/v1/admin/settlements/{carried['id']}/paid", json={"payout_reference": "wire-1"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_state"
        _paid(merchant, client, product, player_id="p2")
        settling.move_to("2026-03-04T00:00:01Z")
        carried, batch = _batches(client)
        assert carried["carried_into"] == batch["id"]
        assert (batch["status"], batch["carried_in"], batch["gross"], batch["net_payable"]) == ("pending", 700, 1000, 1400)
        lines = _detail(client, batch["id"])["lines"]
        assert next((x["kind"], x["reference"], x["net"]) for x in lines) == ("carried", carried["id"], 700)
        assert [x["kind"] for x in lines] == ["carried", "payment"]


def test_rolling_reserve_is_held_then_released(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        bad = client.put("/v1/account/settlement_schedule", json={"cycle": "daily", "reserve_bps": 1000})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "reserve_hold_days_required"
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC", reserve_bps=1000, reserve_hold_days=2)
        _paid(merchant, client, product)
        settling.move_to("2026-03-03T00:00:01Z")
        _paid(merchant, client, product, player_id="p2")
        settling.move_to("2026-03-04T00:00:01Z")
        first, second = _batches(client)
        assert (first["reserve_held"], first["net_payable"], first["reserve_release_at"]) == (100, 600, "2026-03-05T00:00:00Z")
        assert (second["reserve_held"], second["reserve_released"], second["net_payable"]) == (100, 0, 600)
        settling.move_to("2026-03-05T00:00:01Z")  # no activity, but the first hold is due back
        third = _batches(client)[2]
        assert (third["gross"], third["reserve_held"], third["reserve_released"], third["net_payable"]) == (0, 0, 100, 100)
        assert [(x["kind"], x["reference"], x["net"]) for x in _detail(client, third["id"])["lines"]] == [
            ("reserve_release", first["id"], 100)]
        assert _batches(client)[0]["reserve_release_at"] == "2026-03-05T00:00:00Z"
        settling.move_to("2026-03-06T00:00:01Z")
        fourth = _batches(client)[3]
        assert (fourth["reserve_released"], fourth["net_payable"]) == (100, 100)
        settling.move_to("2026-03-08T00:00:01Z")
        assert len(_batches(client)) == 4, "each hold is released once"


def test_mark_paid_posts_the_payout_and_the_ledger_stays_balanced(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client, settling.server.admin() as admin:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC", reserve_bps=500, reserve_hold_days=7)
        _paid(merchant, client, product)
        _paid(merchant, client, product, player_id="p2")
        settling.move_to("2026-03-03T00:00:01Z")
        [batch] = _batches(client)
        assert (batch["gross"], batch["reserve_held"], batch["net_payable"]) == (2000, 100, 1300)
        assert admin.post("/v1/admin/settlements/stl_nope/paid", json={"payout_reference": "x"}).status_code == 404
        assert client.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": "x"}).status_code == 401
        paid = admin.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": "wire-2026-03-03"})
        assert paid.status_code == 200, paid.text
        assert (paid.json()["status"], paid.json()["payout_reference"], paid.json()["paid_at"]) == (
            "paid", "wire-2026-03-03", "2026-03-03T00:00:01Z")
        again = admin.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": "wire-2"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
        check = admin.get("/v1/admin/ledger/check")
        assert check.status_code == 200 and check.json()["ok"] is True, check.text
        balances = {b["account"].rsplit(":", 1)[0]: b["balance"] for b in client.get("/v1/ledger/balances").json()["data"]}
        # what stays payable is the reserve; the provider's clearing went down by the payout
        assert balances["merchant_payable"] == 1400 - 1300
        assert balances["provider_clearing:sandbox"] == 2000 - 2 * 59 - 1300
        assert _detail(client, batch["id"])["status"] == "paid"
        summary = client.get("/v1/reports/summary", params={"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"})
        assert summary.json()["data"][0]["net"] == 1400, "a payout is not earnings"


def test_csv_download_of_the_lines(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC")
        order = _paid(merchant, client, product)
        client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 100})
        settling.move_to("2026-03-03T00:00:01Z")
        [batch] = _batches(client)
        response = client.get(f"/v1/settlements/{batch['id']}/lines.csv")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [(r["kind"], r["order_id"], r["currency"], int(r["amount"]), int(r["net"])) for r in rows] == [
            ("payment", order["id"], "USD", 1000, 700), ("refund", order["id"], "USD", -100, -70)]
        assert response.text.splitlines()[0] == ("settlement_id,line,kind,reference,order_id,channel,currency,amount,fee,"
                                                 "commission,partner_shares,net,occurred_at")
        assert sum(int(r["net"]) for r in rows) == batch["net_payable"]


def test_manual_cycle_settles_on_demand(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        assert client.get("/v1/account/settlement_schedule").json()["cycle"] == "manual"
        product = merchant.product(client, prices={"USD": PRICE})
        _paid(merchant, client, product)
        settling.clock.advance(seconds=60)
        made = client.post("/v1/settlements/run", headers={"Idempotency-Key": "run-1"})
        assert made.status_code == 200, made.text
        [batch] = made.json()["data"]
        assert (batch["period_end"], batch["gross"], batch["status"]) == ("2026-03-02T12:01:00Z", 1000, "pending")
        replay = client.post("/v1/settlements/run", headers={"Idempotency-Key": "run-1"})
        assert replay.headers["idempotent-replayed"] == "true" and replay.json() == made.json()
        settling.clock.advance(seconds=60)
        assert client.post("/v1/settlements/run").json()["data"] == [], "nothing new to settle"
        _schedule(client, cycle="daily")
        not_manual = client.post("/v1/settlements/run")
        assert not_manual.status_code == 409 and not_manual.json()["error"]["code"] == "settlement_cycle_not_manual"
        bad_zone = client.put("/v1/account/settlement_schedule", json={"cycle": "daily", "timezone": "Mars/Olympus"})
        assert bad_zone.status_code == 400 and bad_zone.json()["error"]["code"] == "timezone_unknown"


def test_another_merchants_settlement_is_not_found(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant, other = settling.server.new_merchant(), settling.server.new_merchant("Other")
    with merchant.client() as client, other.client() as other_client:
        product = merchant.product(client, prices={"USD": PRICE})
        _paid(merchant, client, product)
        settling.clock.advance(seconds=1)
        [batch] = client.post("/v1/settlements/run").json()["data"]
        for path in (f"/v1/settlements/{batch['id']}", f"/v1/settlements/{batch['id']}/lines.csv"):
            answer = other_client.get(path)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
        assert _batches(other_client) == []
        assert client.get("/v1/settlements/stl_unknown").status_code == 404


def test_a_batch_emits_settlement_created_to_the_merchants_webhooks(start):
    settling = start("2026-03-02T12:00:00Z")
    merchant = settling.server.new_merchant()
    with merchant.client() as client:
        endpoint = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook", "events": ["settlement.created"]})
        assert endpoint.status_code == 201, endpoint.text
        product = merchant.product(client, prices={"USD": PRICE})
        _schedule(client, cycle="daily", cutoff_time="00:00", timezone="UTC")
        _paid(merchant, client, product)
        settling.move_to("2026-03-03T00:00:01Z")
        assert len(_batches(client)) == 1
        deliveries = client.get(f"/v1/webhook_endpoints/{endpoint.json()['id']}/deliveries").json()["data"]
        assert [d["event_type"] for d in deliveries] == ["settlement.created"]
