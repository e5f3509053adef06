"""The seams where a write transaction meets a provider (issue "Money-safe seams"): each test
here failed on the code before the fix, for the reason its name gives, through the real server."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading

import httpx
import pytest

from apss.channels.base import (
    CallbackReply,
    NextAction,
    PaymentCreated,
    RefundResult,
    flow_not_supported,
)
from apss.channels.sandbox import (
    SIGNATURE_HEADER,
    SandboxChannel,
    build_event,
    sign_callback,
)
from apss.channels.sandbox.mapping import SandboxDisputeData
from apss.clock import TestClock, format_rfc3339
from apss.domain.payments import CallbackKind, PaymentStatus
from apss.ids import new_id
from tests.channels.harness_sandbox import MemoryBook
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request
from tests.conftest import RunningServer, assert_error, assert_ledger_ok, wait_for
from tests.test_channels_e2e import _Served

pytestmark = pytest.mark.both_backends

SECRET_KEY, WEBHOOK_SECRET = "sk_test_standin_seams_0123", "whsec_standin_seams_0123"


# -- stand-ins and helpers -------------------------------------------------------------------------
class _Altered:
    """Wraps a provider stand-in: holds back or replaces its answer to one request, after the
    stand-in has done the work (a provider that answers slowly, or with a 500 after acting)."""

    def __init__(self, inner, *, method: str, path: str) -> None:
        self.inner, self.method, self.path = inner, method, path
        self.hold = False  # hold the answer until `release` is set
        self.replace_status: int | None = None  # answer this status instead, once
        self.holding, self.release = threading.Event(), threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) != (self.method, self.path):
            return await self.inner(scope, receive, send)
        messages: list[dict] = []

        async def keep(message: dict) -> None:
            messages.append(message)

        await self.inner(scope, receive, keep)
        if self.hold:
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        if self.replace_status is not None:
            status, self.replace_status = self.replace_status, None
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error":{"type":"api_error","message":"stand-in"}}'})
            return
        for message in messages:
            await send(message)


@pytest.fixture
def stripe(server):
    # Stripe's clock is the server's: the TestClock other tests moved is the time it sends expiries in.
    standin = StripeStandIn(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET,
                            now_s=lambda: server.clock.now_ms() // 1000)
    altered_sessions = _Altered(standin, method="POST", path="/v1/checkout/sessions")
    altered = _Altered(altered_sessions, method="POST", path="/v1/refunds")
    served = _Served(altered)
    yield standin, served.url, altered_sessions, altered
    altered_sessions.release.set()
    served.stop()


@pytest.fixture(scope="module")
def seams_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("seams") / "apss.sqlite", clock=TestClock(), env={
        "APSS_CHANNELS_JANITOR_INTERVAL_S": "1"})
    running.services.channels.registry.register(_BoomChannel())
    running.services.channels.registry.register(_StuckChannel())
    running.services.channels.registry.register(_PendingRefundChannel(running.config.public_url))
    running.start()
    yield running
    _StuckChannel.release.set()
    running.stop()


def _stripe_merchant(server, url):
    merchant = server.new_merchant()
    with merchant.client() as client:
        saved = client.put("/v1/channels/stripe", json={"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET,
                                                         "api_base": url})
        assert saved.status_code == 200, saved.text
    return merchant


def _post_stripe(server, merchant_id, event_type, obj):
    event = signed_callback_request(event_type, obj, secret=WEBHOOK_SECRET, now_s=server.clock.now_ms() // 1000)
    answer = httpx.post(f"{server.base_url}/v1/channels/stripe/webhook/{merchant_id}", content=event.body, headers=event.headers)
    assert answer.status_code == 200, answer.text
    return event


def _session_of(standin, payment_id):
    return next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == payment_id)


def _sandbox_callback(server, merchant, *, event_id, kind, payment_id, amount, provider_ref="sbx_x", channel="sandbox",
                      refund_id=None, dispute=None):
    with merchant.client() as client:
        secret = client.get("/v1/account").json()["sandbox_webhook_secret"]
    now_s = server.clock.now_ms() // 1000
    body = build_event(event_id=event_id, kind=kind, created_s=now_s, payment_id=payment_id, amount=amount,
                       currency="USD", provider_ref=provider_ref, refund_id=refund_id, dispute=dispute)
    return httpx.post(f"{server.base_url}/v1/channels/{channel}/webhook/{merchant.id}", content=body,
                      headers={SIGNATURE_HEADER: sign_callback(secret=secret, body=body, now_s=now_s),
                               "Content-Type": "application/json"})


class _BoomChannel:
    """A channel whose adapter fails in a way no adapter maps (a bug, an odd provider answer)."""

    name, test_only, settings = "boom", True, {}

    async def create_payment(self, request, credentials):
        raise RuntimeError("the provider answered a session id we cannot read")

    async def verify_callback(self, request, credentials):
        return []

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        return CallbackReply(status_code=200)


class _PendingRefundChannel:
    """The sandbox under another name, whose refunds stay pending at the provider for a while."""

    name, test_only, settings = "slowrefund", True, {}

    def __init__(self, public_url: str) -> None:
        self._sandbox = SandboxChannel(public_url=public_url, book=MemoryBook())

    async def create_payment(self, request, credentials):
        return await self._sandbox.create_payment(request, credentials)

    async def verify_callback(self, request, credentials):
        return await self._sandbox.verify_callback(request, credentials)

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        return self._sandbox.callback_reply(accepted=accepted)

    async def refund(self, request, credentials):
        return RefundResult(provider_refund_ref=f"slow_{request.refund_id}", status="pending")

    async def capture_payment(self, query, credentials):  # the older, single Protocol wanted every method
        raise flow_not_supported(self.name, "captures")

    async def query_payment(self, query, credentials):
        raise flow_not_supported(self.name, "queries")

    def parse_statement(self, data):
        raise flow_not_supported(self.name, "statements")


class _StuckChannel(_BoomChannel):
    """A channel whose provider call never comes back while the test holds it."""

    name = "stuck"
    release = threading.Event()

    async def create_payment(self, request, credentials):
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return PaymentCreated(provider_ref=f"stk_{request.payment_id}", status=PaymentStatus.REQUIRES_ACTION,
                              next_action=NextAction(type="redirect", url="https://stuck.example.test/pay"))


# -- 1. de-duplication per merchant, unguessable synthetic ids ------------------------------------
def test_an_event_posted_first_to_another_merchants_route_is_still_applied_for_its_own(server, stripe):
    standin, url, _, _ = stripe
    alice, bob = _stripe_merchant(server, url), _stripe_merchant(server, url)  # one Stripe account, two merchants
    with alice.client() as client:
        product = alice.product(client)
        order = alice.order(client, product["id"], player_id="shared-1", channel="stripe").json()
        intent = standin.pay(_session_of(standin, order["payment"]["id"]))
        event = signed_callback_request("payment_intent.succeeded", intent, secret=WEBHOOK_SECRET,
                                        now_s=server.clock.now_ms() // 1000)
        for merchant in (bob, alice):  # Stripe delivers every event to every endpoint of the account
            answer = httpx.post(f"{server.base_url}/v1/channels/stripe/webhook/{merchant.id}", content=event.body,
                                headers=event.headers)
            assert answer.status_code == 200, answer.text
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
    with bob.client() as client:
        assert client.get("/v1/alerts", params={"kind": "callback_unmatched"}).json()["data"], "unmatched for bob"
    assert_ledger_ok(server)


def test_a_guessed_janitor_event_id_cannot_stop_the_janitor(seams_server):
    server = seams_server
    alice, mallory = server.new_merchant(), server.new_merchant()
    with alice.client() as client:
        product = alice.product(client, stock=1)
        order = alice.order(client, product["id"], player_id="victim", metadata={"sandbox_outcome": "lost_callback"}).json()
        payment_id = order["payment"]["id"]
        assert client.post(f"/v1/sandbox/payments/{payment_id}/succeed").status_code == 202
        # Mallory knows the payment id and posts, to her own route with her own secret, every id
        # the janitor could make from it.
        for n in range(3):
            answer = _sandbox_callback(server, mallory, event_id=f"query:{payment_id}:{n}", kind=CallbackKind.PAYMENT_SUCCEEDED,
                                       payment_id=payment_id, amount=order["amount"])
            assert answer.status_code == 200, answer.text
        server.clock.advance(seconds=server.config.channels.janitor_schedule_s[0] + 1)
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
    assert_ledger_ok(server)


def test_the_janitor_alerts_when_its_answer_was_not_applied(seams_server, monkeypatch):
    server = seams_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="unapplied", metadata={"sandbox_outcome": "lost_callback"}).json()
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        events = server.services.janitor._events
        monkeypatch.setattr(events, "apply_event", lambda tx, channel, merchant_id, event: "duplicate")
        server.clock.advance(seconds=server.config.channels.janitor_schedule_s[0] + 1)
        alerts = wait_for(lambda: client.get("/v1/alerts", params={"kind": "janitor_result_not_applied"}).json()["data"])
        assert alerts[0]["object_id"] == order["payment"]["id"] and alerts[0]["severity"] == "critical"


# -- 2. every provider id a payment acquires -----------------------------------------------------
def test_a_stripe_dispute_on_a_checkout_session_payment_is_applied(server, stripe):
    standin, url, _, _ = stripe
    merchant = _stripe_merchant(server, url)
    with merchant.client() as client:
        product = merchant.product(client, category="currency_pack", grants=[{"type": "currency", "currency": "GEMS", "amount": 50}])
        order = merchant.order(client, product["id"], player_id="disputer", channel="stripe").json()
        session_id = _session_of(standin, order["payment"]["id"])
        intent = standin.pay(session_id)
        _post_stripe(server, merchant.id, "checkout.session.completed", standin.public_session(session_id))
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        dispute = {"id": "dp_seams1", "object": "dispute", "amount": intent["amount"], "currency": intent["currency"],
                   "charge": intent["latest_charge"], "payment_intent": intent["id"], "reason": "fraudulent",
                   "status": "needs_response", "created": server.clock.now_ms() // 1000}
        _post_stripe(server, merchant.id, "charge.dispute.created", dispute)
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded", "the chargeback was applied"
        refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
        assert [(r["reason"], r["amount"], r["status"]) for r in refunds] == [("chargeback", order["amount"], "succeeded")]
        assert client.get("/v1/players/disputer/wallet").json()["balances"] == {"GEMS": 0}, "goods taken back"
        payment = client.get(f"/v1/payments/{order['payment']['id']}").json()
        assert {session_id, intent["id"]} <= set(payment["provider_refs"])
    assert_ledger_ok(server)


# -- 3. statuses never go backwards ------------------------------------------------------------------
def test_a_callback_between_the_two_order_transactions_is_not_overwritten(server, stripe):
    standin, url, sessions, _ = stripe
    merchant = _stripe_merchant(server, url)
    sessions.hold = True  # Stripe makes the session, and its answer to us is slow
    with merchant.client() as client:
        product = merchant.product(client, stock=5)
        result: dict = {}
        creating = threading.Thread(target=lambda: result.update(
            order=merchant.order(client, product["id"], player_id="racer", channel="stripe")))
        creating.start()
        assert sessions.holding.wait(10)
        session_id = next(iter(standin.sessions))
        payment_id = standin.sessions[session_id]["metadata"]["apss_payment_id"]
        intent = standin.pay(session_id)  # the payer was quicker than Stripe's answer to us
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        sessions.release.set()
        creating.join(15)
        assert result["order"].status_code == 201, result["order"].text
        order = result["order"].json()
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        assert client.get(f"/v1/payments/{payment_id}").json()["status"] == "succeeded", "never back to requires_action"
        server.clock.advance(seconds=server.config.channels.janitor_schedule_s[-1] + 1)
        server.wait_job("payment_janitor")
        assert client.get("/v1/alerts", params={"kind": "late_payment_out_of_stock"}).json()["data"] == []


@pytest.mark.sqlite_only  # writes the SQLite file; tests/postgres/test_schema.py compares PostgreSQL's CHECKs
def test_statuses_are_checked_by_the_database(server):
    merchant = server.new_merchant()
    with merchant.client() as client:
        order = merchant.order(client, merchant.product(client)["id"]).json()
    conn = sqlite3.connect(server.db_path)
    try:
        for sql, value in (("UPDATE orders SET status = ? WHERE id = ?", order["id"]),
                           ("UPDATE payments SET status = ? WHERE id = ?", order["payment"]["id"])):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute(sql, ("bogus", value))
    finally:
        conn.close()


# -- 4. no idempotency key left running ----------------------------------------------------------------
def test_an_unmapped_channel_exception_is_an_attempt_not_a_stuck_key(seams_server):
    merchant = seams_server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=3)
        key = {"Idempotency-Key": "boom-1"}
        body = {"player_id": "boomer", "currency": "USD", "channel": "boom",
                "items": [{"product_id": product["id"], "quantity": 1}]}
        first = client.post("/v1/orders", json=body, headers=key)
        assert first.status_code == 201, first.text
        again = client.post("/v1/orders", json=body, headers=key)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        payment = client.get(f"/v1/payments/{first.json()['payment']['id']}").json()
        assert [(a["channel"], a["outcome"], a["error_code"]) for a in payment["attempts"]] == [
            ("boom", "unknown", "provider_error")]


def test_a_request_stuck_between_its_transactions_is_completed(seams_server):
    server = seams_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        body = {"player_id": "stuck", "currency": "USD", "channel": "stuck",
                "items": [{"product_id": product["id"], "quantity": 1}]}
        headers = {**merchant.headers, "Idempotency-Key": "stuck-1"}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up; the request stays out at the provider
            httpx.post(f"{server.base_url}/v1/orders", json=body, headers=headers, timeout=0.5)
        in_use = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "stuck-1"})
        assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "idempotency_key_in_use"
        # (the code before the completer had no such key: it waited for the next start)
        server.clock.advance(seconds=getattr(server.config.orders, "idempotency_running_max_s", 60) + 11)
        replay = wait_for(lambda: (r := client.post("/v1/orders", json=body, headers={"Idempotency-Key": "stuck-1"}))
                          .status_code == 201 and r)
        order = replay.json()
        assert order["status"] == "failed" and replay.headers["idempotent-replayed"] == "true"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 1, "the reservation was released"
        _StuckChannel.release.set()  # the provider answers at last: the stored answer stands
        wait_for(lambda: any(a["channel"] == "stuck" for a in
                             client.get(f"/v1/payments/{order['payment']['id']}").json()["attempts"]))
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "failed"
        again = client.post("/v1/orders", json=body, headers={"Idempotency-Key": "stuck-1"})
        assert again.json()["id"] == order["id"], "a retry never makes a second order"
    assert_ledger_ok(server)


# -- 5. a refund the provider may have executed is not booked failed -------------------------------
def test_a_refund_answered_with_a_500_stays_pending_and_its_success_is_booked(server, stripe):
    standin, url, _, refunds = stripe
    merchant = _stripe_merchant(server, url)
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="refund-500", channel="stripe").json()
        intent = standin.pay(_session_of(standin, order["payment"]["id"]))
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        refunds.replace_status = 500  # Stripe refunds, then answers 500
        created = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "pending", "unknown outcome: never booked failed"
        [stripe_refund] = standin.refunds.values()
        _post_stripe(server, merchant.id, "refund.updated", stripe_refund)
        assert client.get(f"/v1/refunds/{created.json()['id']}").json()["status"] == "succeeded"
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        again = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert again.status_code == 409, "the amount cannot be refunded twice"
    assert_ledger_ok(server)


# -- 6. chargebacks as the provider reports them -----------------------------------------------------
def test_a_chargeback_is_not_reduced_by_pending_refunds(seams_server):
    server = seams_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="cb-pending", channel="slowrefund").json()
        payment_id = order["payment"]["id"]
        paid = _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED,
                                 payment_id=payment_id, amount=order["amount"], channel="slowrefund")
        assert paid.status_code == 200 and client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        pending = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 200})
        assert pending.json()["status"] == "pending"
        disputed = _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=CallbackKind.DISPUTE_CREATED,
                                     payment_id=payment_id, amount=order["amount"], channel="slowrefund")
        assert disputed.status_code == 200
        refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
        chargeback = next(r for r in refunds if r["reason"] == "chargeback")
        assert chargeback["amount"] == order["amount"], "booked as the provider reported it"
        alerts = client.get("/v1/alerts", params={"kind": "over_refund"}).json()["data"]
        assert alerts and alerts[0]["object_id"] == payment_id
    assert_ledger_ok(server)


def test_a_refund_that_lands_after_a_won_dispute_is_covered_by_the_capture_again(seams_server):
    """A refund under way when a full chargeback came, the dispute then won (the chargeback
    reversed: the money is back), then the refund succeeds at the provider. The capture covers it
    again: a plain refund, shared out as any refund is, not an over-refund the merchant bears
    alone. Witness: the ledger's accounts against what the provider moved (the capture, the
    refund; the chargeback and its reversal cancel out)."""
    server = seams_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 1000})
        order = merchant.order(client, product["id"], player_id="cb-won-refund", channel="slowrefund").json()
        payment_id = order["payment"]["id"]
        assert _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED,
                                 payment_id=payment_id, amount=1000, channel="slowrefund").status_code == 200
        paid = _balances(client)
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 200}).json()
        assert refund["status"] == "pending"
        for kind, status in ((CallbackKind.DISPUTE_CREATED, "needs_response"), (CallbackKind.DISPUTE_CLOSED, "won")):
            dispute = SandboxDisputeData(id="sbxdp_won_refund", status=status, reason="fraudulent")
            assert _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=kind, payment_id=payment_id,
                                     amount=1000, channel="slowrefund", dispute=dispute).status_code == 200
        [won] = client.get("/v1/disputes", params={"status": "won"}).json()["data"]
        assert won["order_id"] == order["id"]
        assert _balances(client) == paid, "won: the chargeback is reversed, every account as after the capture"
        landed = _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=CallbackKind.REFUND_SUCCEEDED,
                                   payment_id=payment_id, amount=200, channel="slowrefund", refund_id=refund["id"])
        assert landed.status_code == 200
        assert client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        after = _balances(client)
        moved = {account: after.get(account, 0) - paid.get(account, 0) for account in after.keys() | paid.keys()}
        assert moved[f"provider_clearing:slowrefund:{merchant.id}"] == -200, "the provider paid back 200"
        # 30% commission: the platform gives back 60 of it and the merchant 140, as for any refund of 200
        assert (moved[f"platform_revenue:{merchant.id}"], moved[f"merchant_payable:{merchant.id}"]) == (-60, -140)
        assert server.raw("SELECT kind FROM ledger_transactions WHERE reference = ?", (f"{refund['id']}:over",)) == []
        [alert] = client.get("/v1/alerts", params={"kind": "over_refund"}).json()["data"]
        assert alert["object_id"] == payment_id, "one alert: when the chargeback came on top of the pending refund"
    assert_ledger_ok(server)


def test_a_refund_that_lands_before_a_won_dispute_is_a_plain_refund_after_the_win(seams_server):
    """The same, with the refund landing while the dispute is open: the provider has then paid back
    the chargeback and the refund, more than the capture, and it is booked so (its part beyond
    the capture an over-refund against the merchant's payable, alerted). The win gives the
    chargeback back: the capture covers the refund again, and the books end as for a plain refund
    (commission and merchant share it), not with the merchant bearing it alone. Witness: the
    accounts against what the provider moved in the end (the capture, the refund)."""
    server = seams_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        assert client.put("/v1/account/settlement_schedule", json={"cycle": "manual"}).status_code == 200
        product = merchant.product(client, prices={"USD": 1000})
        order = merchant.order(client, product["id"], player_id="cb-refund-won", channel="slowrefund").json()
        payment_id = order["payment"]["id"]

        def provider(kind: CallbackKind, amount: int = 1000, **extra):
            answer = _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=kind, payment_id=payment_id,
                                       amount=amount, channel="slowrefund", **extra)
            assert answer.status_code == 200, answer.text

        def dispute(status: str) -> SandboxDisputeData:
            return SandboxDisputeData(id="sbxdp_refund_won", status=status, reason="fraudulent")

        provider(CallbackKind.PAYMENT_SUCCEEDED)
        paid = _balances(client)
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 200}).json()
        assert refund["status"] == "pending"
        provider(CallbackKind.DISPUTE_CREATED, dispute=dispute("needs_response"))
        provider(CallbackKind.REFUND_SUCCEEDED, amount=200, refund_id=refund["id"])
        assert client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        clearing = f"provider_clearing:slowrefund:{merchant.id}"
        over = _balances(client)  # 1,200 returned on a capture of 1,000: the 200 beyond it is the merchant's
        assert over[clearing] - paid[clearing] == -1200
        assert len(server.raw("SELECT 1 FROM ledger_transactions WHERE reference = ?", (f"{refund['id']}:over",))) == 1
        provider(CallbackKind.DISPUTE_CLOSED, dispute=dispute("won"))
        assert client.get("/v1/disputes", params={"status": "won"}).json()["data"][0]["order_id"] == order["id"]
        after = _balances(client)
        moved = {account: after.get(account, 0) - paid.get(account, 0) for account in after.keys() | paid.keys()}
        assert moved[clearing] == -200, "in the end the provider paid back 200"
        # 30% commission: the platform gives back 60 of it and the merchant 140, as for any refund of 200
        assert (moved[f"platform_revenue:{merchant.id}"], moved[f"merchant_payable:{merchant.id}"]) == (-60, -140)
        now_ms = server.clock.now_ms()
        window = {"from": format_rfc3339(now_ms - 86_400_000), "to": format_rfc3339(now_ms + 1000)}
        [usd] = [s for s in client.get("/v1/reports/summary", params=window).json()["data"] if s["currency"] == "USD"]
        assert (usd["gross"], usd["refunds"], usd["chargebacks"], usd["refund_count"]) == (1000, 200, 0, 1)
        assert (usd["commission"], usd["net"]) == (240, 560), "as after a plain refund of 200"
        provider(CallbackKind.DISPUTE_CLOSED, dispute=dispute("won"))  # the close again, under another event id
        assert _balances(client) == after, "a repeated close moves nothing"
        server.clock.advance(seconds=1)
        made = client.post("/v1/settlements/run")
        assert made.status_code == 200, made.text
        [batch] = made.json()["data"]
        settled = tuple(batch[k] for k in ("gross", "refunds", "chargebacks", "commission", "net_payable"))
        assert settled == (1000, 200, 0, 240, 560), "settled as a capture and a plain refund of 200"
        lines = client.get(f"/v1/settlements/{batch['id']}").json()["lines"]
        refund_lines = {line["reference"]: line for line in lines if line["kind"] == "refund"}
        assert sorted(refund_lines) == [f"{refund['id']}:over", f"{refund['id']}:over:covered"]
        assert {line["order_id"] for line in lines} == {order["id"]}, "every line names its order"
    assert_ledger_ok(server)


def _balances(client) -> dict[str, int]:
    return {b["account"]: b["balance"] for b in client.get("/v1/ledger/balances").json()["data"] if b["currency"] == "USD"}


# -- 7. a late payment the order cannot take is refunded ----------------------------------------------
def test_a_late_payment_for_an_order_that_cannot_take_it_is_refunded(server):
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        late = merchant.order(client, product["id"], player_id="slow-payer").json()
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s + 1)
        server.wait_job("expiry")
        assert client.get(f"/v1/orders/{late['id']}").json()["status"] == "expired"
        assert merchant.order(client, product["id"], player_id="quick-payer").status_code == 201  # takes the unit
        answer = _sandbox_callback(server, merchant, event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED,
                                   payment_id=late["payment"]["id"], amount=late["amount"],
                                   provider_ref=late["payment"]["next_action"]["url"].rsplit("/", 1)[1])
        assert answer.status_code == 200
        refunds = wait_for(lambda: [r for r in client.get(f"/v1/orders/{late['id']}/refunds").json()["data"]
                                    if r["status"] == "succeeded"])
        assert [(r["amount"], r["reason"]) for r in refunds] == [(late["amount"], "late_payment")]
        assert client.get(f"/v1/orders/{late['id']}").json()["status"] == "expired", "the order keeps its state"
        assert client.get("/v1/players/slow-payer/inventory").json()["items"] == []
        [alert] = client.get("/v1/alerts", params={"kind": "late_payment_out_of_stock"}).json()["data"]
        assert refunds[0]["id"] in alert["message"]
    assert_ledger_ok(server)


# -- 8. an unauthenticated 500 and asserts that write ---------------------------------------------------
def test_a_sandbox_callback_to_a_live_merchant_is_refused_cleanly(server):
    live = server.new_merchant(mode="live")
    answer = httpx.post(f"{server.base_url}/v1/channels/sandbox/webhook/{live.id}", content=b'{"id":"evt_x"}',
                        headers={SIGNATURE_HEADER: "t=1,v1=00"})
    assert_error(answer, 400, "invalid_request_error", "channel_not_available")


def test_the_app_refuses_to_run_with_assertions_stripped(tmp_path):
    script = ("from apss.app import create_app; from apss.config import load_config;"
              f"create_app(load_config('/nonexistent.toml', environ={{'APSS_DATABASE_PATH': '{tmp_path}/a.sqlite'}}))")
    ran = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0 and "python -O" in ran.stderr, ran.stderr[-500:]


def test_no_assert_runs_a_write():
    """`assert write(...)` vanishes under -O; a write belongs outside the assert."""
    import ast
    from pathlib import Path

    writes = ("reserve", "take_", "mark", "insert", "update", "apply", "set_", "finish", "record", "adjust", "post",
              "delete", "create", "release", "claim", "publish")
    offenders = []
    for path in Path(__file__).resolve().parent.parent.joinpath("apss").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                for call in (n for n in ast.walk(node.test) if isinstance(n, ast.Call)):
                    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                    in_tx = any(isinstance(a, ast.Name) and a.id == "tx" for a in call.args)
                    reads = name.startswith(("get_", "read_", "list_", "count_", "find_", "is_", "has_"))
                    if name.startswith(writes) or (in_tx and not reads):
                        offenders.append(f"{path.name}:{node.lineno} {name}")
    assert offenders == []


def test_a_provider_id_another_payment_holds_is_reported_not_reassigned(tmp_path):
    """store.orders.acquire_refs: a new id is the payment's; one another payment holds is returned
    as a clash (the gateway raises a provider_ref_conflict alert) and stays with its first owner."""
    import sqlite3

    from apss.store.db import Tx
    from apss.store.migrate import apply_migrations
    from apss.store.orders import acquire_refs

    path = str(tmp_path / "refs.sqlite")
    apply_migrations(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("BEGIN")
    tx = Tx(conn)
    assert acquire_refs(tx, channel="stripe", payment_id="pay_a", refs=["pi_1", "pi_1", ""], now_ms=1) == []
    assert acquire_refs(tx, channel="stripe", payment_id="pay_a", refs=["pi_1", "ch_1"], now_ms=2) == []
    assert acquire_refs(tx, channel="stripe", payment_id="pay_b", refs=["pi_2", "ch_1"], now_ms=3) == ["ch_1"]
    assert acquire_refs(tx, channel="paypal", payment_id="pay_b", refs=["ch_1"], now_ms=4) == []  # per channel
    conn.execute("COMMIT")
    owners = conn.execute("SELECT channel, provider_ref, payment_id FROM payment_refs ORDER BY channel, provider_ref").fetchall()
    assert [tuple(r) for r in owners] == [("paypal", "ch_1", "pay_b"), ("stripe", "ch_1", "pay_a"),
                                          ("stripe", "pi_1", "pay_a"), ("stripe", "pi_2", "pay_b")]
