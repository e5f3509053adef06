"""The served OpenAPI document tells the truth: real answers of the real server, over HTTP, are
checked against it (status documented, body valid against the documented schema, headers
documented), and the code's idempotent routes are exactly the documented ones."""

from __future__ import annotations

import inspect
import re

import httpx
import jsonschema
import pytest

_METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def document(server) -> dict:
    return httpx.get(f"{server.base_url}/schema/openapi.json").json()


def _operation(document: dict, method: str, path: str) -> dict:
    for template, item in document["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method in item and "{" not in path:
            # a literal segment beats a parameter (/v1/reports/summary, not /v1/reports/{report_id})
            literal = [t for t, i in document["paths"].items() if t == path and method in i]
            return document["paths"][literal[0]][method] if literal else item[method]
    raise AssertionError(f"{method.upper()} {path} is not in the document")


def _check(document: dict, response: httpx.Response) -> None:
    method, path = response.request.method.lower(), response.request.url.path
    operation = _operation(document, method, path)
    status = str(response.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} answered {status}, documented: " \
                                             f"{sorted(operation['responses'])}"
    documented = operation["responses"][status]
    if response.headers.get("idempotent-replayed"):
        assert "Idempotent-Replayed" in documented.get("headers", {}), f"{method.upper()} {path}"
    if response.headers.get("content-type", "").startswith("application/json") and response.content:
        schema = documented.get("content", {}).get("application/json", {}).get("schema")
        assert schema is not None, f"{method.upper()} {path} {status}: JSON body not documented"
        jsonschema.validate(response.json(), {**schema, "components": document["components"]},
                            cls=jsonschema.Draft202012Validator)


def test_real_answers_match_the_document(server, merchant, document):
    answers: list[httpx.Response] = []

    def record(response: httpx.Response) -> None:
        response.read()
        answers.append(response)

    with httpx.Client(base_url=server.base_url, headers=merchant.headers, timeout=30,
                      event_hooks={"response": [record]}) as client:
        product = client.post("/v1/products", json={"sku": "openapi_sword", "name": "Sword", "category": "item",
                                                    "prices": {"USD": 500}, "stock": 1}).json()
        order_body = {"player_id": "doc-player", "currency": "USD",
                      "items": [{"product_id": product["id"], "quantity": 1}]}
        order = client.post("/v1/orders", json=order_body, headers={"Idempotency-Key": "doc-1"}).json()
        replay = client.post("/v1/orders", json=order_body, headers={"Idempotency-Key": "doc-1"})
        assert replay.headers["idempotent-replayed"] == "true"
        client.post("/v1/orders", json={**order_body, "player_id": "other"}, headers={"Idempotency-Key": "doc-1"})  # 422
        client.post("/v1/orders", json=order_body)  # 409 out_of_stock
        client.post("/v1/orders", json={**order_body, "colour": "red"})  # 400: unknown field
        client.post("/v1/orders", content=b"x" * 2_000_000)  # 413
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
        client.get(f"/v1/orders/{order['id']}")
        client.get(f"/v1/orders/{order['id']}/events")
        client.get("/v1/orders/ord_nope")  # 404
        client.get(f"/v1/orders/{order['id']}/refunds")
        client.get("/v1/ledger/balances")
        client.get("/v1/reports/summary", params={"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"})
        client.get("/v1/reconciliation/runs")
        client.get("/v1/reports")
        client.get("/v1/channels")
        client.get("/v1/account")
        client.get("/v1/products", params={"limit": 0})  # 400
    httpx.get(f"{server.base_url}/v1/account")  # 401
    with httpx.Client(base_url=server.base_url, event_hooks={"response": [record]}) as anonymous:
        anonymous.get("/v1/account")
        anonymous.get("/healthz")
    statuses = {a.status_code for a in answers}
    assert {200, 201, 202, 400, 401, 404, 409, 413, 422} <= statuses, statuses
    for answer in answers:
        _check(document, answer)


def test_lists_are_documented_in_their_list_shape(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                assert schema.get("type") != "array", f"{method.upper()} {path} {status} is a bare array"
                ref = schema.get("$ref", "")
                if ref.endswith("List"):
                    properties = document["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
                    assert {"data", "has_more", "next_cursor"} <= set(properties), (path, properties)


def _honours_idempotency_key(handler) -> bool:
    """The handler's own code calls idempotency_request (or a wrapper of it named *_idempotency),
    or hands the header on (`idempotency_key=request.headers...`): the route honours Idempotency-Key."""
    source = inspect.getsource(handler.fn)
    return re.search(r"idempotency(_request)?\(request|idempotency_key=request\.headers", source) is not None


def test_idempotent_routes_are_exactly_the_documented_ones(server, document):
    documented, undocumented = set(), set()
    for route in server.app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not handler.include_in_schema or not _honours_idempotency_key(handler):
                continue
            for method in handler.http_methods:
                operation = document["paths"][route.path_format][method.lower()]
                headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
                (documented if "Idempotency-Key" in headers else undocumented).add((method, route.path_format))
                assert "422" in operation["responses"] and "409" in operation["responses"]
    assert undocumented == set()
    assert len(documented) >= 15
    every_documented = {(m.upper(), p) for p, item in document["paths"].items() for m, op in item.items()
                        if m in _METHODS and any(q["name"] == "Idempotency-Key" for q in op.get("parameters", []))}
    assert every_documented == documented


def test_request_bodies_refuse_unknown_fields_and_say_so(server, merchant, document):
    schema = document["components"]["schemas"]["OrderCreate"]
    assert schema["additionalProperties"] is False
    settings = document["paths"]["/v1/channels/{channel}"]["put"]["requestBody"]["content"]["application/json"]
    variants = {v["title"]: v for v in settings["schema"]["oneOf"]}
    assert set(variants["stripe"]["required"]) == {"secret_key", "webhook_secret"}
    assert "api_base" in variants["stripe"]["properties"]
    with merchant.client() as client:
        refused = client.put("/v1/channels/stripe", json={"secret_key": "sk_test_x", "webhook_secret": "whsec_x",
                                                          "colour": "red"})
    assert refused.status_code == 400, refused.text
    callback = document["paths"]["/v1/channels/{channel}/webhook/{merchant_id}"]["post"]["responses"]
    assert {"200", "204", "400"} <= set(callback)
