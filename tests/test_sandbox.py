"""The sandbox provider: payer page, API completion, magic values, test merchants only."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from apss.clock import TestClock
from tests.conftest import Merchant, RunningServer, wait_for

pytestmark = pytest.mark.both_backends


def _order(merchant, client, *, player_id, metadata=None, stock=3):
    product = merchant.product(client, stock=stock)
    response = merchant.order(client, product["id"], player_id=player_id, metadata=metadata or {},
                              return_url="https://game.example.test/back")
    assert response.status_code == 201, response.text
    return product, response.json()


def _status(client, order_id):
    return client.get(f"/v1/orders/{order_id}").json()


def test_payer_page_pay_button_fulfils_the_order(merchant):
    with merchant.client() as client:
        _, order = _order(merchant, client, player_id="page-payer")
        page = httpx.get(order["payment"]["next_action"]["url"])
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "5.00 USD" in page.text and "Test Studio" in page.text
        assert "id=sandbox-pay" in page.text and "id=sandbox-fail" in page.text
        action = re.search(r"action='([^']+/pay)'", page.text).group(1)
        done = httpx.post(merchant.server.base_url + action)
        # Post, redirect, get: the outcome is a page of its own, and a reload does not post again.
        assert done.status_code == 303 and done.headers["location"].startswith(order["payment"]["next_action"]["url"].removeprefix(merchant.server.base_url))
        outcome = httpx.post(merchant.server.base_url + action, follow_redirects=False)
        assert outcome.status_code == 409, "the payer cannot complete a payment twice"
        shown = httpx.get(merchant.server.base_url + done.headers["location"])
        assert shown.status_code == 200 and "Payment paid" in shown.text and "https://game.example.test/back" in shown.text
        assert "id=sandbox-pay" not in shown.text and "id=sandbox-fail" not in shown.text, "no buttons that answer 409"
        wait_for(lambda: _status(client, order["id"])["status"] == "fulfilled")
        assert "Payment paid" in httpx.get(order["payment"]["next_action"]["url"]).text
    assert httpx.get(merchant.server.base_url + "/sandbox/pay/sbx_not_a_real_reference").status_code == 404


def test_fail_releases_stock(merchant):
    with merchant.client() as client:
        product, order = _order(merchant, client, player_id="failer")
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/fail").status_code == 202
        failed = wait_for(lambda: (o := _status(client, order["id"]))["status"] == "failed" and o)
        assert failed["payment"]["status"] == "failed" and failed["payment"]["failure_code"] == "payer_canceled"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 3
        again = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_magic_declined_and_insufficient_funds(merchant):
    with merchant.client() as client:
        for magic, code in (("declined", "card_declined"), ("insufficient_funds", "insufficient_funds")):
            _, order = _order(merchant, client, player_id=f"magic-{magic}", metadata={"sandbox_outcome": magic})
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
            failed = wait_for(lambda: (o := _status(client, order["id"]))["status"] == "failed" and o)
            assert failed["payment"]["failure_code"] == code


def test_magic_duplicate_callback_is_delivered_twice_and_applied_once(merchant):
    with merchant.client() as client:
        _, order = _order(merchant, client, player_id="dup", metadata={"sandbox_outcome": "duplicate_callback"})
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        wait_for(lambda: _status(client, order["id"])["status"] == "fulfilled")
        assert client.get("/v1/players/dup/inventory").json()["items"][0]["quantity"] == 1
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        assert [e["to_status"] for e in events] == ["pending", "paid", "fulfilled"]
    def sent() -> list[tuple]:
        return merchant.server.raw("SELECT event_id, delivered_at_ms FROM sandbox_callbacks WHERE merchant_id = ?",
                                   (merchant.id,))

    # The order is fulfilled by the first delivery; the duplicate may still be on its way.
    wait_for(lambda: len(sent()) == 2 and all(at is not None for _, at in sent()))
    rows = sent()
    assert rows[0][0] == rows[1][0], "the same event, delivered twice"
    with merchant.client() as client:
        assert client.get("/v1/players/dup/inventory").json()["items"][0]["quantity"] == 1, "applied once"


def test_magic_delay_holds_the_callback_until_the_clock_passes(merchant):
    server = merchant.server
    with merchant.client() as client:
        _, order = _order(merchant, client, player_id="delayed", metadata={"sandbox_outcome": "delay_callback:30"})
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        seen_ms = server.clock.now_ms()
        wait_for(lambda: server.services.scheduler.completed_as_of_ms("sandbox_callbacks") >= seen_ms)
        assert _status(client, order["id"])["status"] == "pending"
        server.clock.advance(seconds=31)
        wait_for(lambda: _status(client, order["id"])["status"] == "fulfilled")


def test_sandbox_is_for_test_merchants_only(server):
    live = server.new_merchant("Live Studio", mode="live")
    assert live.key.startswith("sk_live_")
    with live.client() as client:
        product = live.product(client)
        for body in ({}, {"channel": "sandbox"}):
            refused = live.order(client, product["id"], **body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "channel_not_available"
        account = client.get("/v1/account").json()
        publishable_key = account.pop("publishable_key")
        assert publishable_key.startswith("pk_live_")
        assert account == {"id": live.id, "name": "Live Studio", "mode": "live", "currency": "USD", "allowed_origins": []}
        assert client.post("/v1/sandbox/payments/pay_whatever/succeed").json()["error"]["code"] == "channel_not_available"


def test_the_sandbox_keeps_the_refunds_it_executed(merchant):
    """Its refund queries are answered from this record (contract test: query_refund)."""
    with merchant.client() as client:
        _, order = _order(merchant, client, player_id="refunded-payer")
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        wait_for(lambda: _status(client, order["id"])["status"] == "fulfilled")
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 200})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
    rows = merchant.server.raw("SELECT refund_id, payment_id, amount, currency, status, provider_refund_ref"
                               " FROM sandbox_refunds WHERE payment_id = ?", (order["payment"]["id"],))
    assert [row[:5] for row in rows] == [(refund.json()["id"], order["payment"]["id"], 200, "USD", "succeeded")]
    assert rows[0][5].startswith("sbxre_")


def test_the_root_points_a_person_at_the_dashboard_and_the_docs(server):
    page = httpx.get(server.base_url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    hrefs = set(re.findall(r"href='(/[^']*)'", page.text))
    assert {"/admin", "/schema/swagger"} <= hrefs
    for href in hrefs - {"/admin"}:  # each link answers (the dashboard redirects to its login)
        assert httpx.get(server.base_url + href).status_code == 200, href


# -- the callback sender: continuous, bounded, retried with backoff ----------------------------------
class _Receiver(httpx.AsyncBaseTransport):
    """Between the sandbox's sender and the real server: forwards each callback over HTTP, except
    that it holds the callbacks of `held` payments until `release` is set, and answers 503 to the
    first `refuse[payment]` callbacks of a payment (the server never sees those)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.held: set[str] = set()
        self.holding = threading.Event()  # a held callback has arrived
        self.release = threading.Event()
        self.refuse: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        payment_id = msgspec.json.decode(request.content)["data"]["payment_id"]
        if payment_id in self.held:
            self.holding.set()
            while not self.release.is_set():  # the test sets it at its end, whatever happened
                await asyncio.sleep(0.01)
        if self.refuse.get(payment_id, 0) > 0:
            self.refuse[payment_id] -= 1
            return httpx.Response(503)
        return await self.inner.handle_async_request(request)


@pytest.fixture
def receiver(tmp_path, backend, database_env) -> Iterator[tuple[Merchant, _Receiver]]:
    """Its own server on the test's backend (the sender's client is replaced), with callbacks given
    up after 3 attempts."""
    server = RunningServer(db_path=tmp_path / "apss.sqlite", clock=TestClock(),
                           env={"APSS_SANDBOX_CALLBACK_ATTEMPTS_MAX": "3", **database_env(backend)}).start()
    transport = _Receiver()
    server.services.sandbox.client = httpx.AsyncClient(transport=transport, timeout=30)
    try:
        yield server.new_merchant(), transport
    finally:
        transport.release.set()
        server.stop()


def _callbacks(merchant) -> dict[str, tuple]:
    """payment id -> (attempts, deliver_at_ms, delivered_at_ms, gave_up_at_ms, last_error), read raw."""
    rows = merchant.server.raw("SELECT body, attempts, deliver_at_ms, delivered_at_ms, gave_up_at_ms, last_error"
                               " FROM sandbox_callbacks WHERE merchant_id = ?", (merchant.id,))
    return {msgspec.json.decode(row[0])["data"]["payment_id"]: tuple(row[1:]) for row in rows}


def _paid(merchant, client, player_id: str) -> dict:
    _, order = _order(merchant, client, player_id=player_id)
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return order


def test_a_slow_callback_holds_up_only_its_own_slot(receiver):
    """Callbacks queued while an earlier one waits for its answer are sent and applied meanwhile
    (a sender working in passes would send them only once the held one is answered)."""
    merchant, transport = receiver
    with merchant.client() as client:
        first = _order(merchant, client, player_id="held")[1]
        transport.held.add(first["payment"]["id"])
        assert client.post(f"/v1/sandbox/payments/{first['payment']['id']}/succeed").status_code == 202
        wait_for(transport.holding.is_set)
        later = [_paid(merchant, client, f"later-{n}") for n in range(3)]
        wait_for(lambda: all(_status(client, order["id"])["status"] == "fulfilled" for order in later), timeout_s=20)
        assert _status(client, first["id"])["status"] == "pending", "its callback is still held"
        transport.release.set()
        wait_for(lambda: _status(client, first["id"])["status"] == "fulfilled")
    # an order is fulfilled when our server applies its callback, before the sender hears the
    # answer and records the delivery: wait for every record
    wait_for(lambda: all(row[2] is not None for row in _callbacks(merchant).values()))
    sent = _callbacks(merchant)
    assert len(sent) == 4
    assert all(attempts == 1 and delivered is not None and gave_up is None
               for attempts, _, delivered, gave_up, _ in sent.values()), sent


def test_a_refused_callback_is_retried_with_backoff_and_given_up_at_the_attempts_max(receiver):
    merchant, transport = receiver
    clock = merchant.server.clock
    with merchant.client() as client:
        once = _order(merchant, client, player_id="refused-once")[1]
        never = _order(merchant, client, player_id="refused-always")[1]
        transport.refuse.update({once["payment"]["id"]: 1, never["payment"]["id"]: 100})
        for order in (once, never):
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        now_ms = clock.now_ms()
        wait_for(lambda: all(row[0] == 1 for row in _callbacks(merchant).values()))
        for payment_id in (once["payment"]["id"], never["payment"]["id"]):
            assert _callbacks(merchant)[payment_id] == (1, now_ms + 2_000, None, None, "HTTP 503")

        clock.advance(seconds=2)  # the first retry: 2 s after the first attempt
        wait_for(lambda: _status(client, once["id"])["status"] == "fulfilled")
        wait_for(lambda: _callbacks(merchant)[never["payment"]["id"]][0] == 2)
        assert _callbacks(merchant)[never["payment"]["id"]] == (2, now_ms + 2_000 + 4_000, None, None, "HTTP 503")
        # the order is fulfilled when our server applies the callback, before the sender hears the
        # answer and records the delivery: wait for that record too (as in the test above)
        wait_for(lambda: _callbacks(merchant)[once["payment"]["id"]][2] is not None)
        assert _callbacks(merchant)[once["payment"]["id"]][:2] == (2, now_ms + 2_000)

        clock.advance(seconds=4)  # the third attempt is the last (callback_attempts_max = 3)
        wait_for(lambda: _callbacks(merchant)[never["payment"]["id"]][3] is not None)
        assert _callbacks(merchant)[never["payment"]["id"]] == (3, now_ms + 6_000, None, now_ms + 6_000, "HTTP 503")
        assert _status(client, never["id"])["status"] == "pending"
