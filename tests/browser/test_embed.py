"""The embeddable checkout in a real browser: a store page served from one localhost port (a tiny
http.server here) loads /js/apss.js from APSS (the real server on another port), starts a
checkout with the merchant's publishable key (a real CORS preflight), and the player pays in the
sandbox inside the overlay; the page receives `paid` by postMessage and the order is fulfilled.
A store page from an origin the merchant did not list cannot frame the checkout at all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import playwright.sync_api as playwright_api
import pytest

from tests.browser.test_browser import CHROMIUM, LAUNCH_ARGS
from tests.conftest import wait_for

expect = playwright_api.expect


class _Store:
    """A merchant's website: one page, whose HTML the test sets."""

    def __init__(self) -> None:
        self.html = "<!doctype html><title>empty</title>"
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = store.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def stores() -> Iterator[tuple[_Store, _Store]]:
    listed, unlisted = _Store(), _Store()
    yield listed, unlisted
    listed.close()
    unlisted.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    assert CHROMIUM.exists(), "apt-get install -y chromium fonts-noto-cjk"
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def _shop_page(apss: str, options: str) -> str:
    """The store's page: the embed script from APSS, and a Buy button that opens the checkout."""
    return (f"<!doctype html><html><head><title>Shop</title></head><body><h1>Shop</h1><button id=buy>Buy</button>"
            f"<script src='{apss}/js/apss.js'></script><script>window.apssEvents=[];"
            "document.getElementById('buy').addEventListener('click',function(){"
            f"APSS.openCheckout(Object.assign({options},{{onEvent:function(e){{window.apssEvents.push(e);}}}}))"
            ".then(function(h){window.apssHandle=h;},function(e){window.apssError=e.code||e.message;});});"
            "</script></body></html>")


def _events(page) -> list[dict]:
    return page.evaluate("window.apssEvents")


def test_a_store_page_embeds_the_checkout_and_hears_it_paid(server, chromium, stores):
    listed, unlisted = stores
    merchant = server.new_merchant(name="Embed Studio")
    with merchant.client() as client:
        assert client.patch("/v1/account", json={"allowed_origins": [listed.origin]}).status_code == 200
        pk = client.get("/v1/account").json()["publishable_key"]
        product = merchant.product(client, name="Dragon Sword", stock=3, browser_sellable=True)
    listed.html = _shop_page(server.base_url, f"{{publishableKey:'{pk}',productId:'{product['id']}',"
                                              "playerId:'web-player',mode:'overlay'}")
    context = chromium.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(listed.origin + "/")
        page.click("#buy")
        page.wait_for_function("window.apssHandle || window.apssError")
        assert page.evaluate("window.apssError || null") is None
        order_id = page.evaluate("window.apssHandle.orderId")
        frame = page.frame_locator("iframe[data-apss-checkout]")
        expect(frame.locator("#total")).to_have_text("$5.00")
        frame.locator("#pay").click()
        frame.locator("#sandbox-pay").click()
        expect(frame.locator("#success")).to_be_visible()
        page.wait_for_function("window.apssEvents.some(function(e){return e.type==='paid'})")
        paid = next(e for e in _events(page) if e["type"] == "paid")
        assert paid["orderId"] == order_id and paid["status"] in ("paid", "fulfilled")
        with merchant.client() as client:
            wait_for(lambda: client.get(f"/v1/orders/{order_id}").json()["status"] == "fulfilled")
            order = client.get(f"/v1/orders/{order_id}").json()
            inventory = client.get("/v1/players/web-player/inventory").json()
        assert order["player_id"] == "web-player" and order["metadata"] == {"apss_source": "publishable_key"}
        assert any(item["quantity"] == 1 for item in inventory["items"]), inventory
        frame.locator("#close-checkout").click()  # the checkout's own close button: `closed`, overlay gone
        page.wait_for_function("window.apssEvents.some(function(e){return e.type==='closed'})")
        expect(page.locator("[data-apss-overlay]")).to_have_count(0)
        assert [e["type"] for e in _events(page)] == ["paid", "closed"]  # each once, nothing else

        # A page of an origin the merchant did not list: the same script, the checkout's own URL.
        with merchant.client() as client:
            other = merchant.order(client, product["id"], player_id="web-player-2").json()
        unlisted.html = _shop_page(server.base_url, f"{{url:'{other['checkout_url']}',mode:'overlay'}}")
        stranger = context.new_page()
        with stranger.expect_console_message(lambda m: "frame-ancestors" in m.text):
            stranger.goto(unlisted.origin + "/")
            stranger.click("#buy")
        iframe = stranger.locator("iframe[data-apss-checkout]")
        expect(iframe).to_have_count(1)
        content = iframe.element_handle().content_frame()
        assert content is None or not content.url.startswith(server.base_url), content.url
        assert content is None or content.locator("#checkout").count() == 0
        assert _events(stranger) == []
        csp = httpx.get(other["checkout_url"]).headers["content-security-policy"]
        assert listed.origin in csp and unlisted.origin not in csp, csp
    finally:
        context.close()
