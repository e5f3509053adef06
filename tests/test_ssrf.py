"""The SSRF rules for URLs a merchant gives, through the real server over HTTP (DESIGN.md,
Security): live merchants' webhook URLs are https to public addresses only, checked when saved and
again after DNS when connecting; test merchants may use localhost and private networks; a
channel's `api_base` override is for test merchants or allow-listed hosts (https when live)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from apss.clock import TestClock
from apss.errors import TargetNotAllowed
from apss.services.outbound import TargetClients, address_refused
from tests.conftest import Merchant, RunningServer, assert_error, wait_for

# A name of the reserved .test domain that this module's resolver points at the loopback.
REBOUND_HOST = "hooks.example.test"


class Listener:
    """A TCP port on the loopback that counts the connections it accepts and answers HTTP 200:
    "nothing was sent" means not even a connection (so not even a TLS ClientHello)."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with self._lock:
                self._accepted += 1
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._socket.close()


class Served:
    """A server of this module with the loop it runs on (to emit events from the app's own services)."""

    def __init__(self, server: RunningServer, loops: list[asyncio.AbstractEventLoop]) -> None:
        self.server = server
        self._loops = loops

    def emit(self, merchant: Merchant) -> str:
        services = self.server.services

        async def run() -> str:
            return await services.db.write(lambda tx: services.webhooks.emit(
                tx, merchant_id=merchant.id, type="alert.created", data={"id": "alr_ssrf", "object": "alert"}))

        return asyncio.run_coroutine_threadsafe(run(), self._loops[0]).result(timeout=30)


def _start(tmp_path_factory, env: dict[str, str]) -> Served:
    server = RunningServer(db_path=tmp_path_factory.mktemp("ssrf") / "apss.sqlite", clock=TestClock(), env=env)
    loops: list[asyncio.AbstractEventLoop] = []

    async def capture_loop(app) -> None:
        loops.append(asyncio.get_running_loop())

    server.app.on_startup.append(capture_loop)
    server.start()
    assert loops, "the startup hooks ran"
    return Served(server, loops)


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[Served]:
    """The default rules."""
    served = _start(tmp_path_factory, {})
    yield served
    served.server.stop()


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory) -> Iterator[Served]:
    """A self-hosted setup: private webhook targets allowed for live merchants, one provider
    stand-in host allowed as an api_base."""
    served = _start(tmp_path_factory, {"APSS_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
                                       "APSS_CHANNELS_API_BASE_HOSTS_ALLOWED": '["stripe-standin.internal"]'})
    yield served
    served.server.stop()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


@pytest.fixture
def rebound_dns(monkeypatch, listener):
    """REBOUND_HOST resolves to the loopback, through the process's real resolver function, the
    way a hostile DNS answer would: the check must happen after resolution, not on the name."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name and name.rstrip(".").lower() == REBOUND_HOST:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _endpoint(client, url: str) -> dict:
    created = client.post("/v1/webhook_endpoints", json={"url": url, "events": ["*"]})
    assert created.status_code == 201, created.text
    return created.json()


def _first_attempt(client, endpoint_id: str) -> dict:
    def attempted():
        log = client.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries").json()["data"]
        return next((d for d in log if d["attempts"] >= 1 or d["status"] != "pending"), None)

    return wait_for(attempted, timeout_s=15)


# -- checked when saved ---------------------------------------------------------------------------------
REFUSED_FOR_LIVE = [
    "http://hooks.example.com/apss",  # https only
    "https://127.0.0.1/h", "https://127.0.0.1:8443/h", "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/h", "https://10.1.2.3/h", "https://172.16.5.4/h", "https://192.168.0.10/h",
    "https://100.64.0.1/h", "https://0.0.0.0/h", "https://[::]/h", "https://224.0.0.1/h",
    "https://240.0.0.1/h", "https://255.255.255.255/h", "https://[fe80::1]/h", "https://[fc00::1]/h",
    "https://[ff02::1]/h", "https://[::ffff:127.0.0.1]/h", "https://[::ffff:a9fe:a9fe]/h",
    "https://localhost/h", "https://LOCALHOST./h", "https://api.localhost/h",
    "https://2130706433/h", "https://0x7f.1/h", "https://127.1/h",  # legacy spellings of 127.0.0.1
]


@pytest.mark.parametrize("url", REFUSED_FOR_LIVE)
def test_a_live_merchant_cannot_save_a_webhook_url_to_a_non_public_target(server, url):
    merchant = server.new_merchant("Live Hooks", mode="live")
    with merchant.client() as client:
        refused = client.post("/v1/webhook_endpoints", json={"url": url, "events": ["order.paid"]})
        assert_error(refused, 400, "invalid_request_error", "url_not_allowed", "url")
        assert client.get("/v1/webhook_endpoints").json()["data"] == [], "nothing was saved"


def test_a_live_merchant_cannot_move_an_endpoint_to_a_non_public_target(server):
    merchant = server.new_merchant("Live Hooks", mode="live")
    with merchant.client() as client:
        for url in ("https://hooks.example.com/apss", "https://93.184.215.14/h", "https://[2606:4700::1111]/h"):
            _endpoint(client, url)
        endpoint = _endpoint(client, "https://hooks.example.com/moved")
        for url in ("https://169.254.169.254/latest/meta-data/", "http://hooks.example.com/moved",
                    "https://user:hunter2@127.0.0.1/h"):
            refused = client.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"url": url})
            error = assert_error(refused, 400, "invalid_request_error", "url_not_allowed", "url")
            assert "hunter2" not in refused.text and "hunter2" not in error["message"], "no credentials echoed"
        assert client.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()["url"] == "https://hooks.example.com/moved"


def test_a_test_merchant_may_use_localhost_and_private_networks_but_not_link_local(server):
    merchant = server.new_merchant("Dev Hooks", mode="test")
    with merchant.client() as client:
        for url in ("http://localhost:8000/h", "http://localhost./h", "http://127.0.0.1:9/h", "http://10.0.0.2/h",
                    "http://[::1]:9/h", "https://192.168.1.5/h"):
            _endpoint(client, url)
        # Link-local (the cloud metadata service), multicast and unspecified: never a receiver.
        for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/h", "http://0.0.0.0:9/h",
                    "http://224.0.0.1/h"):
            refused = client.post("/v1/webhook_endpoints", json={"url": url, "events": ["*"]})
            assert_error(refused, 400, "invalid_request_error", "url_not_allowed", "url")


# -- checked when connecting, after DNS ---------------------------------------------------------------------
def test_a_live_hostname_resolving_to_the_loopback_is_never_connected_to(strict, listener, rebound_dns):
    url = f"https://{REBOUND_HOST}:{listener.port}/hooks"
    live = strict.server.new_merchant("Rebound Live", mode="live")
    with live.client() as client:
        endpoint = _endpoint(client, url)  # a public-looking name: accepted when saved
        strict.emit(live)
        attempt = _first_attempt(client, endpoint["id"])
        assert (attempt["last_error"], attempt["last_status_code"]) == ("target_not_allowed", None), attempt
        assert attempt["status"] == "failed", "a refused target is not retried: it would be refused again"
    assert listener.accepted == 0, "not even a connection was made"
    # The same name and port for a test merchant (development) is connected to: the listener works.
    dev = strict.server.new_merchant("Rebound Dev", mode="test")
    with dev.client() as client:
        endpoint = _endpoint(client, f"http://{REBOUND_HOST}:{listener.port}/hooks")
        strict.emit(dev)
        attempt = _first_attempt(client, endpoint["id"])
        assert (attempt["status"], attempt["last_status_code"]) == ("succeeded", 200), attempt
    assert listener.accepted >= 1


def test_allow_private_targets_lets_live_merchants_reach_private_hosts_over_https(relaxed, listener, rebound_dns):
    live = relaxed.server.new_merchant("Self-hosted Live", mode="live")
    with live.client() as client:
        _endpoint(client, "https://10.0.0.7/h")
        _endpoint(client, "https://localhost/h")
        assert_error(client.post("/v1/webhook_endpoints", json={"url": "http://10.0.0.7/h", "events": ["*"]}), 400,
                     "invalid_request_error", "url_not_allowed", "url")
        assert_error(client.post("/v1/webhook_endpoints", json={"url": "https://169.254.169.254/", "events": ["*"]}),
                     400, "invalid_request_error", "url_not_allowed", "url")
        endpoint = _endpoint(client, f"https://{REBOUND_HOST}:{listener.port}/hooks")
        relaxed.emit(live)
        attempt = _first_attempt(client, endpoint["id"])
        assert attempt["last_error"] != "target_not_allowed", attempt
    assert listener.accepted >= 1, "the private target was connected to (the TLS handshake then fails)"


# -- channel api_base overrides -------------------------------------------------------------------------------
SECRET_KEY = "sk_live_never_echo_0123456789"
WEBHOOK_SECRET = "whsec_never_echo_0123456789"


def _stripe(client, api_base: str | None):
    settings = {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET}
    if api_base is not None:
        settings["api_base"] = api_base
    return client.put("/v1/channels/stripe", json=settings)


def test_a_live_api_base_must_be_an_allowed_host_over_https(strict, relaxed, caplog):
    caplog.set_level(logging.DEBUG)
    for served in (strict, relaxed):
        live = served.server.new_merchant("Live Channels", mode="live")
        with live.client() as client:
            for api_base in ("http://127.0.0.1:9", "https://169.254.169.254", "https://api.attacker.example",
                             "http://stripe-standin.internal"):
                refused = _stripe(client, api_base)
                assert_error(refused, 400, "invalid_request_error", "api_base_not_allowed", "api_base")
                assert SECRET_KEY not in refused.text and WEBHOOK_SECRET not in refused.text
            paypal = client.put("/v1/channels/paypal", json={"client_id": "c", "client_secret": SECRET_KEY,
                                                             "webhook_id": "w", "api_base": "https://10.0.0.1"})
            assert_error(paypal, 400, "invalid_request_error", "api_base_not_allowed", "api_base")
            assert client.get("/v1/channels").json()["data"] == [], "nothing was saved"
            assert _stripe(client, None).status_code == 200, "the provider's own base needs no allow-list"
    live = relaxed.server.new_merchant("Live Stand-in", mode="live")
    with live.client() as client:
        for api_base in ("https://stripe-standin.internal", "https://STRIPE-STANDIN.internal./v1"):
            saved = _stripe(client, api_base)
            assert saved.status_code == 200, saved.text
            assert saved.json()["settings"] == {"api_base": api_base}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET_KEY not in logged and WEBHOOK_SECRET not in logged


def test_a_test_merchant_may_point_api_base_anywhere(strict):
    dev = strict.server.new_merchant("Dev Channels", mode="test")
    with dev.client() as client:
        for api_base in ("http://127.0.0.1:9", "http://stripe-mock:12111", "https://api.stripe.com"):
            saved = _stripe(client, api_base)
            assert saved.status_code == 200, saved.text
        assert_error(_stripe(client, "ftp://127.0.0.1"), 400, "invalid_request_error", "setting_invalid", "api_base")


# -- the rules themselves, and the connect-time check with a resolver of the test's own ------------------------
@pytest.mark.parametrize(("address", "public_only", "private_allowed"), [
    ("93.184.215.14", "ok", "ok"), ("2606:4700::1111", "ok", "ok"), ("::ffff:8.8.8.8", "ok", "ok"),
    ("127.0.0.1", "refused", "ok"), ("::1", "refused", "ok"), ("10.0.0.1", "refused", "ok"),
    ("172.31.255.255", "refused", "ok"), ("192.168.1.1", "refused", "ok"), ("100.64.0.1", "refused", "ok"),
    ("fc00::1", "refused", "ok"), ("::ffff:127.0.0.1", "refused", "ok"), ("64:ff9b::a00:1", "refused", "ok"),
    ("2002:7f00:1::", "refused", "ok"),
    ("169.254.169.254", "refused", "refused"), ("fe80::1", "refused", "refused"), ("::ffff:a9fe:a9fe", "refused", "refused"),
    ("64:ff9b::a9fe:a9fe", "refused", "refused"), ("0.0.0.0", "refused", "refused"), ("::", "refused", "refused"),
    ("224.0.0.1", "refused", "refused"), ("ff02::1", "refused", "refused"), ("255.255.255.255", "refused", "refused"),
    ("240.0.0.1", "refused", "refused"), ("fec0::1", "refused", "refused"), ("::7f00:1", "refused", "refused"),
])
def test_which_addresses_a_request_may_reach(address, public_only, private_allowed):
    parsed = ipaddress.ip_address(address)
    assert ("refused" if address_refused(parsed, private_allowed=False) else "ok") == public_only
    assert ("refused" if address_refused(parsed, private_allowed=True) else "ok") == private_allowed


def test_every_resolved_address_is_checked_and_only_checked_ones_are_connected_to(listener):
    """A rebinding answer hedges with a public address first: one refused address refuses all."""
    answers = {"mixed.test": ["93.184.215.14", "127.0.0.1"], "mapped.test": ["::ffff:127.0.0.1"],
               "loop.test": ["127.0.0.1"], "nothing.test": []}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    async def run() -> None:
        clients = TargetClients(resolver=resolver)
        try:
            for host in ("mixed.test", "mapped.test", "loop.test"):
                with pytest.raises(TargetNotAllowed) as refused:
                    await clients.public_only.get(f"http://{host}:{listener.port}/")
                assert refused.value.code == "target_not_allowed"
            with pytest.raises(httpx.ConnectError):
                await clients.public_only.get(f"http://nothing.test:{listener.port}/")
            assert listener.accepted == 0
            answer = await clients.private_allowed.get(f"http://loop.test:{listener.port}/")
            assert answer.status_code == 200 and listener.accepted == 1, "the checked address was connected to"
        finally:
            await clients.aclose()

    asyncio.run(run())
