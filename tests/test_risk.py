"""Risk control through the real server: rules set over the API decide the very next order;
blocked orders fail in their creation transaction with nothing reserved; reviews hold paid orders
until approved or rejected; velocity counters move with the test clock; 3-D Secure in the sandbox.
Outcomes are checked against the database itself (raw reads), the sandbox's book and the ledger."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest

from tests.conftest import assert_error, assert_ledger_ok, wait_for

pytestmark = pytest.mark.both_backends


def _rules(client: httpx.Client, *rules: tuple[str, str]) -> None:
    response = client.put("/v1/risk/rules", json={"rules": [{"name": n, "rule": r} for n, r in rules]})
    assert response.status_code == 200, response.text
    assert [r["rule"] for r in response.json()["rules"]] == [r for _, r in rules]


def _pay(client: httpx.Client, order: dict, *, succeed: bool = True) -> None:
    action = "succeed" if succeed else "fail"
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/{action}").status_code == 202


def _status(client: httpx.Client, order_id: str, wanted: str) -> dict:
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order_id}").json())["status"] == wanted and o)


def _fired(client: httpx.Client, order_id: str) -> list[str]:
    risk = client.get(f"/v1/orders/{order_id}/risk")
    assert risk.status_code == 200, risk.text
    return [r["name"] for r in risk.json()["rules_fired"]]


def test_a_malformed_rule_is_refused_with_its_position_and_nothing_changes(merchant):
    with merchant.client() as client:
        before = client.get("/v1/risk/rules").json()
        assert before["default"] is True
        bad = client.put("/v1/risk/rules", json={"rules": [
            {"name": "ok", "rule": "block if amount > 100"},
            {"name": "ok2", "rule": "review if ip_country == 'US'"},
            {"name": "bad", "rule": "block if orders_per_ip_1h > 5 and colour == 'red'"}]})
        error = assert_error(bad, 400, "invalid_request_error", "rule_invalid", "rules[2].rule")
        position = "block if orders_per_ip_1h > 5 and colour == 'red'".index("colour") + 1
        assert "'colour'" in error["message"] and f"position {position}" in error["message"], error
        bad_token = client.put("/v1/risk/rules", json={"rules": [{"name": "x", "rule": "block if amount >> 5"}]})
        assert "position 18" in assert_error(bad_token, 400, "invalid_request_error", "rule_invalid", "rules[0].rule")["message"]
        mismatch = client.put("/v1/risk/rules", json={"rules": [{"name": "x", "rule": "block if amount == 'big'"}]})
        assert "type mismatch" in assert_error(mismatch, 400, "invalid_request_error", "rule_invalid")["message"]
        assert client.get("/v1/risk/rules").json() == before


def test_a_rule_changed_through_the_api_applies_to_the_very_next_order(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=10)
        _rules(client, ("big", "block if amount > 1000"))
        allowed = merchant.order(client, product["id"], player_id="p1")
        assert allowed.status_code == 201 and allowed.json()["status"] == "pending"
        _rules(client, ("small", "block if amount >= 500 and currency == 'USD'"))
        blocked = merchant.order(client, product["id"], player_id="p1")
        assert blocked.status_code == 201, blocked.text
        body = blocked.json()
        assert body["status"] == "failed" and body["payment"]["status"] == "failed"
        assert body["payment"]["failure_code"] == "risk_blocked"
        assert _fired(client, body["id"]) == ["small"]
        # nothing reserved, no provider reference, failed in the creation transaction
        raw = merchant.server.raw
        [product_row] = raw("SELECT stock, reserved FROM products WHERE id = ?", (product["id"],))
        assert (product_row["stock"], product_row["reserved"]) == (9, 1)  # only the first order holds a unit
        [payment] = raw("SELECT * FROM payments WHERE order_id = ?", (body["id"],))
        assert payment["provider_ref"] is None and payment["status"] == "failed"
        events = [r["to_status"] for r in raw("SELECT to_status FROM order_events WHERE order_id = ? ORDER BY id",
                                              (body["id"],))]
        assert events == ["pending", "failed"]
        attempts = raw("SELECT count(*) FROM payment_attempts WHERE payment_id = ?", (payment["id"],))[0][0]
        assert attempts == 0, "no provider was called"
        # the blocked attempt counts: a rule on the player's orders sees both
        _rules(client, ("velocity", "block if orders_per_player_1h >= 2"))
        third = merchant.order(client, product["id"], player_id="p1").json()
        assert third["status"] == "failed" and _fired(client, third["id"]) == ["velocity"]
        risk = client.get(f"/v1/orders/{third['id']}/risk").json()
        assert risk["attributes"]["orders_per_player_1h"] == 2 and risk["action"] == "block"


def test_card_testing_many_declines_from_one_device_are_blocked(merchant):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 50})
        _rules(client, ("card_testing", "block if declines_per_device_1h >= 3"))
        for i in range(3):
            order = merchant.order(client, product["id"], player_id=f"tester-{i}", device_id="dev-evil",
                                   metadata={"sandbox_outcome": "declined"}).json()
            assert order["status"] == "pending"
            _pay(client, order)
            _status(client, order["id"], "failed")
        blocked = merchant.order(client, product["id"], player_id="tester-9", device_id="dev-evil").json()
        assert blocked["status"] == "failed" and blocked["payment"]["failure_code"] == "risk_blocked"
        assert _fired(client, blocked["id"]) == ["card_testing"]
        assert client.get(f"/v1/orders/{blocked['id']}/risk").json()["attributes"]["declines_per_device_1h"] == 3
        other = merchant.order(client, product["id"], player_id="tester-9", device_id="dev-good").json()
        assert other["status"] == "pending"
        # the window slides with the test clock: an hour later the device may try again
        merchant.server.clock.advance(seconds=3601)
        later = merchant.order(client, product["id"], player_id="tester-9", device_id="dev-evil").json()
        assert later["status"] == "pending", "declines older than the hour window do not count"
        assert client.get(f"/v1/orders/{later['id']}/risk").json()["attributes"]["declines_per_device_1h"] == 0


def test_velocity_from_one_ip_across_many_players_goes_to_review_then_approve_delivers(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=20)
        _rules(client, ("ip_velocity", "review if players_per_ip_1h >= 3"))
        hook = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
        assert hook.status_code == 201, hook.text
        orders = [merchant.order(client, product["id"], player_id=f"farm-{i}", ip="53.10.20.30").json() for i in range(4)]
        assert [_fired(client, o["id"]) for o in orders] == [[], [], [], ["ip_velocity"]]
        held = orders[3]
        risk = client.get(f"/v1/orders/{held['id']}/risk").json()
        assert risk["action"] == "review" and risk["attributes"]["players_per_ip_1h"] == 3
        assert risk["attributes"]["ip_country"] == "DE"
        _pay(client, held)
        _status(client, held["id"], "in_review")
        inventory = client.get("/v1/players/farm-3/inventory").json()
        assert inventory["items"] == [], "nothing delivered while in review"
        reviews = client.get("/v1/risk/reviews").json()
        assert [r["order_id"] for r in reviews["data"]] == [held["id"]]
        assert reviews["data"][0]["rules_fired"][0]["name"] == "ip_velocity"
        risk = client.get(f"/v1/orders/{held['id']}/risk").json()
        assert risk["stage"] == "callback" and len(risk["history"]) == 1 and risk["history"][0]["stage"] == "order"
        raw = merchant.server.raw
        assert raw("SELECT count(*) FROM alerts WHERE object_id = ? AND kind = 'paid_not_delivered'",
                   (held["id"],))[0][0] == 0
        types = {r["type"] for r in raw("SELECT type FROM webhook_events WHERE merchant_id = ?", (merchant.id,))}
        assert "order.in_review" in types, types
        approved = client.post(f"/v1/risk/reviews/{held['id']}/approve")
        assert approved.status_code == 200 and approved.json()["status"] == "fulfilled", approved.text
        assert client.get("/v1/players/farm-3/inventory").json()["items"] == [{"sku": product["sku"], "quantity": 1}]
        again = client.post(f"/v1/risk/reviews/{held['id']}/approve")
        assert_error(again, 409, "conflict_error", "invalid_state")
    assert_ledger_ok(merchant.server)


def test_a_blacklisted_device_is_blocked_and_reject_refunds_a_held_order(merchant):
    with merchant.client() as client:
        product = merchant.product(client, stock=5)
        item = client.post("/v1/risk/lists/blocked_devices/items", json={"value": "dev-stolen", "reason": "chargebacks"})
        assert item.status_code == 201 and item.json()["id"].startswith("rli_")
        blocked = merchant.order(client, product["id"], player_id="thief", device_id="dev-stolen").json()
        assert blocked["status"] == "failed" and _fired(client, blocked["id"]) == ["blocked_devices"]
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == 5
        # removed by id: the very next order passes
        removed = client.delete(f"/v1/risk/lists/blocked_devices/items/{item.json()['id']}")
        assert removed.status_code == 200
        assert client.get("/v1/risk/lists/blocked_devices/items").json()["data"] == []
        _rules(client, ("review_all", "review if device_id == 'dev-stolen'"))
        held = merchant.order(client, product["id"], player_id="thief", device_id="dev-stolen").json()
        assert held["status"] == "pending"
        _pay(client, held)
        _status(client, held["id"], "in_review")
        assert client.get(f"/v1/products/{product['id']}").json()["sold"] == 1
        rejected = client.post(f"/v1/risk/reviews/{held['id']}/reject")
        assert rejected.status_code == 200, rejected.text
        final = _status(client, held["id"], "refunded")
        assert final["status"] == "refunded"
        back = client.get(f"/v1/products/{product['id']}").json()
        assert (back["stock"], back["sold"]) == (5, 0), "rejecting releases the units"
        assert client.get("/v1/players/thief/inventory").json()["items"] == []
        refunds = merchant.server.raw("SELECT amount, status FROM refunds WHERE order_id = ?", (held["id"],))
        assert [(r["amount"], r["status"]) for r in refunds] == [(held["amount"], "succeeded")]
    assert_ledger_ok(merchant.server)


@pytest.mark.parametrize("listed, ip, blocked", [
    ("10.1.0.0/16", "10.1.200.3", True), ("10.1.0.0/16", "10.2.0.1", False),
    ("2001:db8:abcd::/48", "2001:db8:abcd:12::5", True), ("203.0.113.7", "203.0.113.7", True),
])
def test_a_blacklisted_cidr_blocks_addresses_inside_it(merchant, listed, ip, blocked):
    with merchant.client() as client:
        product = merchant.product(client)
        assert client.post("/v1/risk/lists/blocked_ips/items", json={"value": listed}).status_code == 201
        order = merchant.order(client, product["id"], ip=ip).json()
        assert (order["status"] == "failed") is blocked
        assert _fired(client, order["id"]) == (["blocked_ips"] if blocked else [])


def test_lists_mask_emails_expire_and_merchant_lists_work_in_rules(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        added = client.post("/v1/risk/lists/blocked_emails/items", json={"value": "Fraudster@Example.com"}).json()
        assert added["value"] == "f***@example.com"
        raw = merchant.server.raw("SELECT value FROM risk_list_items WHERE id = ?", (added["id"],))[0]["value"]
        assert "fraudster" not in raw.lower() and len(raw) == 32
        assert merchant.order(client, product["id"], email="fraudster@example.com").json()["status"] == "failed"
        assert merchant.order(client, product["id"], email="honest@example.com").json()["status"] == "pending"
        bad = client.post("/v1/risk/lists/blocked_ips/items", json={"value": "not-an-ip"})
        assert_error(bad, 400, "invalid_request_error", "list_value_invalid", "value")
        now_ms = merchant.server.clock.now_ms()
        from apss.clock import format_rfc3339
        client.post("/v1/risk/lists/vip/items", json={"value": "whale", "expires_at": format_rfc3339(now_ms + 60_000)})
        _rules(client, ("vip", "allow if player_id in @vip"), ("all", "block if amount > 0"))
        assert merchant.order(client, product["id"], player_id="whale").json()["status"] == "pending"
        assert merchant.order(client, product["id"], player_id="minnow").json()["status"] == "failed"
        merchant.server.clock.advance(seconds=61)
        assert merchant.order(client, product["id"], player_id="whale").json()["status"] == "failed", "expired entry"


def test_three_d_secure_in_the_sandbox_passes_and_fails_as_chosen(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        _rules(client, ("threeds", "require_3ds if billing_country == 'GB'"),
               ("card_check", "review if stage == 'callback' and card_country != billing_country"))
        page = httpx.Client(base_url=merchant.server.base_url, timeout=30, follow_redirects=False)
        outcomes = {}
        for choice in ("3ds_pass", "3ds_fail"):
            order = merchant.order(client, product["id"], billing_country="GB",
                                   metadata={"sandbox_card_country": "GB"}).json()
            assert client.get(f"/v1/orders/{order['id']}/risk").json()["action"] == "require_3ds"
            url = order["payment"]["next_action"]["url"]
            ref = url.rsplit("/", 1)[1]
            pay = page.post(f"/sandbox/pay/{ref}/pay", data={"lang": "en"})
            assert pay.status_code == 303 and "step=3ds" in pay.headers["location"]
            step = page.get(pay.headers["location"])
            assert step.status_code == 200 and "sandbox-3ds-pass" in step.text
            assert page.post(f"/sandbox/pay/{ref}/{choice}", data={"lang": "en"}).status_code == 303
            outcomes[choice] = order["id"]
        _status(client, outcomes["3ds_pass"], "fulfilled")
        failed = _status(client, outcomes["3ds_fail"], "failed")
        assert failed["payment"]["failure_code"] == "authentication_failed"
        # magic values: frictionless (no challenge step), and a challenge that fails
        smooth = merchant.order(client, product["id"], billing_country="GB",
                                metadata={"sandbox_outcome": "three_ds_frictionless", "sandbox_card_country": "GB"}).json()
        ref = smooth["payment"]["next_action"]["url"].rsplit("/", 1)[1]
        assert page.post(f"/sandbox/pay/{ref}/pay", data={"lang": "en"}).headers["location"].startswith(f"/sandbox/pay/{ref}?")
        _status(client, smooth["id"], "fulfilled")
        doomed = merchant.order(client, product["id"], billing_country="GB", metadata={"sandbox_outcome": "three_ds_fails"}).json()
        _pay(client, doomed)
        assert _status(client, doomed["id"], "failed")["payment"]["failure_code"] == "authentication_failed"
        # a card from another country than the billing one: held at callback time
        mismatch = merchant.order(client, product["id"], billing_country="GB", metadata={"sandbox_card_country": "BR"}).json()
        _pay(client, mismatch)
        _status(client, mismatch["id"], "in_review")
        risk = client.get(f"/v1/orders/{mismatch['id']}/risk").json()
        assert risk["stage"] == "callback" and risk["attributes"]["card_country"] == "BR"
        assert [r["name"] for r in risk["rules_fired"]] == ["threeds", "card_check"]
        page.close()
    assert_ledger_ok(merchant.server)


def test_orders_refuse_a_bad_ip(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        assert_error(merchant.order(client, product["id"], ip="999.1.1.1"), 400, "invalid_request_error", "invalid_ip", "ip")
        assert_error(client.get("/v1/orders/ord_nope/risk"), 404, "invalid_request_error", "not_found")


class _Receiver:
    """The merchant's pre-payment check endpoint: answers by player id, records what it got."""

    def __init__(self) -> None:
        import http.server
        import threading
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                player = __import__("json").loads(body)["player_id"]
                if player.startswith("slow"):
                    __import__("time").sleep(1.0)
                answer = b'{"allow": false, "reason": "banned"}' if player.startswith("deny") else b'{"allow": true}'
                self.send_response(200 if not player.startswith("broken") else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                try:
                    self.wfile.write(answer)
                except BrokenPipeError:  # the slow answer: APSS stopped waiting
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/precheck"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_pre_payment_check_is_signed_and_its_answer_decides(merchant):
    import hashlib
    import hmac
    import json

    receiver = _Receiver()
    try:
        with merchant.client() as client:
            product = merchant.product(client)
            assert_error(client.get("/v1/risk/precheck"), 404, "invalid_request_error", "not_found")
            put = client.put("/v1/risk/precheck", json={"url": receiver.url, "timeout_ms": 200, "on_timeout": "block"})
            assert put.status_code == 200, put.text
            secret = put.json()["secret"]
            assert client.get("/v1/risk/precheck").json()["secret"] is None, "the secret is shown only when set"
            allowed = merchant.order(client, product["id"], player_id="ok-1", ip="8.8.8.8").json()
            assert allowed["status"] == "pending"
            headers, body = receiver.received[-1]
            sent = json.loads(body)
            assert sent["type"] == "order.precheck" and sent["player_id"] == "ok-1" and sent["ip"] == "8.8.8.8"
            assert sent["items"] == [{"product_id": product["id"], "quantity": 1}]
            stamp, signature = (part.split("=", 1)[1] for part in headers["APSS-Signature"].split(","))
            expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(signature, expected), "signed like merchant webhooks, with the check's secret"
            risk = client.get(f"/v1/orders/{allowed['id']}/risk").json()
            assert risk["attributes"]["precheck_answer"] == "allow" and risk["attributes"]["precheck_latency_ms"] >= 0
            denied = merchant.order(client, product["id"], player_id="deny-1").json()
            assert denied["status"] == "failed" and _fired(client, denied["id"]) == ["precheck"]
            slow = merchant.order(client, product["id"], player_id="slow-1").json()
            assert slow["status"] == "failed", "a timeout follows the policy: block"
            assert client.get(f"/v1/orders/{slow['id']}/risk").json()["attributes"]["precheck_answer"] == "timeout"
            assert client.put("/v1/risk/precheck", json={"url": receiver.url, "timeout_ms": 200,
                                                         "on_timeout": "allow"}).status_code == 200
            broken = merchant.order(client, product["id"], player_id="broken-1").json()
            assert broken["status"] == "pending"
            assert client.get(f"/v1/orders/{broken['id']}/risk").json()["attributes"]["precheck_answer"] == "error"
            assert client.delete("/v1/risk/precheck").status_code == 200
            count = len(receiver.received)
            assert merchant.order(client, product["id"], player_id="deny-2").json()["status"] == "pending"
            assert len(receiver.received) == count, "no check once removed"
    finally:
        receiver.server.shutdown()


def test_cards_refunds_and_disputes_per_player_count_in_the_write_path(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        _rules(client, ("cards", "review if cards_per_player_1d >= 2"), ("refunds", "block if refunds_per_player_7d >= 1"),
               ("watch", "review if player_account_age_days > 100"))
        paid = []
        for fingerprint in ("fp_a", "fp_b"):
            order = merchant.order(client, product["id"], player_id="carder",
                                   metadata={"sandbox_card_fingerprint": fingerprint}).json()
            _pay(client, order)
            paid.append(_status(client, order["id"], "fulfilled"))
        third = merchant.order(client, product["id"], player_id="carder").json()
        risk = client.get(f"/v1/orders/{third['id']}/risk").json()
        assert risk["attributes"]["cards_per_player_1d"] == 2 and risk["action"] == "review"
        assert risk["attributes"]["refunds_per_player_7d"] == 0 and risk["attributes"]["player_account_age_days"] == 0
        refund = client.post(f"/v1/orders/{paid[0]['id']}/refunds", json={})
        assert refund.status_code == 201, refund.text
        _status(client, paid[0]["id"], "refunded")
        fourth = merchant.order(client, product["id"], player_id="carder").json()
        assert fourth["status"] == "failed" and _fired(client, fourth["id"]) == ["refunds"]
        # counted by bucket rows, not a scan: the table holds them
        dims = {r["dimension"] for r in merchant.server.raw(
            "SELECT DISTINCT dimension FROM risk_counters WHERE merchant_id = ?", (merchant.id,))}
        assert {"orders:player", "amount:player", "refunds:player"} <= dims, dims
    assert_ledger_ok(merchant.server)


def test_the_default_rules_score_with_the_shipped_model(server):
    """risk_score comes from the fraud model: an ordinary first purchase scores low and passes; a
    device that failed payment after payment under new player ids scores high enough that the
    default rule set (`require_3ds if risk_score >= 65`, `block if risk_score >= 90`) acts on it.
    The score stored equals the model's own on the features the decision records."""
    from apss.domain.risk.score import score

    merchant = server.new_merchant()  # the default rule set, untouched
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 100})
        ordinary = merchant.order(client, product["id"], player_id="steady-1", ip="81.2.69.160", device_id="phone-1").json()
        first = client.get(f"/v1/orders/{ordinary['id']}/risk").json()
        assert first["action"] == "allow" and first["score"] < 65, first
        bare = merchant.order(client, product["id"], player_id="steady-2").json()  # no IP, no device: not scored
        assert "risk_score" not in client.get(f"/v1/orders/{bare['id']}/risk").json()["attributes"]
        for i in range(6):
            order = merchant.order(client, product["id"], player_id=f"burst-{i}", ip="81.2.69.161", device_id="rig-1",
                                   metadata={"sandbox_outcome": "declined"}).json()
            if order["status"] == "failed":
                break
            _pay(client, order, succeed=False)
            _status(client, order["id"], "failed")
        attempt = merchant.order(client, product["id"], player_id="burst-9", ip="81.2.69.161", device_id="rig-1").json()
        risk = client.get(f"/v1/orders/{attempt['id']}/risk").json()
        assert risk["score"] >= 65 and risk["action"] in ("require_3ds", "block"), risk
        attrs = risk["attributes"]
        assert risk["score"] == score({**attrs, "account_age_s": 0, "hour_of_day": int(risk["created_at"][11:13]),
                                       **{f"amount_usd_per_player_{w}": attrs[f"amount_per_player_{w}"] for w in ("1h", "1d", "7d")}})


def test_window_counts_of_several_keys_in_one_statement_match_a_brute_force_sum(tmp_path):
    """store.risk reads all of an order's counters in one statement: each (dimension, key) gets
    exactly the sums (and distinct counts) a per-row scan in Python gives, absent keys zeros."""
    import random

    from apss.store import risk as risk_store
    from apss.store.db import Tx
    from apss.store.migrate import apply_migrations

    path = str(tmp_path / "windows.sqlite")
    apply_migrations(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    rng = random.Random(7)
    now_s = 1_800_000_000
    keys = [(d, k) for d in ("orders:ip", "amount:player") for k in ("a", "b", "c")]
    conn.execute("BEGIN")
    tx = Tx(conn)
    for _ in range(400):
        dimension, key = rng.choice(keys)
        at_s = now_s - rng.randrange(0, 9 * 86_400)
        merchant = rng.choice(("mch_1", "mch_2"))
        risk_store.bump_counters(tx, merchant_id=merchant, increments=[(dimension, key, rng.randint(1, 50))], now_s=at_s)
        risk_store.add_distinct(tx, merchant_id=merchant, members=[(dimension, key, rng.choice("uvwxyz"))], now_s=at_s)
    asked = [*keys, ("orders:ip", "never-seen"), keys[0]]  # an absent key, and a repeated one
    sums = risk_store.counter_sums_tx(tx, merchant_id="mch_1", keys=asked, now_s=now_s)
    distinct = risk_store.distinct_counts_tx(tx, merchant_id="mch_1", keys=asked, now_s=now_s)
    m1, d1, w1 = now_s // 60 - 59, now_s // 3600 - 23, now_s // 3600 - 167
    for dimension, key in asked:
        rows = conn.execute("SELECT grain_s, bucket, value FROM risk_counters WHERE merchant_id = 'mch_1' AND dimension = ?"
                            " AND key = ?", (dimension, key)).fetchall()
        expected = (sum(r["value"] for r in rows if r["grain_s"] == 60 and r["bucket"] >= m1),
                    sum(r["value"] for r in rows if r["grain_s"] == 3600 and r["bucket"] >= d1),
                    sum(r["value"] for r in rows if r["grain_s"] == 3600 and r["bucket"] >= w1))
        assert sums[(dimension, key)] == expected, (dimension, key)
        members = conn.execute("SELECT grain_s, bucket, member FROM risk_distinct WHERE merchant_id = 'mch_1' AND"
                               " dimension = ? AND key = ?", (dimension, key)).fetchall()
        expected_distinct = (len({r["member"] for r in members if r["grain_s"] == 60 and r["bucket"] >= m1}),
                             len({r["member"] for r in members if r["grain_s"] == 3600 and r["bucket"] >= d1}),
                             len({r["member"] for r in members if r["grain_s"] == 3600 and r["bucket"] >= w1}))
        assert distinct[(dimension, key)] == expected_distinct, (dimension, key)
    assert sums[("orders:ip", "never-seen")] == (0, 0, 0) and any(v != (0, 0, 0) for v in sums.values())
    conn.execute("ROLLBACK")


def test_the_players_ip_and_device_marks_count_on_both_backends(merchant):
    """ip_age_s, player_devices_seen and player_ips_seen come from one statement over the
    player's marks (store/risk.py marks_seen_tx), on SQLite and on PostgreSQL alike."""
    player = f"marks-{uuid.uuid4().hex[:8]}"
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 100})

        def values(**fields) -> tuple:
            order = merchant.order(client, product["id"], player_id=player, **fields).json()
            attributes = client.get(f"/v1/orders/{order['id']}/risk").json()["attributes"]
            return tuple(attributes.get(k) for k in ("ip_age_s", "new_device", "player_devices_seen", "player_ips_seen"))

        assert values(ip="81.2.69.170", device_id="marks-phone") == (0, True, 0, 0)
        age, *rest = values(ip="81.2.69.170", device_id="marks-tablet")
        assert age >= 0 and rest == [True, 1, 1]
        assert values(ip="81.2.69.171", device_id="marks-phone") == (0, False, 2, 1)
        assert values() == (None, None, 2, 2)
