"""Refunds whose provider call never got through (connection refused) or whose outcome is unknown
(the provider may have done it) are retried with backoff under the same idempotency key, and
booked exactly once when they succeed; a definite refusal is `failed` at once; after the last
attempt a refund that never reached the provider is `failed` with its alert. Through the real
server, the Stripe stand-in behind a TCP door that can be shut (nothing listens: refused), and
the test clock moved past each backoff."""

from __future__ import annotations

import socket
import sqlite3
import threading
from urllib.parse import parse_qsl

import httpx
import pytest

from apss.channels.stripe.mapping import REFUND_ID_KEY, to_stripe_amount
from apss.clock import TestClock
from apss.domain.refunds import resend_delay_s
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request
from tests.conftest import RunningServer, assert_ledger_ok, free_port, wait_for
from tests.test_channels_e2e import _Served

SECRET_KEY, WEBHOOK_SECRET = "sk_test_standin_retry_0123", "whsec_standin_retry_0123"
BACKOFF_S = (60, 300, 1800, 7200, 21600)  # the documented defaults (config.toml [refunds])


class _Door:
    """A TCP door in front of a stand-in: shut, nothing listens on its port (connection refused,
    as when the provider cannot be reached); open, every connection is piped to the stand-in."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._upstream = upstream_port
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        """Stop listening and drop every connection (the client's pooled ones too)."""
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def retry_server(tmp_path_factory):
    running = RunningServer(db_path=tmp_path_factory.mktemp("refundretry") / "apss.sqlite", clock=TestClock(), env={
        "APSS_CHANNELS_PROVIDER_TIMEOUT_S": "2"}).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def standin(retry_server):
    stand_in = StripeStandIn(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET,
                             now_s=lambda: retry_server.clock.now_ms() // 1000)
    served = _Served(stand_in)
    yield stand_in, served.port
    served.stop()


@pytest.fixture
def door(standin):
    opened = _Door(standin[1])
    yield opened
    if opened._listener is not None:
        opened.shut()


# -- helpers -----------------------------------------------------------------------------------------
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


def _session_of(stand_in, payment_id):
    return next(s for s, v in stand_in.sessions.items() if v["metadata"].get("apss_payment_id") == payment_id)


def _paid_stripe_order(server, stand_in, merchant, client, *, player_id):
    product = merchant.product(client)
    order = merchant.order(client, product["id"], player_id=player_id, channel="stripe").json()
    intent = stand_in.pay(_session_of(stand_in, order["payment"]["id"]))
    _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
    return order


def _refund_attempts(client, payment_id):
    attempts = client.get(f"/v1/payments/{payment_id}").json()["attempts"]
    return [(a["outcome"], a["error_code"]) for a in attempts if a["operation"] == "refund"]


def _stripe_refunds_of(stand_in, refund_id):
    """What the provider executed for our refund (its record, not ours)."""
    return [r for r in stand_in.refunds.values() if r["metadata"].get(REFUND_ID_KEY) == refund_id]


def _refund_posts_of(stand_in, refund_id):
    return [r for r in stand_in.requests if (r.method, r.path) == ("POST", "/v1/refunds")
            and dict(parse_qsl(r.body.decode())).get(f"metadata[{REFUND_ID_KEY}]") == refund_id]


def _ledger_postings(server, refund_id):
    with sqlite3.connect(server.db_path) as raw:
        return raw.execute("SELECT kind FROM ledger_transactions WHERE reference = ?", (refund_id,)).fetchall()


def _alerts(client, kind, object_id):
    return [a for a in client.get("/v1/alerts", params={"kind": kind}).json()["data"] if a["object_id"] == object_id]


def _run_sender_after(server, seconds):
    server.clock.advance(seconds=seconds)
    server.wait_job("refund_sender")


# -- the simulator's case: late payment, expired order, stock gone, Stripe unreachable ---------------
def test_a_late_payment_refund_that_could_not_reach_stripe_is_retried_and_booked_once(retry_server, standin, door):
    server, (stand_in, _) = retry_server, standin
    merchant = _stripe_merchant(server, door.url)
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        late = merchant.order(client, product["id"], player_id="late-payer", channel="stripe").json()
        first_query_s = server.config.channels.janitor_schedule_s[0]
        server.clock.advance(seconds=first_query_s + 1)  # the janitor's first query finds it unpaid
        server.wait_job("payment_janitor")
        intent = stand_in.pay(_session_of(stand_in, late["payment"]["id"]))  # paid at Stripe; its webhook is late
        server.clock.advance(seconds=server.config.orders.reservation_ttl_s - first_query_s)
        server.wait_job("expiry")
        assert client.get(f"/v1/orders/{late['id']}").json()["status"] == "expired"
        assert merchant.order(client, product["id"], player_id="quick-payer").status_code == 201  # the unit is gone
        door.shut()  # Stripe cannot be reached when the automatic refund goes out
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        wait_for(lambda: _refund_attempts(client, late["payment"]["id"]))
        assert _refund_attempts(client, late["payment"]["id"]) == [("failed", "channel_unreachable")]
        [refund] = client.get(f"/v1/orders/{late['id']}/refunds").json()["data"]
        assert (refund["reason"], refund["status"]) == ("late_payment", "pending"), "never sent: queued again, not failed"
        assert _alerts(client, "refund_failed", refund["id"]) == []

        door.open()
        _run_sender_after(server, BACKOFF_S[0] // 2)
        assert client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "pending", "not before its backoff"
        assert _refund_posts_of(stand_in, refund["id"]) == []

        _run_sender_after(server, BACKOFF_S[0] // 2 + 1)
        wait_for(lambda: client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded")
        executed = _stripe_refunds_of(stand_in, refund["id"])
        assert [(r["amount"], r["payment_intent"]) for r in executed] == [(to_stripe_amount(late["amount"], "USD"), intent["id"])]
        [sent] = _refund_posts_of(stand_in, refund["id"])
        assert sent.headers["idempotency-key"] == refund["id"]
        assert _refund_attempts(client, late["payment"]["id"]) == [("failed", "channel_unreachable"), ("succeeded", None)]
        assert _ledger_postings(server, refund["id"]) == [("refund",)], "booked once, when it succeeded"
        assert client.get(f"/v1/orders/{late['id']}").json()["status"] == "expired", "the order keeps its state"
        assert _alerts(client, "refund_failed", refund["id"]) == []
        _run_sender_after(server, sum(BACKOFF_S))  # nothing left to send: no second refund at Stripe
        assert len(_refund_posts_of(stand_in, refund["id"])) == 1
    assert_ledger_ok(server)


# -- a merchant's refund whose outcome is unknown (Stripe did it, the answer was lost) ---------------
def test_a_merchant_refund_with_an_unknown_outcome_is_resent_under_its_key_and_refunds_once(retry_server, standin, door):
    server, (stand_in, _) = retry_server, standin
    merchant = _stripe_merchant(server, door.url)
    with merchant.client() as client:
        order = _paid_stripe_order(server, stand_in, merchant, client, player_id="unknown-outcome")
        stand_in.lose_answers = 1  # Stripe refunds, then answers 500
        created = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 200})
        assert created.status_code == 201, created.text
        refund = created.json()
        assert refund["status"] == "pending"
        assert _refund_attempts(client, order["payment"]["id"]) == [("unknown", "channel_unavailable")]
        assert len(_stripe_refunds_of(stand_in, refund["id"])) == 1, "the first call did refund"

        _run_sender_after(server, BACKOFF_S[0] + 1)
        wait_for(lambda: client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded")
        posts = _refund_posts_of(stand_in, refund["id"])
        assert [p.headers["idempotency-key"] for p in posts] == [refund["id"], refund["id"]]
        assert len(_stripe_refunds_of(stand_in, refund["id"])) == 1, "the resend was a replay, not a second refund"
        assert _ledger_postings(server, refund["id"]) == [("refund",)]
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "partially_refunded"
    assert_ledger_ok(server)


# -- a definite refusal is final at once -------------------------------------------------------------
def test_a_refund_stripe_refuses_is_failed_at_once_and_never_resent(retry_server, standin, door):
    server, (stand_in, _) = retry_server, standin
    merchant = _stripe_merchant(server, door.url)
    with merchant.client() as client:
        order = _paid_stripe_order(server, stand_in, merchant, client, player_id="refused")
        stand_in.fail_next = [400]
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={}).json()
        assert refund["status"] == "failed"
        assert len(_alerts(client, "refund_failed", refund["id"])) == 1
        _run_sender_after(server, BACKOFF_S[0] + 1)
        assert _refund_attempts(client, order["payment"]["id"]) == [("failed", "provider_declined")]
        assert _ledger_postings(server, refund["id"]) == []
    assert_ledger_ok(server)


# -- the cap: a provider that stays unreachable ------------------------------------------------------
def test_a_refund_that_never_reaches_stripe_fails_after_the_last_attempt_with_one_alert(retry_server, standin, door):
    server, (stand_in, _) = retry_server, standin
    merchant = _stripe_merchant(server, door.url)
    with merchant.client() as client:
        order = _paid_stripe_order(server, stand_in, merchant, client, player_id="never-reached")
        door.shut()
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={}).json()
        assert refund["status"] == "pending"
        for n, wait_s in enumerate(BACKOFF_S, start=2):
            _run_sender_after(server, wait_s + 1)
            wait_for(lambda n=n: len(_refund_attempts(client, order["payment"]["id"])) == n)
        assert _refund_attempts(client, order["payment"]["id"]) == [("failed", "channel_unreachable")] * (len(BACKOFF_S) + 1)
        final = client.get(f"/v1/refunds/{refund['id']}").json()
        assert (final["status"], final["failure_code"]) == ("failed", "channel_unreachable")
        assert len(_alerts(client, "refund_failed", refund["id"])) == 1
        _run_sender_after(server, BACKOFF_S[-1] + 1)
        assert len(_refund_attempts(client, order["payment"]["id"])) == len(BACKOFF_S) + 1, "no attempt after the last"
        assert _stripe_refunds_of(stand_in, refund["id"]) == [] and _ledger_postings(server, refund["id"]) == []
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
    assert_ledger_ok(server)


# -- the cap when a send may have reached the provider: never a guessed `failed` ---------------------
def test_a_refund_answered_5xx_on_every_send_stays_pending_for_the_janitor(retry_server, standin, door):
    server, (stand_in, _) = retry_server, standin
    merchant = _stripe_merchant(server, door.url)
    with merchant.client() as client:
        order = _paid_stripe_order(server, stand_in, merchant, client, player_id="always-5xx")
        stand_in.fail_next = [503] * (len(BACKOFF_S) + 1)
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={}).json()
        for n, wait_s in enumerate(BACKOFF_S, start=2):
            _run_sender_after(server, wait_s + 1)
            wait_for(lambda n=n: len(_refund_attempts(client, order["payment"]["id"])) == n)
        assert _refund_attempts(client, order["payment"]["id"]) == [("unknown", "channel_unavailable")] * (len(BACKOFF_S) + 1)
        assert client.get(f"/v1/refunds/{refund['id']}").json()["status"] == "pending", "it may have gone through"
        assert _alerts(client, "refund_failed", refund["id"]) == []
        server.clock.advance(seconds=server.config.channels.janitor_interval_s + 1)
        server.wait_job("payment_janitor")
        attempts = client.get(f"/v1/payments/{order['payment']['id']}").json()["attempts"]
        assert "query_refund" in [a["operation"] for a in attempts], "handed to the janitor's status queries"
        assert len(_refund_attempts(client, order["payment"]["id"])) == len(BACKOFF_S) + 1, "and never sent again"
    assert_ledger_ok(server)


def test_the_backoff_schedule():
    delays = [resend_delay_s(n, backoff_s=BACKOFF_S, sends_max=8) for n in range(1, 9)]
    assert delays == [60, 300, 1800, 7200, 21600, 21600, 21600, None], "the last wait repeats, then no more sends"
    assert resend_delay_s(1, backoff_s=BACKOFF_S, sends_max=1) is None
