"""Every admin dashboard page in Chromium, at 1280 px: content checked against the API and the
provider stand-ins (a batch's net payable, a reconciliation discrepancy, a webhook delivery's
response code as the receiver answered it), the actions done from the pages (mark paid, statement
upload, retry, replay since, a partial refund with its confirmation step), every button inside the
viewport, no raw Python value (`None`) in any page's text, and a screenshot of each page."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from apss.clock import format_rfc3339
from tests.browser.test_browser import (  # noqa: F401
    ARTIFACTS,
    _login,
    browser,
    expect,
    open_context,
    web,
)
from tests.conftest import wait_for
from tests.statements import render_sandbox_statement, statement_rows

DESKTOP = {"width": 1280, "height": 900}
_DAY_S = 86_400


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A merchant's webhook endpoint that refuses everything with 418 (a permanent failure), and
    records the event ids it was sent."""

    received: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        found = re.search(rb'"id":"(evt_[^"]+)"', body)
        self.received.append(found.group(1).decode() if found else "")
        self.send_response(418)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[str]]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", _Receiver.received
    httpd.shutdown()


def _check_page(page, name: str) -> None:
    """No raw Python value in the text, every button inside the 1280 px viewport, a screenshot."""
    text = page.locator("body").inner_text()
    assert not re.search(r"\bNone\b", text), f"{name}: a raw None on the page"
    outside = page.evaluate("""() => [...document.querySelectorAll('button, .button, input[type=submit]')]
        .map(e => [e.textContent.trim() || e.value, e.getBoundingClientRect()])
        .filter(([, r]) => r.width > 0 && (r.left < 0 || r.right > window.innerWidth))
        .map(([label, r]) => label + ' at ' + Math.round(r.left) + '-' + Math.round(r.right))""")
    assert outside == [], f"{name}: buttons outside the viewport: {outside}"
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def _paid_order(merchant, client, product_id: str) -> dict:
    order = merchant.order(client, product_id).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
    return order


@pytest.fixture(scope="module")
def shop(web, receiver):
    """A merchant with two paid orders, a failing webhook endpoint, a daily report and a settled batch."""
    merchant = web.new_merchant(name="Ledger Studio")
    hook_url, received = receiver
    with merchant.client() as client:
        assert client.put("/v1/account/settlement_schedule",
                          json={"cycle": "manual", "reserve_bps": 1000, "reserve_hold_days": 7}).status_code == 200
        endpoint = client.post("/v1/webhook_endpoints", json={"url": hook_url, "events": ["*"]}).json()
        product = merchant.product(client, name="Moon Lantern", prices={"USD": 500})
        paid_at_ms = web.clock.now_ms()
        orders = [_paid_order(merchant, client, product["id"]) for _ in range(2)]
        web.clock.advance(seconds=_DAY_S)
        day = format_rfc3339(paid_at_ms - paid_at_ms % (_DAY_S * 1000))
        report = client.post("/v1/reports", json={"period": "daily", "start": day})
        assert report.status_code in (200, 201), report.text
        [batch] = client.post("/v1/settlements/run").json()["data"]
        wait_for(lambda: len(received) >= 4)
    return {"merchant": merchant, "orders": orders, "endpoint": endpoint, "report": report.json(), "batch": batch,
            "day": day[:10], "received": received}


@pytest.fixture
def admin_page(open_context, web):
    context, _ = open_context(viewport=DESKTOP, locale="en-US")
    page = context.new_page()
    _login(page, web)
    return page


def test_settlements_reports_and_overview(web, shop, admin_page):
    page, merchant, batch = admin_page, shop["merchant"], shop["batch"]
    assert batch["net_payable"] > 0 and batch["reserve_held"] > 0
    page.goto(f"{web.base_url}/admin?merchant={merchant.id}")
    expect(page.locator("#merchant-name")).to_have_text("Ledger Studio")
    _check_page(page, "overview")
    page.goto(f"{web.base_url}/admin")  # no ?merchant=: the one looked at last
    expect(page.locator("#merchant-name")).to_have_text("Ledger Studio")

    page.goto(f"{web.base_url}/admin/settlements?merchant={merchant.id}")
    row = page.locator(f"tr[data-settlement='{batch['id']}']")
    expect(row.locator("[data-net-payable]")).to_have_text(f"${batch['net_payable'] / 100:,.2f}")
    expect(row).to_contain_text(f"${batch['gross'] / 100:,.2f}")
    expect(row).to_contain_text(f"${batch['reserve_held'] / 100:,.2f}")
    _check_page(page, "settlements")
    csv = page.context.request.get(f"{web.base_url}{row.locator('[data-csv]').get_attribute('href')}")
    assert csv.status == 200 and batch["id"] in csv.text() and "net" in csv.text().splitlines()[0]
    row.locator("input[name=payout_reference]").fill("WIRE-2026-0001")
    row.locator("[data-mark-paid]").click()
    expect(page.locator("#notice")).to_contain_text("settlement marked paid")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "paid")
    expect(row).to_contain_text("WIRE-2026-0001")
    with merchant.client() as client:
        stored = client.get(f"/v1/settlements/{batch['id']}").json()
    assert (stored["status"], stored["payout_reference"]) == ("paid", "WIRE-2026-0001")
    row.locator("a.ids").click()
    expect(page.locator("#lines tr")).to_have_count(1 + len(stored["lines"]))
    _check_page(page, "settlement")

    report = shop["report"]
    page.goto(f"{web.base_url}/admin/reports?merchant={merchant.id}")
    expect(page.locator(f"tr[data-report='{report['id']}']")).to_contain_text("$10.00 gross")
    page.fill("#summary-from", shop["day"])
    page.fill("#summary-to", shop["day"])
    page.click("#summary-show")
    usd = page.locator("#summary tr[data-currency=USD]")
    expect(usd.locator("[data-net-of-refunds]")).to_have_text("$10.00")
    _check_page(page, "reports")
    report_row = page.locator(f"tr[data-report='{report['id']}']")
    csv = page.context.request.get(f"{web.base_url}{report_row.locator('[data-csv]').get_attribute('href')}")
    assert csv.status == 200 and "currency,USD" in csv.text().replace('"', "") and ",1000," in csv.text()
    report_row.locator("[data-view]").click()
    expect(page.locator("#report-product")).to_contain_text("$10.00")
    _check_page(page, "report")


def test_reconciliation_upload_shows_the_discrepancy(web, shop, admin_page, tmp_path):
    page, merchant = admin_page, shop["merchant"]
    rows = statement_rows(web.db_path, merchant.id)
    assert len(rows) == 2
    rows[1]["amount"] = str(int(rows[1]["amount"]) + 1)  # the provider says one cent more
    statement = tmp_path / "statement.csv"
    statement.write_bytes(render_sandbox_statement(rows))
    page.goto(f"{web.base_url}/admin/reconciliation?merchant={merchant.id}")
    _check_page(page, "reconciliation")
    page.select_option("#statement-channel", "sandbox")
    page.set_input_files("#statement-file", str(statement))
    page.click("#statement-upload")
    expect(page.locator("#notice")).to_contain_text("statement reconciled")
    wrong = page.locator("#items tr.discrepancy")
    expect(wrong).to_have_count(1)
    expect(wrong).to_have_attribute("data-item-status", "amount_mismatch")
    expect(wrong.locator("[data-ours]")).to_have_text("$5.00")
    expect(wrong.locator("[data-theirs]")).to_have_text("$5.01")
    expect(page.locator("#items tr[data-item-status=matched]")).to_have_count(1)
    _check_page(page, "reconciliation-run")
    with merchant.client() as client:
        [run] = client.get("/v1/reconciliation/runs").json()["data"]
    assert run["counts"]["amount_mismatch"] == 1 and run["counts"]["matched"] == 1 and run["source_name"] == "statement.csv"


def test_webhook_deliveries_retry_and_replay(web, shop, admin_page):
    page, merchant, received = admin_page, shop["merchant"], shop["received"]
    with merchant.client() as client:
        def failed():
            found = client.get("/v1/webhook_deliveries", params={"status": "failed", "limit": 100}).json()["data"]
            return found if len(found) >= 4 else None
        delivery = failed()[-1]
    assert delivery["last_status_code"] == 418 and delivery["event_id"] in received
    page.goto(f"{web.base_url}/admin/webhooks?merchant={merchant.id}")
    row = page.locator(f"tr[data-delivery='{delivery['id']}']")
    expect(row.locator("[data-response-code]")).to_have_text("418")
    expect(row.locator("[data-attempts]")).to_have_text(str(delivery["attempts"]))
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "failed")
    _check_page(page, "webhooks")
    before = received.count(delivery["event_id"])
    row.locator("[data-retry]").click()
    expect(page.locator("#notice")).to_contain_text("delivery retried")
    wait_for(lambda: received.count(delivery["event_id"]) == before + 1)

    sent_before = len(received)
    endpoint = page.locator(f"tr[data-endpoint='{shop['endpoint']['id']}']")
    endpoint.locator("[data-replay-since]").fill(f"{shop['day']}T00:00:00")
    endpoint.locator("[data-replay]").click()
    expect(page.locator("#notice")).to_contain_text("events replayed")
    with merchant.client() as client:
        events = {d["event_id"] for d in client.get("/v1/webhook_deliveries", params={"limit": 100}).json()["data"]}
    wait_for(lambda: len(received) >= sent_before + len(events))
    assert set(received[sent_before:]) == events, "every event since then, again"


def test_partial_refund_asks_the_amount_and_a_confirmation(web, shop, admin_page):
    page, merchant = admin_page, shop["merchant"]
    order = shop["orders"][0]
    page.goto(f"{web.base_url}/admin/orders/{order['id']}?merchant={merchant.id}")
    expect(page.locator("#refund-amount")).to_have_value("5.00")  # the rest still refundable
    _check_page(page, "order")
    page.fill("#refund-amount", "9.00")
    page.click("#refund")
    expect(page.locator("#notice")).to_contain_text("refund_amount_too_large")
    page.fill("#refund-amount", "2.00")
    page.click("#refund")
    expect(page.locator("#confirm-amount")).to_have_text("$2.00")
    _check_page(page, "refund-confirm")
    with merchant.client() as client:
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled", "nothing before the confirmation"
    page.click("#confirm-refund")
    expect(page.locator("#notice")).to_contain_text("refund")
    with merchant.client() as client:
        wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "partially_refunded")
        refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
    assert [r["amount"] for r in refunds] == [200]
    page.reload()
    expect(page.locator("#refund-amount")).to_have_value("3.00")
    expect(page.locator("#refunds")).to_contain_text("$2.00")

    for name, path in [("orders", "/admin/orders"), ("products", "/admin/products"), ("alerts", "/admin/alerts")]:
        page.goto(f"{web.base_url}{path}?merchant={merchant.id}")
        _check_page(page, name)
