"""The admin dashboard over plain HTTP (the browser tests cover the flows): every page answers
for a logged-in admin, and nothing answers without a session; the OpenAPI document is complete."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.both_backends


def _login(server) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, follow_redirects=True, timeout=30)
    page = client.get("/admin/login")
    csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
    logged = client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN})
    assert logged.status_code == 200 and "/admin/logout" in logged.text, logged.text[:300]
    return client


def test_every_dashboard_page_answers_for_the_admin_only(server):
    merchant = server.new_merchant("Dashboard Studio")
    with merchant.client() as api:
        product = merchant.product(api)
        order = merchant.order(api, product["id"]).json()
    pages = ["/admin", "/admin/live.json", "/admin/orders", f"/admin/orders/{order['id']}", "/admin/products",
             "/admin/alerts", "/admin/settlements", "/admin/reports", "/admin/reconciliation", "/admin/webhooks"]
    anonymous = httpx.Client(base_url=server.base_url, follow_redirects=False)
    for path in pages:
        answer = anonymous.get(f"{path}?merchant={merchant.id}")
        assert answer.status_code in (302, 303, 401), (path, answer.status_code)
    admin = _login(server)
    try:
        for path in pages:
            answer = admin.get(path, params={"merchant": merchant.id})
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            assert "not available yet" not in answer.text, path
        assert order["id"] in admin.get("/admin/orders", params={"merchant": merchant.id}).text
    finally:
        admin.close()


@pytest.mark.sqlite_only  # the document does not depend on the database
def test_openapi_document_lists_the_contract(server):
    document = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    paths = document["paths"]
    for path, method in [("/v1/merchants", "post"), ("/v1/merchants/{merchant_id}/keys", "post"), ("/v1/account", "get"),
                         ("/v1/products", "post"), ("/v1/products/{product_id}", "patch"), ("/v1/orders", "post"),
                         ("/v1/orders/{order_id}/cancel", "post"), ("/v1/orders/{order_id}/events", "get"),
                         ("/v1/sandbox/payments/{payment_id}/succeed", "post"), ("/v1/players/{player_id}/wallet/debit", "post"),
                         ("/v1/channels/{channel}", "put"), ("/v1/channels/routing", "put"),
                         ("/v1/orders/{order_id}/refunds", "post"), ("/v1/settlements", "get"), ("/v1/reports/summary", "get")]:
        assert method in paths[path], (path, method)
    assert "OrderView" in str(document["components"]["schemas"])
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert paths["/v1/orders"]["post"]["responses"]["409"]["content"]["application/json"]["schema"] == error
    assert "202" in paths["/v1/sandbox/payments/{payment_id}/succeed"]["post"]["responses"]


@pytest.mark.sqlite_only  # static assets
def test_schema_ui_loads_only_local_assets(server):
    page = httpx.get(f"{server.base_url}/schema/swagger")
    assert page.status_code == 200
    urls = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", page.text)
    assert urls and all(url.startswith("/schema/assets/") for url in urls), urls
    for url in urls:
        assert httpx.get(f"{server.base_url}{url}").status_code == 200, url


def test_the_admin_adjusts_stock_from_the_products_page(server):
    merchant = server.new_merchant("Stock Studio")
    with merchant.client() as api:
        product = merchant.product(api, stock=10)
    admin = _login(server)
    try:
        page = admin.get("/admin/products", params={"merchant": merchant.id})
        csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
        action = f"/admin/products/{product['id']}/stock?merchant={merchant.id}"
        assert admin.post(action, data={"delta": "-3"}).status_code == 403, "no CSRF token, no change"
        done = admin.post(action, data={"csrf": csrf, "delta": "-3"})
        assert done.status_code == 200 and "stock adjusted" in done.text
        refused = admin.post(action, data={"csrf": csrf, "delta": "-100"})
        assert "out_of_stock" in refused.text
    finally:
        admin.close()
    with merchant.client() as api:
        assert api.get(f"/v1/products/{product['id']}").json()["stock"] == 7


def test_a_huge_stock_delta_from_the_dashboard_is_a_clear_refusal_not_a_500(server):
    merchant = server.new_merchant("Huge Delta Studio")
    with merchant.client() as api:
        product = merchant.product(api, stock=10)
    admin = _login(server)
    try:
        page = admin.get("/admin/products", params={"merchant": merchant.id})
        csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
        action = f"/admin/products/{product['id']}/stock?merchant={merchant.id}"
        # Past what SQLite can hold, past the cap that setting `stock` has, and a removal that big.
        for delta in ("1" + "0" * 30, str(10**12), "-" + "9" * 30):
            refused = admin.post(action, data={"csrf": csrf, "delta": delta})
            assert refused.status_code == 200, (delta, refused.status_code, refused.text[:300])
            assert "Refused: stock_out_of_range" in refused.text, delta
    finally:
        admin.close()
    with merchant.client() as api:
        assert api.get(f"/v1/products/{product['id']}").json()["stock"] == 10, "nothing changed"


def test_every_dashboard_form_refuses_a_post_without_its_csrf_token(server):
    merchant = server.new_merchant("Forged Form Studio")
    with merchant.client() as api:
        product = merchant.product(api)
        order = merchant.order(api, product["id"]).json()
        assert api.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    admin = _login(server)
    try:
        actions = [(f"/admin/orders/{order['id']}/refund", {"amount": "100"}),
                   ("/admin/settlements/stl_0000000000000000/paid", {"payout_reference": "x"}),
                   ("/admin/webhooks/deliveries/wd_0000000000000000/retry", {}),
                   ("/admin/webhooks/endpoints/we_0000000000000000/replay", {"since": "2026-01-01T00:00"}),
                   ("/admin/reconciliation/statements", {"channel": "sandbox"}),
                   ("/admin/alerts/alr_0000000000000000/resolve", {})]
        for path, data in actions:
            for csrf in (None, "not-the-token"):
                form = {**data, **({"csrf": csrf} if csrf else {})}
                answer = admin.post(path, params={"merchant": merchant.id}, data=form)
                assert answer.status_code == 403 and "Form expired" in answer.text, (path, csrf, answer.status_code)
    finally:
        admin.close()
    with merchant.client() as api:
        assert api.get(f"/v1/orders/{order['id']}/refunds").json()["data"] == [], "the forged refund did nothing"
