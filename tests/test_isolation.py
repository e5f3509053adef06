"""Merchant isolation: another merchant's ids answer 404 not_found, never 403."""

from __future__ import annotations


def test_merchant_b_cannot_read_pay_or_cancel_merchant_a_objects(server):
    alice, bob = server.new_merchant("Alice"), server.new_merchant("Bob")
    with alice.client() as client:
        product = alice.product(client, stock=3)
        order = alice.order(client, product["id"], player_id="shared-name").json()
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
    with bob.client() as client:
        attempts = [
            client.get(f"/v1/orders/{order['id']}"),
            client.get(f"/v1/orders/{order['id']}/events"),
            client.post(f"/v1/orders/{order['id']}/cancel"),
            client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed"),
            client.post(f"/v1/sandbox/payments/{order['payment']['id']}/fail"),
            client.get(f"/v1/products/{product['id']}"),
            client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": -1}),
            client.post("/v1/orders", json={"player_id": "x", "currency": "USD", "items": [{"product_id": product["id"]}]}),
        ]
        for response in attempts:
            assert response.status_code == 404, (response.request.url, response.text)
            assert response.json()["error"]["code"] == "not_found"
        assert client.get("/v1/orders").json()["data"] == []
        assert client.get("/v1/products").json()["data"] == []
        assert client.get("/v1/players/shared-name/inventory").json()["items"] == []
    with alice.client() as client:
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 2


def test_rolled_key_stops_the_old_one_at_once(server):
    merchant = server.new_merchant()
    with server.admin() as admin:
        rolled = admin.post(f"/v1/merchants/{merchant.id}/keys")
    assert rolled.status_code == 201 and rolled.json()["secret_key"].startswith("sk_test_")
    with merchant.client() as client:
        old = client.get("/v1/account")
        assert old.status_code == 401 and old.json()["error"]["type"] == "authentication_error"
        client.headers["Authorization"] = f"Bearer {rolled.json()['secret_key']}"
        assert client.get("/v1/account").json()["id"] == merchant.id


# -- the sweep, generated from the served OpenAPI document ----------------------------------------
import re  # noqa: E402
import sqlite3  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402

from apss.clock import TestClock  # noqa: E402
from tests.conftest import RunningServer, wait_for  # noqa: E402

# Which table holds the object a path parameter names (delivery_id depends on the collection).
_TABLES = {"product_id": "products", "order_id": "orders", "payment_id": "payments", "refund_id": "refunds",
           "alert_id": "alerts", "endpoint_id": "webhook_endpoints", "run_id": "reconciliation_runs",
           "report_id": "reports", "settlement_id": "settlements", "promotion_id": "promotions",
           "subscription_id": "subscriptions", "item_id": "risk_list_items", "case_id": "aml_cases",
           "dispute_id": "disputes"}
# Not merchant-owned ids: the admin's merchant paths, a player id (a name in the merchant's own
# namespace: another merchant's same name is its own player), channel and currency names, list
# names (each merchant has its own lists of the same names).
_NOT_OWNED = {"merchant_id", "player_id", "channel", "base", "quote", "list_name"}
# Objects this sweep does not make for merchant A (each needs a provider statement, a settlement
# cut-off, a report period or an anomaly); their paths are listed so that a new id path fails the
# sweep until it is covered or listed here.
_NOT_MADE = {"run_id", "report_id", "settlement_id", "delivery_id@/v1/deliveries"}
# A body that would change the object if the request were let through (empty where none is needed).
_BODIES = {("patch", "/v1/products/{product_id}"): {"name": "stolen"},
           ("patch", "/v1/webhook_endpoints/{endpoint_id}"): {"enabled": False},
           ("post", "/v1/webhook_endpoints/{endpoint_id}/replay"): {"since": "2020-01-01T00:00:00Z"},
           ("patch", "/v1/promotions/{promotion_id}"): {"active": False},
           ("post", "/v1/subscriptions/{subscription_id}/cancel"): {"at_period_end": False},
           ("post", "/v1/orders/{order_id}/refunds"): {"reason": "stolen"},
           ("post", "/v1/subscriptions/{subscription_id}/change"): {"product_id": "prd_any"},
           ("post", "/v1/risk/aml/cases/{case_id}"): {"status": "closed"},
           ("post", "/v1/disputes/{dispute_id}/submit"): {"text": "stolen"},
           ("post", "/v1/sandbox/disputes/{dispute_id}/close"): {"outcome": "won"}}
_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    # Its own server: the raw dump before and after must see nothing but this sweep.
    running = RunningServer(db_path=tmp_path_factory.mktemp("isolation") / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


def _table_for(parameter: str, path: str) -> str | None:
    if parameter == "dispute_id" and path.startswith("/v1/sandbox/"):
        return "sandbox_disputes"  # the sandbox (the bank) names disputes by its own ids
    if parameter == "delivery_id":
        return "webhook_deliveries" if path.startswith("/v1/webhook_deliveries") else "deliveries"
    return _TABLES.get(parameter)


def _make_objects_of_a(alice) -> None:
    with alice.client() as client:
        item = alice.product(client, stock=5)
        plan = alice.product(client, category="membership", billing={"interval": "month"})
        assert client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}).status_code == 201
        assert client.put("/v1/risk/aml/settings", json={"daily_threshold": 1}).status_code == 200  # an AML case
        pending = alice.order(client, item["id"], player_id="pending").json()
        paid = alice.order(client, item["id"], player_id="paid").json()
        client.post(f"/v1/sandbox/payments/{paid['payment']['id']}/succeed")
        wait_for(lambda: client.get(f"/v1/orders/{paid['id']}").json()["status"] == "fulfilled")
        assert client.post(f"/v1/orders/{paid['id']}/refunds", json={"amount": 100}).status_code in (200, 201, 202)
        disputed = alice.order(client, item["id"], player_id="disputer").json()
        client.post(f"/v1/sandbox/payments/{disputed['payment']['id']}/succeed")
        wait_for(lambda: client.get(f"/v1/orders/{disputed['id']}").json()["status"] == "fulfilled")
        assert client.post(f"/v1/sandbox/payments/{disputed['payment']['id']}/dispute").status_code == 202
        wait_for(lambda: client.get("/v1/disputes").json()["data"])
        assert client.post("/v1/promotions", json={"name": "P", "percent_off_bps": 1000}).status_code == 201
        assert client.post("/v1/subscriptions", json={"player_id": "sub", "product_id": plan["id"],
                                                      "currency": "USD"}).status_code == 201
        assert client.post("/v1/risk/lists/blocked_devices/items", json={"value": "dev-x"}).status_code == 201
        assert pending["status"] == "pending"


def _id_of_a(raw: sqlite3.Connection, table: str, merchant_id: str) -> str | None:
    # `table` comes from the constant map above, never from input.
    row = raw.execute(f"SELECT id FROM {table} WHERE merchant_id = ? ORDER BY id LIMIT 1", (merchant_id,)).fetchone()
    return row[0] if row else None


def _dump(path) -> list[str]:
    """Every row but the audit log's, which records B's refused attempts (as it should)."""
    raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [line for line in raw.iterdump() if not line.startswith('INSERT INTO "audit_log"')]
    finally:
        raw.close()


def test_every_id_path_of_the_schema_answers_404_to_another_merchant_and_changes_nothing(isolated):
    alice, bob = isolated.new_merchant("Alice"), isolated.new_merchant("Bob")
    _make_objects_of_a(alice)
    document = httpx.get(f"{isolated.base_url}/schema/openapi.json").json()
    raw = sqlite3.connect(f"file:{isolated.db_path}?mode=ro", uri=True)
    requests, uncovered = [], set()
    try:
        for template, item in document["paths"].items():
            if template.startswith(("/v1/merchants", "/v1/admin/", "/v1/channels/")):
                continue  # admin paths, and provider callbacks: not a merchant key's
            names = re.findall(r"\{([^}]+)\}", template)
            owned = [n for n in names if n not in _NOT_OWNED]
            if not owned:
                continue
            path = template
            for name in names:
                table = _table_for(name, template) if name in owned else None
                value = _id_of_a(raw, table, alice.id) if table else {"list_name": "blocked_devices"}.get(name, "p1")
                if name in owned and value is None:
                    uncovered.add(name if name != "delivery_id" else f"delivery_id@{template[:14]}")
                    break
                path = path.replace("{" + name + "}", value)
            else:
                requests += [(method, template, path) for method in item if method in _METHODS]
    finally:
        raw.close()
    assert uncovered == _NOT_MADE, f"id paths without an object of merchant A: {uncovered ^ _NOT_MADE}"
    assert len(requests) >= 30, requests

    wait_for(lambda: _dump(isolated.db_path) == _dump(isolated.db_path))  # background work settled
    before = _dump(isolated.db_path)
    with bob.client() as client:
        bob_publishable = client.get("/v1/account").json()["publishable_key"]
        for method, template, path in requests:
            body = _BODIES.get((method, template))
            # the browser checkout's paths take a publishable key (and refuse a secret one)
            headers = {"authorization": f"Bearer {bob_publishable}"} if template.startswith("/v1/checkout/") else None
            response = client.request(method.upper(), path, json=body, headers=headers) if body is not None else \
                client.request(method.upper(), path, headers=headers)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.json()["error"]["code"] == "not_found", (method, path, response.text)
    assert _dump(isolated.db_path) == before, "merchant B's requests changed the database"
