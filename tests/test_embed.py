"""The embeddable checkout over real HTTP: publishable keys (what they open, and that every other
route refuses them), allowed_origins, CORS on the browser endpoints only, frame-ancestors on the
checkout page, and orders started from a page going through the normal checkout. The browser
side (overlay, postMessage, a blocked frame) is tests/browser/test_embed.py."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from litestar.routes import HTTPRoute

from apss.api.browser import BROWSER_PATH
from apss.store.migrate import MIGRATIONS_DIR, apply_migrations
from tests.conftest import assert_error

pytestmark = pytest.mark.both_backends

SHOP = "https://shop.example"
OTHER_SHOP = "https://other-shop.example"


def _pk(merchant) -> str:
    with merchant.client() as client:
        return client.get("/v1/account").json()["publishable_key"]


def _set_origins(merchant, origins: list[str]) -> httpx.Response:
    with merchant.client() as client:
        return client.patch("/v1/account", json={"allowed_origins": origins})


def _browser(server, pk: str, origin: str | None = SHOP) -> httpx.Client:
    headers = {"Authorization": f"Bearer {pk}"}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def test_publishable_key_is_shown_to_its_merchant_and_rolled_by_the_admin(server, merchant):
    pk = _pk(merchant)
    assert re.fullmatch(r"pk_test_[A-Za-z0-9_\-]{32}", pk), pk
    with server.admin() as admin:
        assert admin.get(f"/v1/merchants/{merchant.id}").json()["publishable_key"] == pk
        rolled = admin.post(f"/v1/merchants/{merchant.id}/publishable_keys")
        assert rolled.status_code == 201, rolled.text
        new_pk = rolled.json()["publishable_key"]
        assert_error(admin.post("/v1/merchants/mch_nope/publishable_keys"), 404, "invalid_request_error", "not_found")
    assert new_pk != pk and new_pk.startswith("pk_test_")
    assert _pk(merchant) == new_pk
    with _browser(server, pk, origin=None) as old, _browser(server, new_pk, origin=None) as new:
        assert_error(old.get(f"{BROWSER_PATH}/ord_nope"), 401, "authentication_error", "invalid_api_key")
        assert_error(new.get(f"{BROWSER_PATH}/ord_nope"), 404, "invalid_request_error", "not_found")
    rows = server.raw("SELECT key FROM publishable_keys WHERE merchant_id = ? AND revoked_at_ms IS NULL",
                      (merchant.id,))
    assert rows == [(new_pk,)], "the database agrees: one active key, the new one"


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+):(\w+)\}", lambda m: "1" if m.group(2) == "int" else "x_1", path)


def _merchant_routes(server) -> list[tuple[str, str]]:
    """Every (method, path) under /v1 but the browser endpoints and the provider callbacks."""
    found = []
    for route in server.app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/v1/"):
            continue
        if route.path.startswith(BROWSER_PATH) or re.match(r"^/v1/channels/\{[^}]+\}/webhook/", route.path):
            continue
        found += [(method, _fill(route.path)) for method in sorted(route.methods - {"OPTIONS", "HEAD"})]
    return found


def test_every_other_route_refuses_a_publishable_key(server, merchant):
    routes = _merchant_routes(server)
    assert len(routes) > 60, routes  # the walk covers the whole API, not an empty table
    assert ("POST", "/v1/orders") in routes and ("GET", "/v1/merchants") in routes
    with _browser(server, _pk(merchant), origin=None) as client:
        for method, path in routes:
            body = {} if method in ("POST", "PUT", "PATCH") else None
            response = client.request(method, path, json=body)
            assert response.status_code == 401, (method, path, response.text)
            assert_error(response, 401, "authentication_error", response.json()["error"]["code"])
    # ... while the secret key is refused by the browser endpoints: it must never be in a page.
    with merchant.client() as client:
        assert_error(client.get(f"{BROWSER_PATH}/ord_nope"), 401, "authentication_error", "secret_key_not_allowed")
        assert_error(client.post(BROWSER_PATH, json={"product_id": "prd_x", "player_id": "p"}), 401,
                     "authentication_error", "secret_key_not_allowed")


def test_allowed_origins_are_validated_and_normalised(server, merchant):
    response = _set_origins(merchant, ["HTTPS://Shop.Example:443", "http://127.0.0.1:8123", "https://shop.example"])
    assert response.status_code == 200, response.text
    assert response.json()["allowed_origins"] == [SHOP, "http://127.0.0.1:8123"]
    for bad in ("https://shop.example/", "https://shop.example/path", "ftp://shop.example", "shop.example",
                "https://user@shop.example", "https://shop.example:99999", "https://shop.example?x=1", "null"):
        assert_error(_set_origins(merchant, [SHOP, bad]), 400, "invalid_request_error", "origin_invalid",
                     param="allowed_origins[1]")
    too_many = _set_origins(merchant, [f"https://s{i}.example" for i in range(21)])
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "allowed_origins", too_many.text
    with merchant.client() as client:  # a refused list changed nothing
        assert client.get("/v1/account").json()["allowed_origins"] == [SHOP, "http://127.0.0.1:8123"]
    live = server.new_merchant(name="Live Studio", mode="live")
    with server.admin() as admin:  # the admin sets them too; a live merchant's sites are https
        assert_error(admin.patch(f"/v1/merchants/{live.id}", json={"allowed_origins": ["http://shop.example"]}), 400,
                     "invalid_request_error", "origin_invalid", param="allowed_origins[0]")
        response = admin.patch(f"/v1/merchants/{live.id}", json={"allowed_origins": [SHOP]})
        assert response.status_code == 200 and response.json()["allowed_origins"] == [SHOP], response.text


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_cors_answers_exactly_the_listed_origins_on_the_browser_endpoints(server, merchant):
    assert _set_origins(merchant, [SHOP]).status_code == 200
    other = server.new_merchant(name="Other Studio")
    assert _set_origins(other, [OTHER_SHOP]).status_code == 200
    pk = _pk(merchant)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        response = anonymous.options(BROWSER_PATH, headers={"Origin": SHOP, **preflight})
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == SHOP
        assert set(response.headers["access-control-allow-headers"].split(", ")) == {"Authorization", "Content-Type",
                                                                                    "Idempotency-Key"}
        assert "POST" in response.headers["access-control-allow-methods"] and response.headers["vary"] == "Origin"
        unlisted = anonymous.options(BROWSER_PATH, headers={"Origin": "https://evil.example", **preflight})
        assert unlisted.status_code == 204 and _cors_headers(unlisted) == {}
        # Not a browser endpoint: no CORS at all, even for a listed origin.
        assert _cors_headers(anonymous.options("/v1/orders", headers={"Origin": SHOP, **preflight})) == {}
    with merchant.client() as client:
        assert _cors_headers(client.get("/v1/account", headers={"Origin": SHOP})) == {}
    with _browser(server, pk, origin=SHOP) as page:
        response = page.get(f"{BROWSER_PATH}/ord_nope")
        assert response.status_code == 404 and response.headers["access-control-allow-origin"] == SHOP
        assert response.headers["vary"] == "Origin"
    with _browser(server, pk, origin="https://evil.example") as page:
        response = page.get(f"{BROWSER_PATH}/ord_nope")
        assert_error(response, 401, "authentication_error", "origin_not_allowed")
        assert _cors_headers(response) == {}
    # Another merchant's site passes the preflight (it carries no key) but not the request itself.
    with _browser(server, pk, origin=OTHER_SHOP) as page:
        response = page.post(BROWSER_PATH, json={"product_id": "prd_x", "player_id": "p"})
        assert_error(response, 401, "authentication_error", "origin_not_allowed")
        assert _cors_headers(response) == {}


def test_a_page_starts_an_order_through_the_normal_checkout(server, merchant):
    assert _set_origins(merchant, [SHOP]).status_code == 200
    pk = _pk(merchant)
    with merchant.client() as client:
        sellable = merchant.product(client, browser_sellable=True, stock=2, purchase_limit=2)
        hidden = merchant.product(client)
        assert sellable["browser_sellable"] is True and hidden["browser_sellable"] is False
        gems = merchant.product(client, category="currency_pack", prices={"USD": 100},
                                grants=[{"type": "currency", "currency": "GEMS", "amount": 10}])
        bought_with_gems = merchant.product(client, browser_sellable=True, prices={"USD": 100, "GEMS": 5})
        assert gems["id"]
    with _browser(server, pk) as page:
        made = page.post(BROWSER_PATH, headers={"Idempotency-Key": "k1"},
                         json={"product_id": sellable["id"], "player_id": "alice", "quantity": 1})
        assert made.status_code == 201, made.text
        session = made.json()
        assert set(session) == {"order_id", "status", "checkout_url", "expires_at"} and session["status"] == "pending"
        assert session["checkout_url"].startswith(f"{server.base_url}/checkout/")
        replay = page.post(BROWSER_PATH, headers={"Idempotency-Key": "k1"},
                           json={"product_id": sellable["id"], "player_id": "alice", "quantity": 1})
        assert replay.json() == session and replay.headers["idempotent-replayed"] == "true"
        opened = page.get(f"{BROWSER_PATH}/{session['order_id']}")
        assert opened.json() == session
        second = page.post(BROWSER_PATH, json={"product_id": sellable["id"], "player_id": "bob", "quantity": 1})
        assert second.status_code == 201, second.text
        assert_error(page.post(BROWSER_PATH, json={"product_id": sellable["id"], "player_id": "carol"}), 409,
                     "conflict_error", "out_of_stock")
        assert_error(page.post(BROWSER_PATH, json={"product_id": hidden["id"], "player_id": "alice"}), 400,
                     "invalid_request_error", "product_not_browser_sellable", param="product_id")
        assert_error(page.post(BROWSER_PATH, json={"product_id": "prd_nope", "player_id": "alice"}), 404,
                     "invalid_request_error", "not_found", param="product_id")
        assert_error(page.post(BROWSER_PATH, json={"product_id": bought_with_gems["id"], "player_id": "alice",
                                                   "currency": "GEMS"}), 400, "invalid_request_error",
                     "currency_not_supported", param="currency")
        assert_error(page.post(BROWSER_PATH, json={"product_id": sellable["id"], "player_id": "alice",
                                                   "return_url": "https://evil.example/back"}), 400,
                     "invalid_request_error", "return_url_not_allowed", param="return_url")
        for extra in ({"metadata": {"sandbox_outcome": "declined"}}, {"channel": "sandbox"}):
            response = page.post(BROWSER_PATH, json={"product_id": sellable["id"], "player_id": "alice", **extra})
            assert response.status_code == 400, response.text
    with merchant.client() as client:
        order = client.get(f"/v1/orders/{session['order_id']}").json()
        assert order["player_id"] == "alice" and order["amount"] == 500 and order["metadata"] == {"apss_source": "publishable_key"}
        # The page's Idempotency-Key lives apart from the game server's: the server's own "k1" is new.
        server_order = client.post("/v1/orders", headers={"Idempotency-Key": "k1"},
                                   json={"player_id": "dave", "currency": "USD",
                                         "items": [{"product_id": bought_with_gems["id"], "quantity": 1}]})
        assert server_order.status_code == 201 and "idempotent-replayed" not in server_order.headers
    # stock reserved for exactly the two orders made, by the checkout
    assert server.raw("SELECT stock, reserved FROM products WHERE id = ?", (sellable["id"],)) == [(0, 2)]
    assert server.raw("SELECT count(*) FROM orders WHERE merchant_id = ? AND metadata LIKE '%publishable_key%'",
                      (merchant.id,)) == [(2,)]


def test_the_checkout_page_may_be_framed_by_the_listed_origins_only(server, merchant):
    assert _set_origins(merchant, [SHOP, "http://127.0.0.1:8123"]).status_code == 200
    with merchant.client() as client:
        product = merchant.product(client)
        order = merchant.order(client, product["id"]).json()
    page = httpx.get(order["checkout_url"])
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://shop.example http://127.0.0.1:8123;" in csp, csp
    assert "x-frame-options" not in page.headers
    assert "close-checkout" not in page.text and "postMessage" not in page.text  # not embedded without ?embed
    embedded = httpx.get(order["checkout_url"], params={"embed": SHOP})
    assert "id=close-checkout" in embedded.text and '"target": "https://shop.example"' in embedded.text
    stranger = httpx.get(order["checkout_url"], params={"embed": "https://evil.example"})
    assert "postMessage" not in stranger.text and "evil.example" not in stranger.text
    sandbox_url = order["payment"]["next_action"]["url"]
    sandbox = httpx.get(sandbox_url, params={"embed": SHOP})
    assert "frame-ancestors 'self' https://shop.example http://127.0.0.1:8123;" in sandbox.headers["content-security-policy"]
    assert "name=embed value='https://shop.example'" in sandbox.text
    admin = httpx.get(f"{server.base_url}/admin/login")
    assert "frame-ancestors 'none'" in admin.headers["content-security-policy"]
    script = httpx.get(f"{server.base_url}/js/apss.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "openCheckout" in script.text and "event.origin !== origin" in script.text


def test_merchants_made_before_the_migration_get_a_publishable_key(tmp_path):
    old = tmp_path / "migrations"
    old.mkdir()
    for file in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(file.name[:4]) < int(_own_migration().name[:4]):
            shutil.copy(file, old / file.name)
    path = str(tmp_path / "apss.sqlite")
    apply_migrations(path, old)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO merchants (id, name, mode, currency, created_at_ms) VALUES ('mch_old', 'Old', 'live', 'USD', 1)")
    apply_migrations(path)
    with sqlite3.connect(path) as conn:
        keys = conn.execute("SELECT key FROM publishable_keys WHERE merchant_id = 'mch_old'").fetchall()
        origins = conn.execute("SELECT allowed_origins FROM merchants WHERE id = 'mch_old'").fetchone()[0]
    assert len(keys) == 1 and re.fullmatch(r"pk_live_[0-9a-f]{48}", keys[0][0]) and origins == "[]"


def _own_migration() -> Path:
    return next(f for f in MIGRATIONS_DIR.glob("*.sql") if f.name.endswith("_embedded_checkout.sql"))

