"""apss.client against the real server over HTTP: typed answers, errors, retries that never make a
second order (checked by a raw scan of the database), and webhook verification against a delivery
the server really signed."""

from __future__ import annotations

import sqlite3
import time

import anyio
import httpx
import pytest

from apss.client import (
    ApssError,
    AsyncClient,
    Client,
    OrderCreate,
    OrderLine,
    WebhookSignatureError,
    verify_webhook,
)
from apss.crypto import sign_timestamped
from tests.conftest import free_port, wait_for
from tests.test_webhooks import Receiver, _serve

pytestmark = pytest.mark.both_backends


def _orders_in_db(merchant, player_id: str) -> int:
    return merchant.server.raw("SELECT count(*) FROM orders WHERE merchant_id = ? AND player_id = ?",
                               (merchant.id, player_id))[0][0]


class _LoseAnswers(httpx.BaseTransport):
    """Sends each request to the real server, then drops the first `lose` answers as a timeout:
    the server did the work, the client never heard (the case retries with a key exist for)."""

    def __init__(self, lose: int) -> None:
        self._inner = httpx.HTTPTransport()
        self.lose = lose
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = self._inner.handle_request(request)
        response.read()
        if self.lose > 0:
            self.lose -= 1
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_a_purchase_through_the_client_is_typed_end_to_end(merchant):
    with merchant.client() as raw:
        product = merchant.product(raw, sku="client_sword", stock=3)
    with Client(merchant.key, base_url=merchant.server.base_url) as apss:
        order = apss.create_order(OrderCreate(player_id="cli-hero", currency="USD",
                                              items=[OrderLine(product_id=product["id"], quantity=2)]))
        assert (order.status, order.amount, order.currency) == ("pending", 1000, "USD")
        assert order.payment is not None and order.payment.next_action.url.startswith(merchant.server.base_url)
        assert apss.sandbox_succeed(order.payment.id).status == "processing"
        final = wait_for(lambda: (o := apss.get_order(order.id)).status == "fulfilled" and o)
        assert final.payment.status == "succeeded"
        inventory = apss.inventory("cli-hero")
        assert [(i.sku, i.quantity) for i in inventory.items] == [("client_sword", 2)]
        refund = apss.refund(order.id, amount=300, reason="client test")
        assert (refund.amount, refund.order_id) == (300, order.id)
        assert [r.id for r in apss.list_refunds(order.id).data] == [refund.id]
        listed = apss.list_orders(player_id="cli-hero")
        assert [o.id for o in listed.data] == [order.id] and listed.has_more is False
    # What the client decoded is what the server said, read independently.
    with merchant.client() as raw:
        assert raw.get(f"/v1/refunds/{refund.id}").json()["amount"] == 300
        assert raw.get(f"/v1/products/{product['id']}").json()["sold"] == 2


def test_errors_carry_the_status_code_and_param(merchant):
    with Client(merchant.key, base_url=merchant.server.base_url, max_retries=0) as apss:
        with pytest.raises(ApssError) as missing:
            apss.get_order("ord_doesnotexist")
        assert (missing.value.status, missing.value.type) == (404, "invalid_request_error")
        assert missing.value.request_id
        with pytest.raises(ApssError) as unknown:
            apss.create_order(OrderCreate(player_id="p", currency="USD", items=[OrderLine(product_id="prd_nope")]))
        assert unknown.value.status == 404 and unknown.value.code
    with Client("sk_test_wrong", base_url=merchant.server.base_url) as apss:
        with pytest.raises(ApssError) as refused:
            apss.list_orders()
        assert (refused.value.status, refused.value.type) == (401, "authentication_error")


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_order(merchant):
    with merchant.client() as raw:
        product = merchant.product(raw, stock=10)
    transport = _LoseAnswers(lose=2)
    with Client(merchant.key, base_url=merchant.server.base_url, transport=transport,
                retry_wait_base_s=0.01) as apss:
        order = apss.create_order(OrderCreate(player_id="cli-retry", currency="USD",
                                              items=[OrderLine(product_id=product["id"])]))
    keys = [request.headers["Idempotency-Key"] for request in transport.sent]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert _orders_in_db(merchant, "cli-retry") == 1
    with merchant.client() as raw:
        assert raw.get(f"/v1/products/{product['id']}").json()["reserved"] == 1
        assert raw.get(f"/v1/orders/{order.id}").json()["id"] == order.id


def test_a_get_is_retried_after_connection_errors_then_the_error_raised():
    transport = _LoseAnswers(lose=1)
    port = free_port()  # nothing listens: a connection error each time
    with Client("sk_test_x", base_url=f"http://127.0.0.1:{port}", transport=transport, max_retries=2,
                retry_wait_base_s=0.01) as apss:
        with pytest.raises(httpx.ConnectError):
            apss.get_order("ord_x")
    assert len(transport.sent) == 3  # the first try and two retries


def test_retry_after_of_a_busy_answer_is_honoured_then_the_real_answer_returned(merchant):
    """A 503 with Retry-After in front of the real server: waited for, then the real answer."""
    inner = httpx.HTTPTransport()
    answers: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answers.append(time.monotonic())
        if len(answers) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.2"},
                                  json={"error": {"type": "api_error", "code": "not_ready", "message": "busy"}})
        response = inner.handle_request(request)
        response.read()
        return response

    with Client(merchant.key, base_url=merchant.server.base_url, transport=httpx.MockTransport(handler)) as apss:
        assert apss.list_orders().has_more is False
    assert len(answers) == 2 and answers[1] - answers[0] >= 0.2


def test_async_client_concurrent_creates_with_one_key_make_one_order(merchant):
    with merchant.client() as raw:
        product = merchant.product(raw, stock=5)

    async def main() -> list[str]:
        async with AsyncClient(merchant.key, base_url=merchant.server.base_url, retry_wait_base_s=0.05) as apss:
            command = OrderCreate(player_id="cli-async", currency="USD", items=[OrderLine(product_id=product["id"])])
            ids: list[str] = []

            async def create() -> None:
                ids.append((await apss.create_order(command, idempotency_key="cli-async-key-1")).id)

            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(create)
            return ids

    ids = anyio.run(main)
    assert len(ids) == 5 and len(set(ids)) == 1  # in-use answers (409) were waited out, then replayed
    assert _orders_in_db(merchant, "cli-async") == 1


def test_verify_webhook_accepts_a_real_delivery_and_refuses_tampering(merchant):
    receiver = Receiver()
    port = free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(receiver, port, lifespan="off")
    try:
        url = receiver.route(first=(), then=200)
        with merchant.client() as raw:
            endpoint = raw.post("/v1/webhook_endpoints", json={"url": url, "events": ["order.paid"]}).json()
            product = merchant.product(raw, stock=2)
            order = merchant.order(raw, product["id"], player_id="cli-hook").json()
            raw.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
            request = wait_for(lambda: next(iter(receiver.at(url)), None), timeout_s=20)
    finally:
        served.should_exit = True
        thread.join(timeout=10)
    header, body = request.headers["apss-signature"], request.body
    now_s = merchant.server.clock.now_ms() // 1000  # the server's test clock dated the signature
    event = verify_webhook(secret=endpoint["secret"], header=header, body=body, now_s=now_s)
    assert event.type == "order.paid" and event.data["object"]["id"] == order["id"]
    assert verify_webhook(secret=["whsec_old", endpoint["secret"]], header=header, body=body, now_s=now_s).id == event.id
    for secret, tampered, at in ((endpoint["secret"], body.replace(b"order.paid", b"order.pend"), now_s),
                                 ("whsec_wrong", body, now_s),
                                 (endpoint["secret"], body, now_s + 3600)):
        with pytest.raises(WebhookSignatureError):
            verify_webhook(secret=secret, header=header, body=tampered, now_s=at)
    forged = sign_timestamped(secret="whsec_attacker", timestamp_s=now_s, body=body)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(secret=endpoint["secret"], header=forged, body=body, now_s=now_s)


def test_the_readmes_python_example_runs_against_the_demo_store(tmp_path, capsys):
    """README "The same from Python", unchanged but for the key and the address, on a fresh demo
    store; what it did is then read from the database file itself."""
    from pathlib import Path

    from apss.clock import TestClock
    from tests.conftest import RunningServer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### The same from Python"):]
    code = section[section.index("```python\n") + 10:section.index("\n```", section.index("```python\n"))]
    server = RunningServer(db_path=tmp_path / "demo.sqlite", clock=TestClock(),
                           env={"APSS_SEED_DEMO": "true"}).start()
    try:
        key = next(word for line in server.announced for word in line.split() if word.startswith("sk_test_"))
        assert code.count('"sk_test_..."') == 1 and code.count('"http://127.0.0.1:8000"') == 1
        exec(compile(code.replace('"sk_test_..."', repr(key)).replace('"http://127.0.0.1:8000"', repr(server.base_url)),
                     "README.md", "exec"), {})
    finally:
        server.stop()
    printed = capsys.readouterr().out.split("\n")
    assert printed[0].startswith("pending " + server.base_url + "/sandbox/pay/sbx_"), printed
    assert printed[1:4] == ["{'GEMS': 1000}", "404 not_found", ""], printed
    with sqlite3.connect(tmp_path / "demo.sqlite") as conn:
        assert conn.execute("SELECT status FROM orders WHERE player_id = 'alice'").fetchall() == [("partially_refunded",)]
        assert conn.execute("SELECT amount, status FROM refunds").fetchall() == [(499, "succeeded")]
