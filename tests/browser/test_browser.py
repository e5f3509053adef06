"""The payer's checkout and the admin dashboard in a real browser: Playwright driving Debian's
Chromium (never `playwright install`: CI has no internet). Every page must load without a
console error and without a request to any host other than the server's own 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import playwright.sync_api as playwright_api
import pytest

from apss.clock import TestClock
from tests.browser.conftest import CHROMIUM
from tests.conftest import ADMIN_TOKEN, RunningServer, wait_for

expect = playwright_api.expect

ARTIFACTS = Path(__file__).resolve().parent / "screenshots"  # ignored by git
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}

@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[RunningServer]:
    # Never skipped: without Debian's Chromium the run stops at its start (conftest.py).
    running = RunningServer(db_path=tmp_path_factory.mktemp("browser") / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        # launch() gives every run a fresh temporary profile (user data dir) of its own.
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Guard:
    """Collects console errors, page errors and requests to other hosts of one browser context."""

    def __init__(self, context, host: str) -> None:
        self.problems: list[str] = []
        self.allowed_statuses: set[int] = set()
        self._host = host
        context.on("request", self._request)
        context.on("page", self._page)

    def _request(self, request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "about", "blob"):
            return
        if parts.hostname != self._host:
            self.problems.append(f"request to another host: {request.url}")

    def _page(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message) -> None:
        if message.type != "error":
            return
        expected = any(f"status of {status}" in message.text for status in self.allowed_statuses)
        if not expected:
            self.problems.append(f"console error: {message.text}")


@pytest.fixture
def open_context(browser, web):
    contexts: list[tuple] = []

    def opener(**options):
        context = browser.new_context(**options)
        context.set_default_timeout(15_000)
        guard = Guard(context, "127.0.0.1")
        contexts.append((context, guard))
        return context, guard

    yield opener
    problems = [problem for _, guard in contexts for problem in guard.problems]
    for context, _ in contexts:
        context.close()
    assert problems == []


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _order(merchant, *, prices: dict, currency: str, return_url: str) -> dict:
    with merchant.client() as client:
        product = merchant.product(client, name="Dragon Sword", prices=prices, stock=5)
        response = merchant.order(client, product["id"], player_id="browser-player", currency=currency, return_url=return_url)
    assert response.status_code == 201, response.text
    return response.json()


def _order_status(merchant, order_id: str) -> str:
    with merchant.client() as client:
        return client.get(f"/v1/orders/{order_id}").json()["status"]


def _login(page, web) -> None:
    page.goto(f"{web.base_url}/admin")
    expect(page).to_have_url(f"{web.base_url}/admin/login")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login")
    expect(page).to_have_url(f"{web.base_url}/admin")


def test_player_pays_then_admin_sees_and_refunds(web, open_context):
    merchant = web.new_merchant(name="Browser Studio")
    return_url = f"{web.base_url}/healthz"
    order = _order(merchant, prices={"USD": 500}, currency="USD", return_url=return_url)

    context, _ = open_context(viewport=PHONE, locale="en-US")
    page = context.new_page()
    page.goto(order["checkout_url"])
    expect(page.locator("#total")).to_have_text("$5.00")
    expect(page.locator("#countdown")).to_have_text(re.compile(r"^1[45]:\d\d$"))  # ticks down from the server's clock
    expect(page.locator(".channels li.current")).to_have_attribute("data-channel", "sandbox")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scroll on a phone"
    _shot(page, "checkout-en-phone")
    page.click("#pay")
    expect(page.locator("#sandbox-pay")).to_be_visible()
    _shot(page, "sandbox-payer-phone")
    page.click("#sandbox-pay")
    expect(page.locator("#success")).to_be_visible()
    expect(page.locator("#back")).to_have_attribute("href", return_url)
    _shot(page, "checkout-paid-phone")
    wait_for(lambda: _order_status(merchant, order["id"]) == "fulfilled")

    admin, _ = open_context(viewport={"width": 1280, "height": 900})
    page = admin.new_page()
    _login(page, web)
    page.goto(f"{web.base_url}/admin?merchant={merchant.id}")
    today = page.locator("#revenue-USD rect.bar").last
    expect(today).to_have_attribute("data-value", "500")
    expect(today.locator("title")).to_contain_text("$5.00")
    expect(page.locator("#orders circle.point").last).to_have_attribute("data-value", "1")
    expect(page.locator("#counter-paid_today")).to_have_text("1")
    expect(page.locator("#counter-revenue_today")).to_have_text("$5.00")
    _shot(page, "admin-overview")

    page.goto(f"{web.base_url}/admin/orders?merchant={merchant.id}&status=fulfilled")
    row = page.locator(f"tr[data-order='{order['id']}']")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "fulfilled")
    row.locator("a").click()
    expect(page.locator("#timeline li")).to_have_count(3)
    expect(page.locator("#refund-amount")).to_have_value("5.00")  # the whole order by default
    page.click("#refund")
    expect(page.locator("#confirm-amount")).to_have_text("$5.00")
    page.click("#confirm-refund")
    expect(page.locator("#notice")).to_contain_text("refund")
    wait_for(lambda: _order_status(merchant, order["id"]) == "refunded")
    page.reload()
    expect(page.locator("h1 [data-status]")).to_have_attribute("data-status", "refunded")
    expect(page.locator("#refund")).to_have_count(0)
    _shot(page, "admin-order-refunded")


def test_chinese_checkout_shows_yuan(web, open_context):
    merchant = web.new_merchant(name="龙之工作室")
    order = _order(merchant, prices={"CNY": 12345}, currency="CNY", return_url=f"{web.base_url}/healthz")
    context, _ = open_context(viewport=PHONE, locale="zh-CN")  # Accept-Language: zh-CN
    page = context.new_page()
    page.goto(order["checkout_url"])
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(page.locator("h1")).to_have_text("收银台")
    expect(page.locator("#total")).to_have_text("¥123.45")
    _shot(page, "checkout-zh-phone")
    page.goto(order["checkout_url"] + "?lang=en")
    expect(page.locator("#total")).to_have_text("CN¥123.45")
    page.goto(order["checkout_url"] + "?lang=zh")
    page.click("#pay")
    expect(page.locator("#sandbox-pay")).to_have_text("支付")
    expect(page.locator(".amount")).to_have_text("¥123.45")
    _shot(page, "sandbox-payer-zh-phone")


def test_login_refuses_wrong_token_and_missing_csrf(web, open_context):
    context, guard = open_context()
    guard.allowed_statuses |= {401, 403}  # the refusals under test
    page = context.new_page()
    page.goto(f"{web.base_url}/admin/login")
    page.fill("#token", "adm_wrong_token_0123456789")
    page.click("#login")
    expect(page.locator("#login-error")).to_contain_text("Invalid admin token")
    assert not [c for c in context.cookies() if c["name"] == "apss_admin"]

    page.evaluate("document.querySelector('input[name=csrf]').remove()")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login")
    expect(page.locator("h1")).to_have_text("Form expired")
    assert not [c for c in context.cookies() if c["name"] == "apss_admin"]
    _shot(page, "admin-login-csrf-refused")

    _login(page, web)
    session = next(c for c in context.cookies() if c["name"] == "apss_admin")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]
    forged = context.request.post(f"{web.base_url}/admin/logout", form={"csrf": "not-the-token"}, max_redirects=0)
    assert forged.status == 403
    page.click("#logout")
    expect(page).to_have_url(f"{web.base_url}/admin/login")
    page.goto(f"{web.base_url}/admin")
    expect(page).to_have_url(f"{web.base_url}/admin/login")
