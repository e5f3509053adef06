"""Channels through the real server: settings, routing with fallback, the circuit breaker, a
real adapter (Stripe) against its local stand-in, the janitor, and FX-priced orders."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from apss.channels.stripe.mapping import to_stripe_amount
from apss.clock import TestClock
from tests.channels.standin_stripe import StripeStandIn, signed_callback_request
from tests.conftest import RunningServer, free_port, wait_for

pytestmark = pytest.mark.both_backends


class _Served:
    """An ASGI app on a real port (uvicorn in a thread)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class _Silent:
    """A TCP server that accepts connections and never answers: a provider that times out."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(connection)

    def stop(self) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


@pytest.fixture(scope="module")
def _stripe_served():
    standin = StripeStandIn(secret_key="sk_test_standin_0123456789", webhook_secret="whsec_standin_0123456789",
                            pi_on_create=True)
    served = _Served(standin)
    yield standin, served.url
    served.stop()


@pytest.fixture
def stripe_standin(_stripe_served, request):
    """The served stand-in, its clock following the server of the test (whose TestClock tests
    move): Stripe checks a session's `expires_at` against its own time."""
    standin, url = _stripe_served
    running = request.getfixturevalue("fast_server" if "fast_server" in request.fixturenames else "server")
    standin.now_s = lambda: running.clock.now_ms() // 1000
    return standin, url


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory):
    """A server with a short provider timeout and janitor interval, for the failure paths."""
    running = RunningServer(db_path=tmp_path_factory.mktemp("channels") / "apss.sqlite", clock=TestClock(), env={
        "APSS_CHANNELS_PROVIDER_TIMEOUT_S": "0.5", "APSS_CHANNELS_JANITOR_INTERVAL_S": "1"}).start()
    yield running
    running.stop()


def _stripe_settings(api_base: str, standin: StripeStandIn) -> dict:
    return {"secret_key": standin.secret_key, "webhook_secret": standin.webhook_secret, "api_base": api_base}


def test_settings_are_validated_and_secrets_never_returned(merchant, stripe_standin, backend):
    standin, url = stripe_standin
    with merchant.client() as client:
        saved = client.put("/v1/channels/stripe", json=_stripe_settings(url, standin))
        assert saved.status_code == 200, saved.text
        body = saved.json()
        assert body["channel"] == "stripe" and body["configured"] is True
        assert body["settings"] == {"api_base": url}
        assert body["callback_url"] == f"{merchant.server.base_url}/v1/channels/stripe/webhook/{merchant.id}"
        listed = client.get("/v1/channels").text
        assert standin.secret_key not in listed and standin.webhook_secret not in listed
        missing = client.put("/v1/channels/stripe", json={"secret_key": "sk_x"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "webhook_secret"
        unknown = client.put("/v1/channels/stripe", json={**_stripe_settings(url, standin), "colour": "red"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "setting_unknown"
        assert client.put("/v1/channels/nochannel", json={}).status_code == 404
        assert client.put("/v1/channels/sandbox", json={}).status_code == 400
        bad_routing = client.put("/v1/channels/routing", json={"default": ["paypal"]})
        assert bad_routing.status_code == 400 and bad_routing.json()["error"]["param"] == "default[0]"
    [row] = merchant.server.raw("SELECT * FROM channel_settings WHERE merchant_id = ? AND channel = 'stripe'",
                                (merchant.id,))
    assert row["secrets_sealed"] and not any(secret in str(value) for value in row
                                             for secret in (standin.secret_key, standin.webhook_secret))
    if backend == "sqlite":  # and no byte of the file holds it
        with open(merchant.server.db_path, "rb") as raw:
            assert standin.secret_key.encode() not in raw.read(), "secrets are sealed at rest"


def test_an_order_paid_through_stripe_via_its_stand_in(merchant, stripe_standin):
    standin, url = stripe_standin
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json=_stripe_settings(url, standin))
        product = merchant.product(client, stock=2)
        order = merchant.order(client, product["id"], player_id="stripe-player", channel="stripe").json()
        assert order["channel"] == "stripe" and order["payment"]["status"] == "requires_action"
        assert order["payment"]["next_action"]["url"].startswith("https://checkout.stripe.com/")
        session_id = next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == order["payment"]["id"])
        intent = standin.pay(session_id)
        event = signed_callback_request("payment_intent.succeeded", intent, secret=standin.webhook_secret,
                                        now_s=merchant.server.clock.now_ms() // 1000)
        answer = httpx.post(f"{merchant.server.base_url}/v1/channels/stripe/webhook/{merchant.id}", content=event.body,
                            headers=event.headers)
        assert answer.status_code == 200, answer.text
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        assert intent["amount"] == to_stripe_amount(500, "USD")


def test_first_channel_down_means_paid_through_the_second_and_the_breaker_opens(fast_server):
    merchant = fast_server.new_merchant()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json={"secret_key": "sk_test_x", "webhook_secret": "whsec_x", "api_base": dead})
        routing = client.put("/v1/channels/routing", json={"default": ["stripe", "sandbox"]})
        assert routing.status_code == 200, routing.text
        product = merchant.product(client, stock=10)
        orders = [merchant.order(client, product["id"], player_id=f"fb-{n}").json() for n in range(4)]
        assert all(o["channel"] == "sandbox" and o["status"] == "pending" for o in orders)
        first = client.get(f"/v1/payments/{orders[0]['payment']['id']}").json()
        assert [(a["channel"], a["outcome"], a["error_code"]) for a in first["attempts"]] == [
            ("stripe", "failed", "channel_unreachable"), ("sandbox", "succeeded", None)]
        fourth = client.get(f"/v1/payments/{orders[3]['payment']['id']}").json()
        assert [a["channel"] for a in fourth["attempts"]] == ["sandbox"], "an open breaker skips stripe"
        state = {c["channel"]: c for c in client.get("/v1/channels").json()["data"]}
        assert state["stripe"]["state"] == "open" and state["stripe"]["failures"] == 3
        assert state["sandbox"]["state"] == "closed"
        client.post(f"/v1/sandbox/payments/{orders[0]['payment']['id']}/succeed")
        wait_for(lambda: client.get(f"/v1/orders/{orders[0]['id']}").json()["status"] == "fulfilled")
        fast_server.clock.advance(seconds=fast_server.config.channels.breaker_cooldown_s + 1)
        assert {c["channel"]: c["state"] for c in client.get("/v1/channels").json()["data"]}["stripe"] == "closed"


def test_breaker_closes_when_the_provider_answers_again(fast_server, stripe_standin):
    standin, url = stripe_standin
    merchant = fast_server.new_merchant()
    dead = f"http://127.0.0.1:{free_port()}"
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json=_stripe_settings(dead, standin))
        client.put("/v1/channels/routing", json={"default": ["stripe", "sandbox"]})
        product = merchant.product(client)
        for n in range(3):
            merchant.order(client, product["id"], player_id=f"down-{n}")
        assert {c["channel"]: c["state"] for c in client.get("/v1/channels").json()["data"]}["stripe"] == "open"
        client.put("/v1/channels/stripe", json=_stripe_settings(url, standin))  # the provider is back
        fast_server.clock.advance(seconds=fast_server.config.channels.breaker_cooldown_s + 1)
        order = merchant.order(client, product["id"], player_id="back").json()
        assert order["channel"] == "stripe"
        stripe = {c["channel"]: c for c in client.get("/v1/channels").json()["data"]}["stripe"]
        assert (stripe["state"], stripe["failures"]) == ("closed", 0)


def test_a_lost_callback_is_recovered_by_the_janitor(fast_server):
    merchant = fast_server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        order = merchant.order(client, product["id"], player_id="lost", metadata={"sandbox_outcome": "lost_callback"}).json()
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        time.sleep(0.3)
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending", "no callback came"
        fast_server.clock.advance(seconds=fast_server.config.channels.janitor_schedule_s[0] + 1)
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
        events = client.get(f"/v1/orders/{order['id']}/events").json()["data"]
        cause = events[1]["cause"]  # the janitor's own event id: unguessable, not made of the payment id
        assert cause.startswith("callback:query:") and order["payment"]["id"] not in cause and len(cause) > 30


def test_a_timeout_leaves_the_payment_unknown_until_the_janitor_gives_up_with_an_alert(fast_server):
    silent = _Silent()
    merchant = fast_server.new_merchant()
    try:
        with merchant.client() as client:
            client.put("/v1/channels/stripe", json={"secret_key": "sk_test_x", "webhook_secret": "whsec_x", "api_base": silent.url})
            product = merchant.product(client)
            order = merchant.order(client, product["id"], player_id="timeout", channel="stripe").json()
            assert order["status"] == "pending" and order["payment"]["status"] == "unknown"
            payment = client.get(f"/v1/payments/{order['payment']['id']}").json()
            assert [(a["channel"], a["outcome"], a["error_code"]) for a in payment["attempts"]] == [
                ("stripe", "unknown", "channel_timeout")]
            created_ms = fast_server.clock.now_ms()
            for age_s in fast_server.config.channels.janitor_schedule_s:  # ages counted from the creation
                fast_server.clock.advance(seconds=created_ms / 1000 + age_s - fast_server.clock.now_ms() / 1000)
                wait_for(lambda: fast_server.services.scheduler.completed_as_of_ms("payment_janitor")
                         >= fast_server.clock.now_ms(), timeout_s=20)
            alerts = wait_for(lambda: client.get("/v1/alerts", params={"kind": "payment_unresolved"}).json()["data"], timeout_s=20)
            assert alerts[0]["object_id"] == order["payment"]["id"] and alerts[0]["severity"] == "critical"
            assert client.get(f"/v1/payments/{order['payment']['id']}").json()["status"] == "unknown", "never guessed"
            assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "expired"
            resolved = client.post(f"/v1/alerts/{alerts[0]['id']}/resolve")
            assert resolved.status_code == 200 and resolved.json()["resolved"] is True
    finally:
        silent.stop()


def test_fx_prices_an_order_in_the_players_currency(server):
    merchant = server.new_merchant()
    with server.admin() as admin:
        rates = admin.put("/v1/admin/fx_rates", json={"rates": [{"base": "USD", "quote": "JPY", "rate": "151.37"},
                                                                {"base": "USD", "quote": "KWD", "rate": "0.3071"}]})
        assert rates.status_code == 200, rates.text
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 1999})
        jpy = merchant.order(client, product["id"], currency="JPY", quantity=2).json()
        assert jpy["items"][0]["unit_amount"] == 3026 and jpy["amount"] == 6052  # 19.99 * 151.37 = 3025.89 -> 3026
        assert jpy["fx"]["base_currency"] == "USD" and jpy["fx"]["rate"] == "151.37"
        kwd = merchant.order(client, product["id"], currency="KWD").json()
        assert kwd["amount"] == 6139  # 19.99 * 0.3071 = 6.138929 KWD -> 6.139 (3 decimals)
        direct = merchant.order(client, product["id"]).json()
        assert direct["fx"] is None and direct["amount"] == 1999
        none = merchant.order(client, product["id"], currency="GBP")
        assert none.status_code == 400 and none.json()["error"]["code"] == "currency_not_supported"


def test_a_forged_provider_callback_gets_the_providers_failure_reply(merchant, stripe_standin):
    standin, url = stripe_standin
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json=_stripe_settings(url, standin))
        product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="forged", channel="stripe").json()
    intent = {"id": "pi_forged", "object": "payment_intent", "amount": 500, "currency": "usd", "status": "succeeded",
              "metadata": {"apss_payment_id": order["payment"]["id"]}}
    forged = signed_callback_request("payment_intent.succeeded", intent, secret="whsec_not_the_merchants",
                                     now_s=merchant.server.clock.now_ms() // 1000)
    answer = httpx.post(f"{merchant.server.base_url}/v1/channels/stripe/webhook/{merchant.id}", content=forged.body,
                        headers=forged.headers)
    assert answer.status_code == 400 and answer.content == b""
    with merchant.client() as client:
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "pending"
