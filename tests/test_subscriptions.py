"""Subscriptions through the real server over HTTP, on a real SQLite file, with the scheduler on
a moved test clock: a year of monthly renewals from January 31, retries, hard declines, cancel,
resume, change with proration, an idempotent renewal job, the report and the ledger check."""

from __future__ import annotations

import sqlite3

import pytest

from apss.clock import TestClock, format_rfc3339, parse_rfc3339
from apss.domain.subscriptions import (
    HARD_DECLINE_CODES,
    Billing,
    Interval,
    add_intervals,
    period_bounds_ms,
    prorate,
    retry_at_ms,
)
from tests.conftest import RunningServer, wait_for

pytestmark = pytest.mark.both_backends  # the tests through the server (`srv`)

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


def test_stripes_never_retry_codes_are_hard_and_the_temporary_ones_soft():
    assert {"stolen_card", "lost_card", "pickup_card", "fraudulent", "restricted_card", "security_violation",
            "revocation_of_all_authorizations", "revocation_of_authorization", "stop_payment_order"} <= HARD_DECLINE_CODES
    assert not {"do_not_honor", "generic_decline", "insufficient_funds", "try_again_later", "authentication_required",
                "card_declined"} & HARD_DECLINE_CODES


def test_retries_count_from_the_first_failure():
    assert [retry_at_ms(0, (1, 3, 5), n) for n in range(4)] == [86_400_000, 3 * 86_400_000, 5 * 86_400_000, None]


# -- through the server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend, database_env):
    """A server of the module's own on the test's backend (the tests above it need none)."""
    clock = TestClock(parse_rfc3339(START))
    running = RunningServer(db_path=tmp_path_factory.mktemp("subs") / "apss.sqlite", clock=clock,
                            env={"APSS_SUBSCRIPTIONS_GRACE_S": "3600", **database_env(backend)}).start()
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
    rows = server.raw("SELECT so.kind, so.period_index, o.status, (SELECT count(*) FROM payments p WHERE p.order_id = o.id)"
                      " FROM subscription_orders so JOIN orders o ON o.id = so.order_id WHERE so.subscription_id = ?"
                      " ORDER BY so.period_index, so.kind", (subscription_id,))
    return [tuple(row) for row in rows]


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


def test_a_renewal_declined_twice_succeeds_on_the_second_retry_and_keeps_the_membership(srv):
    import msgspec

    from tests.conftest import free_port
    from tests.test_webhooks import Receiver, _serve

    receiver, port = Receiver(), free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(receiver, port, lifespan="off")
    merchant = srv.new_merchant()
    try:
        url = receiver.route(first=(), then=200)
        with merchant.client() as client:
            assert client.post("/v1/webhook_endpoints", json={"url": url, "events": ["subscription.renewed",
                               "subscription.payment_failed", "subscription.past_due", "subscription.canceled"]}).status_code == 201
            product = plan(merchant, client)
            sub = subscribe(client, product["id"], player="twice", metadata={"sandbox_renewal": "declined:2"})
            period_end = sub["current_period_end"]
            advance_to(srv, period_end)
            due = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "past_due" and s)
            assert due["latest_order"]["payment"]["failure_code"] == "card_declined"
            assert membership(client, "twice"), "kept while past due"
            advance(srv, DAY_S)  # first retry: declined again
            wait_for(lambda: len(orders_of(srv, sub["id"])) == 2 and orders_of(srv, sub["id"])[1][3] == 2)
            assert client.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "past_due"
            assert membership(client, "twice")
            advance(srv, 2 * DAY_S)  # second retry, three days after the first failure: succeeds
            renewed = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "active" and s)
            assert renewed["current_period_start"] == period_end, "the period is the one that ended, not shifted"
            assert membership(client, "twice")[0]["expires_at"] == renewed["current_period_end"]
            assert orders_of(srv, sub["id"])[1] == ("renewal", 1, "fulfilled", 3), "one order, three charges"
            assert events(client, sub["id"])[2:] == ["subscription.payment_failed", "subscription.past_due",
                                                     "subscription.payment_failed", "subscription.renewed"]
            report = client.get("/v1/reports/subscriptions", params={"from": START, "to": "2030-01-01T00:00:00Z"}).json()
            assert report["renewals_recovered"] == 1 and report["revenue_recovered"] == {"USD": 999}
            assert report["active"] == 1 and report["mrr"] == {"USD": 999}
            received = wait_for(lambda: [msgspec.json.decode(r.body) for r in receiver.at(url)] if len(receiver.at(url)) >= 4 else None)
            assert sorted(received, key=lambda e: e["id"])[-1]["type"] == "subscription.renewed"
            assert [e["type"] for e in sorted(received, key=lambda e: e["id"])] == [
                "subscription.payment_failed", "subscription.past_due", "subscription.payment_failed", "subscription.renewed"]
    finally:
        served.should_exit = True
        thread.join(timeout=10)
    ledger_ok(srv)


def test_a_renewal_that_always_declines_is_canceled_after_the_last_retry_and_the_grace(srv):
    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = plan(merchant, client)
        sub = subscribe(client, product["id"], player="broke", metadata={"sandbox_renewal": "declined"})
        advance_to(srv, sub["current_period_end"])
        for days in (1, 2, 2):  # retries 1, 3 and 5 days after the first failure
            assert client.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "past_due"
            assert membership(client, "broke")
            advance(srv, days * DAY_S)
        canceled = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "canceled" and s)
        assert canceled["latest_order"]["status"] == "failed"
        assert orders_of(srv, sub["id"])[1] == ("renewal", 1, "failed", 4), "the first charge and three retries"
        assert membership(client, "broke"), "the grace period (1 h here) still runs"
        advance(srv, 3601)
        assert membership(client, "broke") == []
        cancel_event = client.get(f"/v1/subscriptions/{sub['id']}/events").json()["data"][-1]
        assert (cancel_event["to_status"], cancel_event["cause"]) == ("canceled", "retries_exhausted")
    ledger_ok(srv)


def test_a_hard_decline_is_not_retried(srv):
    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = plan(merchant, client)
        sub = subscribe(client, product["id"], player="stolen", metadata={"sandbox_renewal": "hard_decline"})
        advance_to(srv, sub["current_period_end"])
        canceled = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "canceled" and s)
        assert canceled["latest_order"]["payment"]["failure_code"] == "stolen_card"
        assert orders_of(srv, sub["id"])[1] == ("renewal", 1, "failed", 1)
        assert client.get(f"/v1/subscriptions/{sub['id']}/events").json()["data"][-1]["cause"] == "hard_decline:stolen_card"
        advance(srv, 6 * DAY_S)
        assert orders_of(srv, sub["id"])[1][3] == 1, "never charged again"


def test_cancel_at_period_end_resume_and_cancel_now(srv):
    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = plan(merchant, client)
        sub = subscribe(client, product["id"], player="leaver")
        scheduled = client.post(f"/v1/subscriptions/{sub['id']}/cancel", json={})
        assert scheduled.status_code == 200 and scheduled.json()["cancel_at_period_end"] is True
        assert scheduled.json()["status"] == "active"
        resumed = client.post(f"/v1/subscriptions/{sub['id']}/resume")
        assert resumed.status_code == 200 and resumed.json()["cancel_at_period_end"] is False
        assert client.post(f"/v1/subscriptions/{sub['id']}/resume").status_code == 409
        client.post(f"/v1/subscriptions/{sub['id']}/cancel")
        advance_to(srv, sub["current_period_end"])
        ended = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "canceled" and s)
        assert ended["canceled_at"] is not None and len(orders_of(srv, sub["id"])) == 1, "nothing charged"
        assert membership(client, "leaver") == []
        assert client.post(f"/v1/subscriptions/{sub['id']}/resume").json()["error"]["code"] == "invalid_state"

        now_sub = subscribe(client, product["id"], player="quitter")
        done = client.post(f"/v1/subscriptions/{now_sub['id']}/cancel", json={"at_period_end": False}).json()
        assert done["status"] == "canceled" and membership(client, "quitter") == []
        listed = client.get("/v1/subscriptions", params={"status": "canceled", "limit": 1}).json()
        assert listed["has_more"] is True and listed["data"][0]["id"] == now_sub["id"]
        second = client.get("/v1/subscriptions", params={"status": "canceled", "cursor": listed["next_cursor"]}).json()
        assert [s["id"] for s in second["data"]] == [sub["id"]]
        assert client.get("/v1/subscriptions", params={"player_id": "quitter"}).json()["data"][0]["id"] == now_sub["id"]


def test_change_to_a_dearer_plan_is_prorated_to_the_minor_unit(srv):
    merchant = srv.new_merchant()
    with merchant.client() as client:
        basic, gold = plan(merchant, client, price=999, sku="basic"), plan(merchant, client, price=1999, sku="gold")
        sub = subscribe(client, basic["id"], player="upgrader")
        start, end = parse_rfc3339(sub["current_period_start"]), parse_rfc3339(sub["current_period_end"])
        advance(srv, 7 * DAY_S + 1234)
        now_ms = srv.clock.now_ms()
        changed = client.post(f"/v1/subscriptions/{sub['id']}/change", json={"product_id": gold["id"]})
        assert changed.status_code == 200, changed.text
        body = changed.json()
        remaining = (end - now_ms) / (end - start)
        expected = round(1999 * remaining) - round(999 * remaining)
        assert expected == prorate(old_amount=999, new_amount=1999, period_start_ms=start, period_end_ms=end, now_ms=now_ms).net
        assert body["latest_order"]["amount"] == expected and body["latest_order"]["status"] == "fulfilled"
        assert (body["product_id"], body["amount"]) == (gold["id"], 1999)
        assert {m["sku"] for m in membership(client, "upgrader")} == {"basic", "gold"}
        # a cheaper plan applies at the next renewal, charged at its own price
        down = client.post(f"/v1/subscriptions/{sub['id']}/change", json={"product_id": basic["id"]}).json()
        assert down["product_id"] == gold["id"]
        advance_to(srv, body["current_period_end"])
        renewed = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["product_id"] == basic["id"] and s)
        assert renewed["amount"] == 999 and renewed["latest_order"]["amount"] == 999
    ledger_ok(srv)


def test_renewal_job_run_twice_for_a_period_makes_one_order(srv):
    import asyncio
    import concurrent.futures

    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = plan(merchant, client, interval="day")
        sub = subscribe(client, product["id"], player="daily")
        srv.clock.advance(seconds=DAY_S)
        # The job three times at once on the server's loop, while the scheduler runs it too.
        loop = srv.services.scheduler._tasks[0].get_loop()
        futures = [asyncio.run_coroutine_threadsafe(srv.services.subscriptions.renew_due(), loop) for _ in range(3)]
        done, _ = concurrent.futures.wait(futures, timeout=30)
        assert len(done) == 3 and sum(f.result() for f in done) <= 1
        srv.wait_job("subscriptions")
        wait_for(lambda: client.get(f"/v1/subscriptions/{sub['id']}").json()["current_period_start"] == sub["current_period_end"])
        count = srv.raw("SELECT count(*) FROM orders WHERE subscription_id = ?", (sub["id"],))[0][0]
        periods = srv.raw("SELECT period_index, count(*) FROM subscription_orders WHERE subscription_id = ?"
                          " GROUP BY period_index ORDER BY period_index", (sub["id"],))
        assert count == 2 and [tuple(p) for p in periods] == [(0, 1), (1, 1)]
        if not srv.config.database.postgresql:  # the same UNIQUE on both (tests/postgres/test_schema.py)
            with sqlite3.connect(srv.db_path) as conn:
                row = conn.execute("SELECT * FROM subscription_orders WHERE subscription_id = ? AND period_index = 1",
                                   (sub["id"],)).fetchone()
                with pytest.raises(sqlite3.IntegrityError):  # the database refuses a second order for the period
                    conn.execute("INSERT INTO subscription_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (row[0] + "x", *row[1:]))


def test_a_retry_falls_back_to_the_fallback_channel(srv):
    """Sandbox (saved card) declines; the retry charges it again and, on the decline, turns to the
    fallback channel: Stripe (its stand-in), which holds no saved method for this subscription,
    so the player gets a Checkout Session to pay (`subscription.payment_required`)."""
    from tests.channels.standin_stripe import StripeStandIn
    from tests.test_channels_e2e import _Served

    standin = StripeStandIn(secret_key="sk_test_standin_0123456789", webhook_secret="whsec_standin_0123456789",
                            pi_on_create=True)
    standin.now_s = lambda: srv.clock.now_ms() // 1000
    served = _Served(standin)
    merchant = srv.new_merchant()
    try:
        with merchant.client() as client:
            saved = client.put("/v1/channels/stripe", json={"secret_key": standin.secret_key,
                                                            "webhook_secret": standin.webhook_secret, "api_base": served.url})
            assert saved.status_code == 200, saved.text
            product = plan(merchant, client)
            sub = subscribe(client, product["id"], player="fallback", channel="sandbox", fallback_channel="stripe",
                            metadata={"sandbox_renewal": "declined"})
            assert sub["fallback_channel"] == "stripe"
            advance_to(srv, sub["current_period_end"])
            first = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "past_due" and s)
            assert first["latest_order"]["channel"] == "sandbox", "the first charge of a period is the primary's alone"
            advance(srv, DAY_S)
            retried = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["latest_order"]["channel"]
                               == "stripe" and s)
            assert retried["status"] == "past_due" and retried["latest_order"]["status"] == "pending"
            assert retried["latest_order"]["payment"]["next_action"]["type"] == "redirect"
            attempts = client.get(f"/v1/payments/{retried['latest_order']['payment']['id']}").json()["attempts"]
            assert [(a["channel"], a["operation"], a["outcome"]) for a in attempts] == [
                ("sandbox", "charge_saved_method", "failed"), ("stripe", "create_payment", "succeeded")]
            assert events(client, sub["id"])[-1] == "subscription.payment_required"
    finally:
        served.stop()


# -- Stripe: off-session renewals on the saved Customer and payment method (its stand-in) ------
@pytest.fixture
def on_stripe(srv):
    """A merchant with the Stripe channel pointed at a served stand-in."""
    from tests.channels.standin_stripe import StripeStandIn
    from tests.test_channels_e2e import _Served

    standin = StripeStandIn(secret_key="sk_test_standin_renewals01", webhook_secret="whsec_standin_renewals01")
    standin.now_s = lambda: srv.clock.now_ms() // 1000
    served = _Served(standin)
    merchant = srv.new_merchant()
    with merchant.client() as client:
        saved = client.put("/v1/channels/stripe", json={"secret_key": standin.secret_key,
                                                        "webhook_secret": standin.webhook_secret, "api_base": served.url})
        assert saved.status_code == 200, saved.text
    try:
        yield merchant, standin
    finally:
        served.stop()


def subscribe_on_stripe(srv, merchant, client, standin, *, price: int, player: str) -> dict:
    """The first order through Checkout, which saves the method; paid, and its signed
    checkout.session.completed posted as Stripe would."""
    from urllib.parse import parse_qsl

    import httpx

    product = plan(merchant, client, price=price)
    sub = subscribe(client, product["id"], player=player, channel="stripe", pay=False)
    payment_id = sub["latest_order"]["payment"]["id"]
    [request] = [r for r in standin.requests if r.path == "/v1/checkout/sessions" and payment_id in r.body.decode()]
    form = dict(parse_qsl(request.body.decode()))
    assert form["customer_creation"] == "always" and form["payment_intent_data[setup_future_usage]"] == "off_session"
    session_id = next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == payment_id)
    standin.pay(session_id)
    event = standin.signed_event("checkout.session.completed", standin.public_session(session_id),
                                now_s=srv.clock.now_ms() // 1000)  # the server checks signatures on its clock
    answer = httpx.post(f"{srv.base_url}/v1/channels/stripe/webhook/{merchant.id}", content=event.body, headers=event.headers)
    assert answer.status_code == 200, answer.text
    return wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "active" and s)


def test_a_stripe_renewal_charges_the_saved_customer_and_method_off_session(srv, on_stripe):
    merchant, standin = on_stripe
    with merchant.client() as client:
        sub = subscribe_on_stripe(srv, merchant, client, standin, price=999, player="stripe-monthly")
        session = next(iter(standin.sessions.values()))
        intent = standin.intents[session["payment_intent"]]
        advance_to(srv, sub["current_period_end"])
        renewed = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["current_period_start"]
                           == sub["current_period_end"] and s)
        assert renewed["status"] == "active" and renewed["latest_order"]["status"] == "fulfilled"
        [charge] = standin.off_session_calls()
        assert {k: charge[k] for k in ("amount", "currency", "customer", "payment_method", "off_session", "confirm")} == {
            "amount": "999", "currency": "usd", "customer": session["customer"], "payment_method": intent["payment_method"],
            "off_session": "true", "confirm": "true"}
        payment = renewed["latest_order"]["payment"]
        assert charge["metadata[apss_payment_id]"] == payment["id"]
        [call] = [r for r in standin.requests if r.path == "/v1/payment_intents" and r.method == "POST"]
        assert call.headers["idempotency-key"] == payment["id"]
        attempts = client.get(f"/v1/payments/{payment['id']}").json()["attempts"]
        assert [(a["channel"], a["operation"], a["outcome"]) for a in attempts] == [("stripe", "charge_saved_method", "succeeded")]
    ledger_ok(srv)


def test_a_stripe_hard_decline_is_not_retried_and_cancels(srv, on_stripe):
    merchant, standin = on_stripe
    with merchant.client() as client:
        sub = subscribe_on_stripe(srv, merchant, client, standin, price=4041, player="stripe-stolen")  # the stand-in's stolen card
        advance_to(srv, sub["current_period_end"])
        canceled = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "canceled" and s)
        assert canceled["latest_order"]["payment"]["failure_code"] == "stolen_card"
        assert client.get(f"/v1/subscriptions/{sub['id']}/events").json()["data"][-1]["cause"] == "hard_decline:stolen_card"
        advance(srv, 6 * DAY_S)
        assert len(standin.off_session_calls()) == 1, "never charged again"


def test_a_stripe_soft_decline_is_retried_on_schedule(srv, on_stripe):
    merchant, standin = on_stripe
    with merchant.client() as client:
        sub = subscribe_on_stripe(srv, merchant, client, standin, price=4002, player="stripe-broke")  # insufficient_funds
        advance_to(srv, sub["current_period_end"])
        due = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "past_due" and s)
        assert due["latest_order"]["payment"]["failure_code"] == "insufficient_funds"
        assert len(standin.off_session_calls()) == 1
        advance(srv, DAY_S - 60)
        assert len(standin.off_session_calls()) == 1, "not before the first retry is due"
        advance(srv, 60)
        wait_for(lambda: len(standin.off_session_calls()) == 2)
        first, second = [r.headers["idempotency-key"] for r in standin.requests if r.path == "/v1/payment_intents"]
        assert first != second, "each retry is a new payment, so a new idempotency key"
        assert client.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "past_due"


def test_a_renewal_the_janitor_finds_failed_is_retried_not_canceled(srv, on_stripe):
    """The renewal's answer is lost (outcome unknown); the janitor later finds Stripe declined it:
    a soft failure like any decline (past_due, retry on schedule), not the end of the subscription."""
    merchant, standin = on_stripe
    with merchant.client() as client:
        sub = subscribe_on_stripe(srv, merchant, client, standin, price=4002, player="stripe-lost")  # insufficient_funds
        standin.lose_answers = 1
        advance_to(srv, sub["current_period_end"])
        wait_for(lambda: len(standin.off_session_calls()) == 1)
        unknown = client.get(f"/v1/subscriptions/{sub['id']}").json()
        assert unknown["status"] == "active" and unknown["latest_order"]["payment"]["status"] == "unknown"
        advance(srv, 301)  # the janitor's first look, five minutes after the charge
        srv.wait_job("payment_janitor")
        advance(srv, 60)
        due = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "past_due" and s)
        assert due["latest_order"]["status"] == "pending"
        assert due["latest_order"]["payment"]["failure_code"] == "insufficient_funds"
        assert membership(client, "stripe-lost"), "kept while past due"
        advance(srv, DAY_S)
        wait_for(lambda: len(standin.off_session_calls()) == 2)
        assert client.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "past_due"


def test_a_renewal_checkout_refuses_is_a_failed_attempt_with_one_alert(srv):
    """The plan sold out: the period's order cannot be opened. Past due on the retry schedule (not
    tried at every run), one alert for the period, and renewed once stock is back."""
    merchant = srv.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, category="membership", prices={"USD": 999}, billing={"interval": "month"}, stock=1)
        sub = subscribe(client, product["id"], player="sold-out")
        advance_to(srv, sub["current_period_end"])
        due = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "past_due" and s)
        assert len(orders_of(srv, sub["id"])) == 1, "no order could be opened"
        assert events(client, sub["id"])[-2:] == ["subscription.payment_failed", "subscription.past_due"]
        assert client.get(f"/v1/subscriptions/{sub['id']}/events").json()["data"][-1]["cause"] == "renewal_refused:out_of_stock"
        for _ in range(3):  # runs before the first retry is due change nothing
            advance(srv, 60)
        assert events(client, sub["id"])[-1] == "subscription.past_due"
        advance(srv, DAY_S)  # the first retry: still sold out
        wait_for(lambda: events(client, sub["id"])[-1] == "subscription.payment_failed")
        alerts = client.get("/v1/alerts", params={"kind": "subscription_renewal_refused"}).json()["data"]
        assert [a["object_id"] for a in alerts] == [sub["id"]], "one alert for the period"
        assert membership(client, "sold-out"), "kept while past due"
        assert client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": 1}).status_code == 200
        advance(srv, 2 * DAY_S)  # the second retry: stock is back
        renewed = wait_for(lambda: (s := client.get(f"/v1/subscriptions/{sub['id']}").json())["status"] == "active" and s)
        assert renewed["current_period_start"] == due["current_period_end"] == sub["current_period_end"] and renewed["latest_order"]["status"] == "fulfilled"
    ledger_ok(srv)
