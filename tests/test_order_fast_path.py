"""`POST /v1/orders` is served by the fast path in front of Litestar's router (api/orders.py); the
same route with a trailing slash (`/v1/orders/`) is served by the router itself. Every answer,
good or bad, must be the same through both: status, error code and param, headers, the audit row,
the metrics' route label, and what the database holds."""

from __future__ import annotations

import httpx
import pytest

from apss.clock import TestClock
from tests.conftest import ADMIN_TOKEN, RunningServer, assert_ledger_ok, assert_shape

pytestmark = pytest.mark.both_backends  # the tests on the shared server; the others start their own

FAST, ROUTER = "/v1/orders", "/v1/orders/"
# Headers whose values differ between two answers by nature (ids, lengths, time).
_VARYING = {"request-id", "content-length", "date"}


def _order(product_id: str, player_id: str, **fields) -> dict:
    return {"player_id": player_id, "currency": "USD", "items": [{"product_id": product_id, "quantity": 1}], **fields}


def _shape(value):
    """The JSON's structure with its scalars replaced by their types (ids and times differ)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_the_router_serves_the_trailing_slash_route(merchant):
    """The comparison below means something only if `/v1/orders/` really is the router's."""
    with merchant.client() as client:
        product = merchant.product(client)
        made = client.post(ROUTER, json=_order(product["id"], "slash"))
        assert made.status_code == 201, made.text
        assert client.get(f"/v1/orders/{made.json()['id']}").json()["status"] == "pending"
    scanned = merchant.server.raw("SELECT status FROM orders WHERE id = ?", (made.json()["id"],))
    assert [r["status"] for r in scanned] == ["pending"]


def test_a_created_order_and_its_replay_answer_as_the_router_does(merchant, server):
    with merchant.client() as client:
        product = merchant.product(client)
        answers = {}
        for path in (FAST, ROUTER):
            key = {"Idempotency-Key": f"same-{path}"}
            n = path.count("/")  # each its own player, IP and device: no velocity rule sees the other
            body = _order(product["id"], f"player{n}", ip=f"203.0.113.{n}", device_id=f"dev-{n}")
            first, replay = client.post(path, json=body, headers=key), client.post(path, json=body, headers=key)
            other = client.post(path, json={**body, "player_id": "someone-else"}, headers=key)
            answers[path] = (first, replay, other)
        for fast, routed in zip(answers[FAST], answers[ROUTER], strict=True):
            assert fast.status_code == routed.status_code, (fast.text, routed.text)
            assert set(fast.headers) == set(routed.headers), (fast.headers, routed.headers)
            assert {k: v for k, v in fast.headers.items() if k not in _VARYING} == \
                   {k: v for k, v in routed.headers.items() if k not in _VARYING}
            assert _shape(fast.json()) == _shape(routed.json())
        first, replay, other = answers[FAST]
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == first.json()
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
        assert first.headers["request-id"] != replay.headers["request-id"]
    ids = {path: answers[path][0].json()["id"] for path in (FAST, ROUTER)}
    for order_id in ids.values():  # one order each, in the file, whatever was asked three times
        assert server.raw("SELECT count(*) AS n FROM orders WHERE id = ?", (order_id,))[0]["n"] == 1
        assert server.raw("SELECT count(*) AS n FROM payments WHERE order_id = ?", (order_id,))[0]["n"] == 1
    with server.admin() as admin:  # the audit log: the order's row once, then the replay's and the refusal's
        entries = admin.get("/v1/admin/audit", params={"merchant_id": merchant.id, "action": "order.create",
                                                       "limit": 100}).json()["data"]
    for order_id in ids.values():
        assert [e["status_code"] for e in entries if e["object_id"] == order_id] in ([201, 201], [201, 201, 201])
    assert sorted(e["status_code"] for e in entries) == [201] * 4 + [422] * 2
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert 'route="/v1/orders",status="201"' in metrics.replace('method="POST",', "")
    assert_ledger_ok(server)


def _refusals(product_id: str, key: str, publishable: str) -> list[tuple[str, dict, bytes]]:
    good = httpx.Request("POST", "http://x", json=_order(product_id, "r1")).content
    bearer = {"Authorization": f"Bearer {key}"}
    return [
        ("no key", {}, good),
        ("a wrong key", {"Authorization": "Bearer sk_test_" + "x" * 43}, good),
        ("a wrong key and a bad body", {"Authorization": "Bearer sk_test_" + "x" * 43}, b"{not json"),
        ("not a bearer", {"Authorization": f"Basic {key}"}, good),
        ("a publishable key", {"Authorization": f"Bearer {publishable}"}, good),
        ("an empty body", bearer, b""),
        ("a blank body", bearer, b"  \n"),
        ("not JSON", bearer, b"{not json"),
        ("trailing junk", bearer, good + b"x"),
        ("a JSON array", bearer, b"[1, 2]"),
        ("a string quantity", bearer, good.replace(b'"quantity":1', b'"quantity":"1"')),
        ("a float quantity", bearer, good.replace(b'"quantity":1', b'"quantity":1.0')),
        ("a missing field", bearer, good.replace(b'"player_id":"r1",', b"")),
        ("an unknown field", bearer, good[:-1] + b',"colour":"red"}'),
        ("bad UTF-8", bearer, good.replace(b'"r1"', b'"r\xff"')),
        ("deep nesting", bearer, b'{"player_id":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("an unknown product", bearer, good.replace(product_id.encode(), b"prd_nope")),
        ("a bad Idempotency-Key", {**bearer, "Idempotency-Key": "tab\there"}, good),
        ("an Idempotency-Key too long", {**bearer, "Idempotency-Key": "k" * 256}, good),
    ]


def test_every_refusal_is_the_routers_own_answer(merchant, server):
    with merchant.client() as client:
        product = merchant.product(client)
        publishable = client.get("/v1/account").json().get("publishable_key")
    with server.admin() as admin:
        publishable = publishable or admin.post(f"/v1/merchants/{merchant.id}/publishable_keys").json()["publishable_key"]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for name, headers, body in _refusals(product["id"], merchant.key, publishable):
            fast, routed = (client.post(path, headers={"Content-Type": "application/json", **headers}, content=body)
                            for path in (FAST, ROUTER))
            assert 400 <= fast.status_code < 500, (name, fast.status_code, fast.text)
            assert (fast.status_code, assert_shape(fast)) == (routed.status_code, assert_shape(routed)), name
            assert set(fast.headers) == set(routed.headers), name
    assert server.raw("SELECT count(*) AS n FROM orders WHERE merchant_id = ?", (merchant.id,))[0]["n"] == 0


def test_a_body_in_chunks_and_one_over_the_limit(tmp_path):
    own = RunningServer(db_path=tmp_path / "chunks.sqlite", clock=TestClock(),
                        env={"APSS_SERVER_REQUEST_BODY_BYTES_MAX": "4096"}).start()
    try:
        merchant = own.new_merchant()
        with merchant.client() as client:
            product = merchant.product(client)
            body = httpx.Request("POST", "http://x", json=_order(product["id"], "chunky")).content

            def pieces():  # no Content-Length: chunked, several http.request messages
                for start in range(0, len(body), 7):
                    yield body[start:start + 7]

            made = client.post(FAST, content=pieces())
            assert made.status_code == 201, made.text
            assert own.raw("SELECT player_id FROM orders WHERE id = ?", (made.json()["id"],))[0]["player_id"] == "chunky"
            padded = _order(product["id"], "big", metadata={"note": "x" * 5000})
            for path in (FAST, ROUTER):
                too_big = client.post(path, json=padded)
                assert too_big.status_code == 413 and assert_shape(too_big)["code"] == "body_too_large", too_big.text
            assert own.raw("SELECT count(*) AS n FROM orders")[0]["n"] == 1
    finally:
        own.stop()


@pytest.mark.parametrize("path", [FAST, ROUTER])
def test_the_rate_limit_holds_on_both(tmp_path, path):
    own = RunningServer(db_path=tmp_path / "rate.sqlite", clock=TestClock(),
                        env={"APSS_API_REQUESTS_PER_S_MAX": "1", "APSS_API_BURST_MAX": "3"}).start()
    try:
        merchant = own.new_merchant()
        with merchant.client() as client:
            product = merchant.product(client)  # the burst's first token
            answers = [client.post(path, json=_order(product["id"], f"p{i}")) for i in range(5)]
        assert [a.status_code for a in answers][:2] == [201, 201] and answers[-1].status_code == 429, \
            [a.status_code for a in answers]
        refused = answers[-1]
        assert assert_shape(refused)["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
        made = sum(a.status_code == 201 for a in answers)
        assert own.raw("SELECT count(*) AS n FROM orders")[0]["n"] == made
    finally:
        own.stop()
