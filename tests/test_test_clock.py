"""The test clock (config clock.mode = "test"), through the real server over HTTP: the admin
endpoints, what an advance runs and when, the stored time across a restart, and the refusals of
live money. The servers here run on the real wall clock (SystemClock): the test clock is the
server's own, loaded from and stored in its database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from apss.channels.sandbox import SIGNATURE_HEADER, build_event, sign_callback
from apss.clock import SystemClock, TestClock, format_rfc3339, parse_rfc3339
from apss.domain.payments import CallbackKind
from apss.ids import new_id
from apss.jobs.scheduler import Scheduler
from tests.conftest import ADMIN_TOKEN, RunningServer, assert_error, free_port

ADVANCE_MAX_S = 10 * 86_400
TEST_MODE = {"APSS_CLOCK_MODE": "test", "APSS_CLOCK_ADVANCE_MAX_S": str(ADVANCE_MAX_S)}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clock_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("test_clock") / "apss.sqlite", clock=SystemClock(),
                            env=TEST_MODE).start()
    yield running
    running.stop()


def _now_ms(admin: httpx.Client) -> int:
    return parse_rfc3339(admin.get("/v1/admin/clock").json()["now"])


def _advance(admin: httpx.Client, **body) -> dict:
    response = admin.post("/v1/admin/clock/advance", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_clock_shows_and_advances_by_seconds_or_to_a_time(clock_server):
    with clock_server.admin() as admin:
        shown = admin.get("/v1/admin/clock")
        assert shown.status_code == 200 and set(shown.json()) == {"mode", "now"}
        assert shown.json()["mode"] == "test" and shown.json()["now"].endswith("Z")
        before_ms = parse_rfc3339(shown.json()["now"])
        assert _advance(admin, seconds=90) == {"mode": "test", "now": format_rfc3339(before_ms + 90_000)}
        target = format_rfc3339(before_ms + 90_000 + 3_600_000)
        assert _advance(admin, to=target) == {"mode": "test", "now": target}
        assert _advance(admin, seconds=0)["now"] == target, "a no-op advance runs what is due and stays"
        assert admin.get("/v1/admin/clock").json() == {"mode": "test", "now": target}
        assert_error(admin.post("/v1/admin/clock/advance", json={"seconds": 5, "to": target}), 400,
                     "invalid_request_error", "invalid_request")
        assert_error(admin.post("/v1/admin/clock/advance", json={}), 400, "invalid_request_error", "invalid_request")
        assert_error(admin.post("/v1/admin/clock/advance", json={"to": "tomorrow"}), 400, "invalid_request_error",
                     "invalid_request", param="to")
        assert admin.get("/v1/admin/clock").json()["now"] == target
    merchant = clock_server.new_merchant()
    with merchant.client() as client:
        assert client.post("/v1/admin/clock/advance", json={"seconds": 60}).status_code == 401
        assert client.get("/v1/admin/clock").status_code == 401


def test_a_target_in_the_past_is_clock_backwards_and_moves_nothing(clock_server):
    with clock_server.admin() as admin:
        now_ms = _now_ms(admin)
        assert_error(admin.post("/v1/admin/clock/advance", json={"seconds": -1}), 400, "invalid_request_error",
                     "clock_backwards", param="seconds")
        assert_error(admin.post("/v1/admin/clock/advance", json={"to": format_rfc3339(now_ms - 3_600_000)}), 400,
                     "invalid_request_error", "clock_backwards", param="to")
        assert _now_ms(admin) == now_ms


def test_an_advance_beyond_advance_max_s_is_refused_and_moves_nothing(clock_server):
    with clock_server.admin() as admin:
        now_ms = _now_ms(admin)
        assert_error(admin.post("/v1/admin/clock/advance", json={"seconds": ADVANCE_MAX_S + 1}), 400,
                     "invalid_request_error", "clock_advance_too_far", param="seconds")
        too_far = format_rfc3339(now_ms + (ADVANCE_MAX_S + 1) * 1000)
        assert_error(admin.post("/v1/admin/clock/advance", json={"to": too_far}), 400, "invalid_request_error",
                     "clock_advance_too_far", param="to")
        assert _now_ms(admin) == now_ms


def test_the_system_clock_does_not_advance(server):
    with server.admin() as admin:
        assert admin.get("/v1/admin/clock").json()["mode"] == "system"
        assert_error(admin.post("/v1/admin/clock/advance", json={"seconds": 60}), 409, "conflict_error",
                     "clock_not_test")


def test_an_order_expires_at_its_expiry_time_during_an_advance(clock_server):
    merchant = clock_server.new_merchant()
    with merchant.client() as client, clock_server.admin() as admin:
        product = merchant.product(client, stock=5)
        order = merchant.order(client, product["id"], quantity=3).json()
        assert order["status"] == "pending"
        held = client.get(f"/v1/products/{product['id']}").json()
        assert (held["stock"], held["reserved"]) == (2, 3)
        moved = _advance(admin, seconds=3600)
        # Answered once the expiry job has run: no waiting here.
        expired = client.get(f"/v1/orders/{order['id']}").json()
        assert expired["status"] == "expired" and expired["payment"]["status"] == "canceled"
        released = client.get(f"/v1/products/{product['id']}").json()
        assert (released["stock"], released["reserved"], released["sold"]) == (5, 0, 0)
        last = client.get(f"/v1/orders/{order['id']}/events").json()["data"][-1]
        assert (last["from_status"], last["to_status"], last["cause"]) == ("pending", "expired", "expiry")
        assert last["created_at"] == order["expires_at"], "expired at its expiry time, not at the target"
        assert last["created_at"] != moved["now"]


def test_a_delayed_sandbox_callback_is_applied_before_the_advance_answers(clock_server):
    merchant = clock_server.new_merchant()
    with merchant.client() as client, clock_server.admin() as admin:
        _advance(admin, seconds=86_400)  # the test clock a day ahead of the wall clock the callbacks are signed with
        product = merchant.product(client, stock=2)
        order = merchant.order(client, product["id"], metadata={"sandbox_outcome": "delay_callback:120"}).json()
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending", "its callback is due in 120 s"
        _advance(admin, seconds=600)
        paid = client.get(f"/v1/orders/{order['id']}").json()
        assert paid["status"] == "fulfilled" and paid["payment"]["status"] == "succeeded"
        causes = [e["cause"] for e in client.get(f"/v1/orders/{order['id']}/events").json()["data"]]
        assert causes[1].startswith("callback:evt_"), causes
        stock = client.get(f"/v1/products/{product['id']}").json()
        assert (stock["stock"], stock["reserved"], stock["sold"]) == (1, 0, 1)


def test_callback_signatures_are_checked_against_the_wall_clock(clock_server):
    merchant = clock_server.new_merchant()
    with merchant.client() as client, clock_server.admin() as admin:
        _advance(admin, seconds=2 * 86_400)
        secret = client.get("/v1/account").json()["sandbox_webhook_secret"]
        product = merchant.product(client)
        order = merchant.order(client, product["id"]).json()
        payment = order["payment"]
        url = f"{clock_server.base_url}/v1/channels/sandbox/webhook/{merchant.id}"

        def post(*, signed_s: int) -> httpx.Response:
            body = build_event(event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED, created_s=signed_s,
                               payment_id=payment["id"], amount=order["amount"], currency=order["currency"],
                               provider_ref=payment["next_action"]["url"].rsplit("/", 1)[1])
            headers = {SIGNATURE_HEADER: sign_callback(secret=secret, body=body, now_s=signed_s),
                       "Content-Type": "application/json"}
            return httpx.post(url, content=body, headers=headers)

        # A stand-in signing with the test clock's time is two days off the wall clock: refused.
        assert_error(post(signed_s=_now_ms(admin) // 1000), 400, "invalid_request_error", "callback_signature_invalid")
        assert post(signed_s=int(time.time())).status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"


def test_live_merchants_are_unavailable_in_test_mode(clock_server):
    with clock_server.admin() as admin:
        assert_error(admin.post("/v1/merchants", json={"name": "Live Studio", "mode": "live"}), 409, "conflict_error",
                     "live_mode_unavailable", param="mode")
        assert admin.post("/v1/merchants", json={"name": "Test Studio", "mode": "test"}).status_code == 201


def test_a_restart_continues_from_the_stored_time(tmp_path):
    db_path = tmp_path / "apss.sqlite"
    first = RunningServer(db_path=db_path, clock=SystemClock(), env=TEST_MODE).start()
    try:
        with first.admin() as admin:
            advanced = _advance(admin, seconds=5 * 86_400)["now"]
    finally:
        first.stop()
    second = RunningServer(db_path=db_path, clock=SystemClock(), env=TEST_MODE).start()
    try:
        with second.admin() as admin:
            assert admin.get("/v1/admin/clock").json() == {"mode": "test", "now": advanced}
    finally:
        second.stop()


def test_the_server_refuses_test_mode_on_a_database_holding_a_live_merchant(tmp_path):
    db_path = tmp_path / "apss.sqlite"
    system = RunningServer(db_path=db_path, clock=SystemClock()).start()
    try:
        live = system.new_merchant(name="Live Studio", mode="live")
        assert live.key.startswith("sk_live_")
    finally:
        system.stop()
    env = {**os.environ, **TEST_MODE, "APSS_DATABASE_PATH": str(db_path), "APSS_SERVER_PORT": str(free_port()),
           "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", "APSS_CONFIG": "/nonexistent-config.toml"}
    # A server that started anyway would never exit: the timeout fails the test then.
    started = subprocess.run([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode == 2, (started.returncode, started.stdout, started.stderr)
    assert "1 live merchant" in started.stderr and "clock.mode" in started.stderr, started.stderr
    assert "APSS listening" not in started.stdout


def test_the_wall_clock_of_a_system_mode_server_is_unchanged(server):
    """In system mode the clock given to the app is the one it runs on (tests move it by hand)."""
    with server.admin() as admin:
        shown = admin.get("/v1/admin/clock").json()
    assert shown == {"mode": "system", "now": format_rfc3339(server.clock.now_ms())}


def test_the_step_rule_runs_data_due_jobs_at_their_times_and_coalesces_the_others():
    """A year with a 1 s job takes hourly steps, not 31 million; a job whose data says when it has
    work runs at exactly those times; a job left out of advances does not run in them."""
    year_ms, hour_ms = 365 * 86_400_000, 3_600_000
    clock = TestClock(start_ms=1_000_000_000_000)
    start_ms = clock.now_ms()
    scheduler = Scheduler(clock=clock, tick_ms=1000)
    due_times = [start_ms + 900_500, start_ms + 900_700, start_ms + 40 * 86_400_000 + 1]
    seen: dict[str, list[int]] = {"busy": [], "expiry": [], "outbound": []}

    def job(name: str):
        async def run() -> None:
            seen[name].append(clock.now_ms())
            while name == "expiry" and due_times and due_times[0] <= clock.now_ms():
                due_times.pop(0)
        return run

    async def next_due() -> int | None:
        return due_times[0] if due_times else None

    scheduler.add("busy", interval_s=1.0, fn=job("busy"))
    scheduler.add("expiry", interval_s=0.1, fn=job("expiry"), due_ms=next_due)
    scheduler.add("outbound", interval_s=1.0, fn=job("outbound"), stepped=False)
    steps = asyncio.run(scheduler.step_until(start_ms + year_ms, move=clock.advance_to, step_ms=hour_ms))
    assert clock.now_ms() == start_ms + year_ms
    assert steps <= year_ms // hour_ms + 5, steps
    assert seen["expiry"] == [start_ms + 900_500, start_ms + 900_700, start_ms + 40 * 86_400_000 + 1, start_ms + year_ms]
    busy = seen["busy"]
    assert busy[0] == start_ms and busy[-1] == start_ms + year_ms
    assert all(t % hour_ms == 0 for t in busy[1:-1]), "between the start and the target: once per hour of the clock"
    assert busy == sorted(set(busy))
    assert len(busy) <= year_ms // hour_ms + 2
    assert seen["outbound"] == []
