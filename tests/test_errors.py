"""Every error answers `{"error": {"type", "code", "message", "param"?}}` and nothing else, with the
status API.md gives it; malformed requests of every kind never answer 500."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, assert_error, assert_shape

JSON = {"content-type": "application/json"}
def order_body(product_id: str, **fields) -> dict:
    return {"player_id": "p1", "currency": "USD", "items": [{"product_id": product_id, "quantity": 1}], **fields}


# -- authentication --------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}, {"Authorization": "Bearer  " + ADMIN_TOKEN[:5]},
    {"Authorization": "Bearer sk_test_wrong"}, {"Authorization": "Bearer sk_test_" + "x" * 43},
    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Token sk_test_abc"},
])
def test_missing_or_invalid_authorization_is_401(server, headers):
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for method, path in (("GET", "/v1/products"), ("GET", "/v1/account"), ("POST", "/v1/orders"),
                             ("GET", "/v1/players/p1/wallet"), ("GET", "/v1/merchants"), ("POST", "/v1/merchants")):
            response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert_error(response, 401, "authentication_error", response.json()["error"]["code"])


def test_admin_and_merchant_keys_are_not_interchangeable(merchant, server):
    with merchant.client() as client:
        assert_error(client.get("/v1/merchants"), 401, "authentication_error", "invalid_api_key")
        assert_error(client.post("/v1/merchants", json={"name": "Mine"}), 401, "authentication_error", "invalid_api_key")
        assert_error(client.post(f"/v1/merchants/{merchant.id}/keys"), 401, "authentication_error", "invalid_api_key")
        assert client.get("/v1/products").status_code == 200
    with server.admin() as admin:
        assert_error(admin.get("/v1/products"), 401, "authentication_error", "invalid_api_key")
        assert_error(admin.get("/v1/account"), 401, "authentication_error", "invalid_api_key")


def test_rolled_key_stops_working_at_once(merchant, server):
    with server.admin() as admin:
        rolled = admin.post(f"/v1/merchants/{merchant.id}/keys")
    assert rolled.status_code == 201 and set(rolled.json()) == {"secret_key"}
    with merchant.client() as client:
        assert_error(client.get("/v1/products"), 401, "authentication_error", "invalid_api_key")
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {rolled.json()['secret_key']}"}) as client:
        assert client.get("/v1/account").json()["id"] == merchant.id


# -- routing ---------------------------------------------------------------------------------------

def test_unknown_route_is_404_not_found(merchant, server):
    with merchant.client() as client:
        for path in ("/v1/nope", "/v1/products/prd_x/nope", "/nope", "/v2/products"):
            assert_error(client.get(path), 404, "invalid_request_error", "not_found")
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert_error(anonymous.get("/v1/does-not-exist"), 404, "invalid_request_error", "not_found")


def test_wrong_method_is_405(merchant):
    with merchant.client() as client:
        for method, path in (("DELETE", "/v1/products"), ("PUT", "/v1/orders/ord_x"), ("DELETE", "/v1/account"),
                             ("PATCH", "/v1/orders/ord_x"), ("GET", "/v1/players/p1/wallet/debit")):
            response = client.request(method, path)
            assert_error(response, 405, "invalid_request_error", "method_not_allowed")
            assert response.headers.get("allow"), response.headers


# -- bodies ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"{bad", b"\x00", b"nul", b'{"a": 1}}', b"{'a': 1}", b'{"player_id": "p1",', b"[1, 2"])
def test_malformed_json_body_is_400_body_malformed(merchant, raw):
    with merchant.client() as client:
        assert_error(client.post("/v1/orders", content=raw, headers=JSON), 400, "invalid_request_error", "body_malformed")


def test_body_that_is_not_utf8_is_400_not_500(merchant):
    with merchant.client() as client:
        response = client.post("/v1/orders", content=b'{"player_id": "\xff\xfe"}', headers=JSON)
        assert response.status_code == 400, response.text
        assert_shape(response)


def test_deeply_nested_json_is_400_not_500(merchant):
    with merchant.client() as client:
        response = client.post("/v1/orders", content=b"[" * 100_000, headers=JSON)
        assert response.status_code == 400, response.text
        assert_shape(response)


def test_validation_error_names_the_nested_field(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        body = {"player_id": "p1", "currency": "USD",
                "items": [{"product_id": product["id"], "quantity": 1}, {"product_id": "prd_other", "quantity": "two"}]}
        assert_error(client.post("/v1/orders", json=body), 400, "invalid_request_error", "parameter_invalid",
                     "items[1].quantity")
        body["items"][1]["quantity"] = 0
        assert_error(client.post("/v1/orders", json=body), 400, "invalid_request_error", "parameter_invalid",
                     "items[1].quantity")


def test_unknown_field_is_named(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        assert_error(client.post("/v1/orders", json=order_body(product["id"], colour="red")), 400,
                     "invalid_request_error", "parameter_invalid", "colour")
        body = order_body(product["id"])
        body["items"][0]["size"] = "xl"
        assert_error(client.post("/v1/orders", json=body), 400, "invalid_request_error", "parameter_invalid",
                     "items[0].size")
        assert_error(client.post("/v1/products", json={"sku": "a", "name": "b", "category": "item",
                                                       "prices": {"USD": 1}, "price": 1}),
                     400, "invalid_request_error", "parameter_invalid", "price")


def test_missing_required_field_is_parameter_missing(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        for field in ("player_id", "items", "currency"):
            body = order_body(product["id"])
            del body[field]
            assert_error(client.post("/v1/orders", json=body), 400, "invalid_request_error", "parameter_missing", field)
        body = {"player_id": "p1", "currency": "USD", "items": [{"quantity": 1}]}
        assert_error(client.post("/v1/orders", json=body), 400, "invalid_request_error", "parameter_missing",
                     "items[0].product_id")
        assert_error(client.post("/v1/players/p1/wallet/debit", json={"currency": "GEMS"}), 400,
                     "invalid_request_error", "parameter_missing", "amount")


@pytest.mark.parametrize("key", ["k" * 256, "ab\tcd", "cl\u00e9".encode("latin-1"), ""])
def test_invalid_idempotency_key_is_400_and_not_stored(merchant, key):
    with merchant.client() as client:
        product = merchant.product(client, stock=3)
        response = client.post("/v1/orders", json=order_body(product["id"]), headers={"Idempotency-Key": key})
        assert_error(response, 400, "invalid_request_error", "invalid_idempotency_key", "Idempotency-Key")
        response = client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": 1}, headers={"Idempotency-Key": key})
        assert_error(response, 400, "invalid_request_error", "invalid_idempotency_key", "Idempotency-Key")
        state = client.get(f"/v1/products/{product['id']}").json()
        assert (state["stock"], state["reserved"]) == (3, 0)
        assert client.get("/v1/orders").json()["data"] == []
        ok = client.post("/v1/orders", json=order_body(product["id"]), headers={"Idempotency-Key": "k" * 255})
        assert ok.status_code == 201, ok.text


def test_oversized_body_is_413(merchant):
    with merchant.client() as client:
        big = json.dumps({"player_id": "p1", "currency": "USD", "items": [], "metadata": {"k": "x" * (1 << 20)}})
        assert_error(client.post("/v1/orders", content=big, headers=JSON), 413, "invalid_request_error", "body_too_large")
        assert_error(client.post(f"/v1/channels/sandbox/webhook/{merchant.id}", content=b"x" * ((1 << 20) + 1)), 413,
                     "invalid_request_error", "body_too_large")


def test_currency_the_product_has_no_price_in(merchant):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 500, "JPY": 600}, stock=2)
        assert_error(client.post("/v1/orders", json=order_body(product["id"], currency="EUR")), 400,
                     "invalid_request_error", "currency_not_supported", "currency")
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 2
        assert client.post("/v1/orders", json=order_body(product["id"], currency="JPY")).json()["amount"] == 600


def test_conflicts_and_not_found_have_the_shape(merchant, server):
    with merchant.client() as client:
        product = merchant.product(client, stock=1)
        assert_error(merchant.order(client, product["id"], quantity=2), 409, "conflict_error", "out_of_stock", "items[0]")
        order = merchant.order(client, product["id"], merchant_order_ref="ref-1")
        assert order.status_code == 201, order.text
        other = merchant.product(client)
        assert_error(merchant.order(client, other["id"], merchant_order_ref="ref-1"), 409, "conflict_error",
                     "merchant_order_ref_exists", "merchant_order_ref")
        assert client.post(f"/v1/orders/{order.json()['id']}/cancel").status_code == 200
        assert_error(client.post(f"/v1/orders/{order.json()['id']}/cancel"), 409, "conflict_error", "invalid_state")
        for path in ("/v1/orders/ord_nope", "/v1/orders/ord_nope/events"):
            assert_error(client.get(path), 404, "invalid_request_error", "not_found")
        assert_error(client.post("/v1/orders/ord_nope/cancel"), 404, "invalid_request_error", "not_found")
        assert_error(client.post("/v1/sandbox/payments/pay_nope/succeed"), 404, "invalid_request_error", "not_found")
        assert_error(merchant.order(client, "prd_nope"), 404, "invalid_request_error", "not_found", "items[0].product_id")
    with server.admin() as admin:
        assert_error(admin.get("/v1/merchants/mch_nope"), 404, "invalid_request_error", "not_found")
        assert_error(admin.post("/v1/merchants/mch_nope/keys"), 404, "invalid_request_error", "not_found")
    # Another merchant's order is 404, never 403.
    stranger = server.new_merchant()
    with stranger.client() as client:
        assert_error(client.get(f"/v1/orders/{order.json()['id']}"), 404, "invalid_request_error", "not_found")
        assert_error(client.post(f"/v1/orders/{order.json()['id']}/cancel"), 404, "invalid_request_error", "not_found")


def test_live_merchant_cannot_use_the_sandbox(server):
    live = server.new_merchant(mode="live")
    with live.client() as client:
        product = live.product(client)
        assert_error(live.order(client, product["id"]), 400, "invalid_request_error", "channel_not_available", "channel")
        assert_error(live.order(client, product["id"], channel="sandbox"), 400, "invalid_request_error",
                     "channel_not_available", "channel")
        assert_error(client.post("/v1/sandbox/payments/pay_x/succeed"), 400, "invalid_request_error",
                     "channel_not_available")


# -- nothing answers 500 ---------------------------------------------------------------------------

def malformed_requests(product_id: str, merchant_id: str) -> list[tuple[str, str, dict]]:
    line = {"product_id": product_id, "quantity": 1}

    def order(**changes) -> dict:
        return {"json": {"player_id": "p1", "currency": "USD", "items": [line], **changes}}

    def product(**changes) -> dict:
        return {"json": {"sku": "s1", "name": "n", "category": "item", "prices": {"USD": 1}, **changes}}

    raw = lambda body: {"content": body, "headers": JSON}  # noqa: E731
    patch = f"/v1/products/{product_id}"
    return [
        ("POST", "/v1/orders", {"json": []}),
        ("POST", "/v1/orders", raw(b"null")),
        ("POST", "/v1/orders", {"json": "order"}),
        ("POST", "/v1/orders", {"json": 12}),
        ("POST", "/v1/orders", raw(b"")),
        ("POST", "/v1/orders", {}),
        ("POST", "/v1/orders", order(items="abc")),
        ("POST", "/v1/orders", order(items=[])),
        ("POST", "/v1/orders", order(items=[None])),
        ("POST", "/v1/orders", order(items=[line] * 1001)),
        ("POST", "/v1/orders", order(items=[{"product_id": f"prd_{i}", "quantity": 1} for i in range(51)])),
        ("POST", "/v1/orders", order(items=[line, line])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": 10**30}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": -1}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": 0}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": 1.5}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": True}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": 10_001}])),
        ("POST", "/v1/orders", order(items=[{"product_id": product_id, "quantity": None}])),
        ("POST", "/v1/orders", order(items=[{"product_id": "", "quantity": 1}])),
        ("POST", "/v1/orders", order(items=[{"product_id": 10**30, "quantity": 1}])),
        ("POST", "/v1/orders", order(player_id="игрок")),
        ("POST", "/v1/orders", order(player_id="😀")),
        ("POST", "/v1/orders", order(player_id="")),
        ("POST", "/v1/orders", order(player_id=None)),
        ("POST", "/v1/orders", order(player_id="x" * 129)),
        ("POST", "/v1/orders", order(player_id=["p1"])),
        ("POST", "/v1/orders", order(currency="usd")),
        ("POST", "/v1/orders", order(currency=None)),
        ("POST", "/v1/orders", order(currency=10**30)),
        ("POST", "/v1/orders", order(currency="XYZ")),
        ("POST", "/v1/orders", order(metadata={"k": 1})),
        ("POST", "/v1/orders", order(metadata={"": "v"})),
        ("POST", "/v1/orders", order(metadata=[1, 2])),
        ("POST", "/v1/orders", order(metadata={f"k{i}": "v" for i in range(21)})),
        ("POST", "/v1/orders", order(channel="stripe")),
        ("POST", "/v1/orders", order(channel="NOPE!")),
        ("POST", "/v1/orders", order(return_url="ftp://example.com")),
        ("POST", "/v1/orders", order(merchant_order_ref="")),
        ("POST", "/v1/orders", raw(b'{"player_id": "p1", "currency": "USD", "items": [{"product_id": "x", "quantity": 1e400}]}')),
        ("POST", "/v1/orders", raw(b'{"player_id": "\xff"}')),
        ("POST", "/v1/orders", raw(b"[" * 100_000)),
        ("POST", "/v1/products", product(prices={"USD": 10**30})),
        ("POST", "/v1/products", product(prices={"USD": 0})),
        ("POST", "/v1/products", product(prices={})),
        ("POST", "/v1/products", product(prices=None)),
        ("POST", "/v1/products", product(sku="a/b")),
        ("POST", "/v1/products", product(sku="")),
        ("POST", "/v1/products", product(category="weapon")),
        ("POST", "/v1/products", product(grants=[{"type": "weird"}])),
        ("POST", "/v1/products", product(grants=[{"type": "item"}])),
        ("POST", "/v1/products", product(grants={"type": "item", "sku": "x"})),
        ("POST", "/v1/products", product(stock=10**30)),
        ("POST", "/v1/products", product(stock=-1)),
        ("POST", "/v1/products", product(purchase_limit=0)),
        ("POST", "/v1/products", product(name="")),
        ("POST", "/v1/products", product(active="yes")),
        ("PATCH", patch, {"json": {"stock_adjust": 10**30}}),
        ("PATCH", patch, {"json": {"stock_adjust": 1.5}}),
        ("PATCH", patch, {"json": {"stock_adjust": None}}),
        ("PATCH", patch, {"json": {"stock_adjust": 5}}),  # unlimited stock
        ("PATCH", patch, {"json": {"grants": None}}),
        ("PATCH", patch, {"json": {"name": None}}),
        ("PATCH", patch, {"json": []}),
        ("PATCH", "/v1/products/prd_nope", {"json": {"stock_adjust": -1}}),
        ("POST", "/v1/players/p1/wallet/debit", {"json": {"currency": "GEMS", "amount": 10**30}}),
        ("POST", "/v1/players/p1/wallet/debit", {"json": {"currency": "GEMS", "amount": None}}),
        ("POST", "/v1/players/p1/wallet/debit", {"json": {"currency": "", "amount": 1}}),
        ("POST", "/v1/players/p1/wallet/debit", {"json": {"currency": "GEMS", "amount": 1, "reason": "r" * 201}}),
        ("POST", "/v1/players/%F0%9F%98%80/wallet/debit", {"json": {"currency": "GEMS", "amount": 1}}),
        ("GET", "/v1/players/%D0%B8%D0%B3%D1%80%D0%BE%D0%BA/inventory", {}),
        ("GET", "/v1/products", {"params": {"limit": "abc"}}),
        ("GET", "/v1/products", {"params": {"limit": str(10**30)}}),
        ("GET", "/v1/products", {"params": {"limit": ""}}),
        ("GET", "/v1/products", {"params": {"cursor": "x" * 65}}),
        ("GET", "/v1/products", {"params": {"active": "maybe"}}),
        ("GET", "/v1/orders", {"params": {"status": "bogus"}}),
        ("GET", "/v1/orders", {"params": {"player_id": "игрок"}}),
        ("GET", "/v1/orders", {"params": {"player_id": ""}}),
        ("POST", "/v1/orders/ord_nope/cancel", {}),
        ("POST", "/v1/sandbox/payments/pay_nope/fail", {}),
        ("POST", "/v1/channels/nope/webhook/mch_nope", {"content": b"{}"}),
        ("POST", "/v1/channels/sandbox/webhook/mch_nope", {"content": b"{}"}),
        ("POST", f"/v1/channels/sandbox/webhook/{merchant_id}", {"content": b"{}"}),
        ("POST", f"/v1/channels/sandbox/webhook/{merchant_id}",
         {"content": b"{}", "headers": {"APSS-Sandbox-Signature": "t=abc,v1=zz"}}),
        ("POST", f"/v1/channels/sandbox/webhook/{merchant_id}",
         {"content": b"\xff\x00", "headers": {"APSS-Sandbox-Signature": "t=1,v1=00"}}),
    ]


def test_malformed_requests_never_answer_500(merchant, server):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 10**12})
        requests = malformed_requests(product["id"], merchant.id)
        assert len(requests) >= 30
        failures = []
        for method, path, kwargs in requests:
            response = client.request(method, path, **kwargs)
            if response.status_code >= 500:
                failures.append((method, path, str(kwargs)[:80], response.status_code))
                continue
            assert 400 <= response.status_code < 500, (method, path, str(kwargs)[:80], response.status_code, response.text)
            assert_shape(response)
        assert failures == [], failures
        # Admin endpoints too.
        with server.admin() as admin:
            for body in ({"name": ""}, {"name": "x", "mode": "prod"}, {"name": None}, [], {"name": "x" * 201}):
                response = admin.post("/v1/merchants", json=body)
                assert response.status_code == 400, response.text
                assert_shape(response)
            response = admin.get("/v1/merchants", params={"limit": 0})
            assert response.status_code == 400 and assert_shape(response)["param"] == "limit"


def test_order_total_too_large_is_400(merchant):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 10**12})
        assert_error(merchant.order(client, product["id"], quantity=10_000), 400, "invalid_request_error",
                     "amount_too_large", "items")


def test_admin_token_header_variants(server):
    with httpx.Client(base_url=server.base_url) as client:
        ok = client.get("/v1/merchants", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert_error(client.get("/v1/merchants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}), 401,
                     "authentication_error", "invalid_api_key")


def test_a_key_over_its_rate_limit_gets_429(tmp_path):
    from apss.clock import TestClock
    from tests.conftest import RunningServer

    limited = RunningServer(db_path=tmp_path / "rate.sqlite", clock=TestClock(),
                            env={"APSS_API_REQUESTS_PER_S_MAX": "1", "APSS_API_BURST_MAX": "3"}).start()
    try:
        merchant = limited.new_merchant()
        with merchant.client() as client:
            statuses = [client.get("/v1/account").status_code for _ in range(6)]
            assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses
            refused = next(r for r in (client.get("/v1/account") for _ in range(3)) if r.status_code == 429)
            assert refused.json()["error"]["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
    finally:
        limited.stop()


def test_the_admin_gives_a_merchant_its_own_rate_limit_which_survives_a_restart(tmp_path):
    """A flash sale through one game-server key: the admin raises that merchant's limit (others keep
    the default), lowers it, resets it with null; the stored limit is applied again after a restart."""
    from apss.clock import TestClock
    from tests.conftest import RunningServer

    env = {"APSS_API_REQUESTS_PER_S_MAX": "1", "APSS_API_BURST_MAX": "3"}
    db_path = tmp_path / "own-rate.sqlite"
    limited = RunningServer(db_path=db_path, clock=TestClock(), env=env).start()
    try:
        flash, other = limited.new_merchant("Flash"), limited.new_merchant("Other")
        with limited.admin() as admin:
            answer = admin.patch(f"/v1/merchants/{flash.id}", json={"rate_limit": {"requests_per_s": 1, "burst": 50}})
            assert answer.status_code == 200, answer.text
            assert answer.json()["rate_limit"] == {"requests_per_s": 1, "burst": 50, "default": False}
            assert admin.get(f"/v1/merchants/{other.id}").json()["rate_limit"] == {"requests_per_s": 1, "burst": 3,
                                                                                     "default": True}
            assert_error(admin.patch(f"/v1/merchants/{flash.id}", json={"rate_limit": {"requests_per_s": -1, "burst": 5}}),
                         400, "invalid_request_error", "parameter_invalid", "rate_limit.requests_per_s")
        with flash.client() as client:
            assert [client.get("/v1/account").status_code for _ in range(40)] == [200] * 40
        with other.client() as client:
            assert 429 in [client.get("/v1/account").status_code for _ in range(6)]
    finally:
        limited.stop()
    with sqlite3.connect(db_path) as conn:  # what was stored, read from the file itself
        assert conn.execute("SELECT rate_limit_per_s, rate_limit_burst FROM merchants WHERE id = ?",
                            (flash.id,)).fetchone() == (1, 50)
    restarted = RunningServer(db_path=db_path, clock=TestClock(), env=env).start()
    try:
        with flash.client() as client:
            client.base_url = restarted.base_url
            assert [client.get("/v1/account").status_code for _ in range(20)] == [200] * 20
        with restarted.admin() as admin:
            reset = admin.patch(f"/v1/merchants/{flash.id}", json={"rate_limit": None})
            assert reset.json()["rate_limit"] == {"requests_per_s": 1, "burst": 3, "default": True}
        with flash.client() as client:
            client.base_url = restarted.base_url
            assert 429 in [client.get("/v1/account").status_code for _ in range(6)]
    finally:
        restarted.stop()


def test_a_database_that_cannot_take_writes_answers_503_not_ready(tmp_path):
    import sqlite3

    from apss.clock import TestClock
    from tests.conftest import RunningServer

    server = RunningServer(db_path=tmp_path / "locked.sqlite", clock=TestClock(),
                           env={"APSS_DATABASE_BUSY_TIMEOUT_MS": "100"}).start()
    try:
        merchant = server.new_merchant()
        blocker = sqlite3.connect(tmp_path / "locked.sqlite", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with merchant.client() as client:
                refused = client.post("/v1/products", json={"sku": "s1", "name": "n", "category": "item", "prices": {"USD": 1}})
                assert_error(refused, 503, "api_error", "not_ready")
                assert client.get("/v1/account").status_code == 200, "reads and authentication go on"
            assert httpx.get(f"{server.base_url}/healthz").status_code == 503
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    finally:
        server.stop()
