"""Caches across instances (services/ops/cache_sync.py): two `apss serve` processes on one
PostgreSQL database. A key rolled on A is refused by B once B handled the notice; channel
settings, routing and risk rules set on A apply to B's next order. The fallbacks when a notice
is lost: a key revoked in the database while B's LISTEN connection is cut is refused once it
reconnects (the whole reload), and a change that bumps its generation without a notice reaches a
third instance with a short `database.cache_max_stale_s` by its periodic check, while B, whose
bound is an hour, still knows nothing of it. Each expectation is polled within a bound (no timed
assertion) and checked against the database itself (psycopg)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.channels.standin_stripe import StripeStandIn
from tests.conftest import ADMIN_TOKEN, free_port, start_run_py, wait_for
from tests.test_webhooks import _serve

_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_BOUND_S = 30  # how long a poll may take before the test fails (far above any expected wait)


class Instance:
    def __init__(self, directory: Path, url: str, name: str, *, max_stale_s: float) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        # One database.path for every instance: they share its data key file (<path>.keys).
        env = {"APSS_DATABASE_URL": url, "APSS_DATABASE_PATH": str(directory / "apss.sqlite"),
               "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false",
               "APSS_DATABASE_CACHE_MAX_STALE_S": str(max_stale_s), "APSS_ADMIN_AUTH_FAILURES_MAX": "1000000"}
        self.process = start_run_py(port=self.port, log=directory / f"{name}.log", env=env)

    def get(self, path: str, key: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def post(self, path: str, key: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)

    def put(self, path: str, key: str, body: dict) -> httpx.Response:
        return httpx.put(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def database(pg_server) -> str:
    return pg_server.create_database()


@pytest.fixture(scope="module")
def pair(database, tmp_path_factory) -> Iterator[tuple[Instance, Instance]]:
    """A then B; their periodic check is an hour apart, so within a test only notices (and
    reconnects) move their caches."""
    directory = tmp_path_factory.mktemp("instances")
    a = Instance(directory, database, "a", max_stale_s=3600)
    try:
        b = Instance(directory, database, "b", max_stale_s=3600)
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def _merchant_known_to(a: Instance, *others: Instance) -> tuple[str, str]:
    """A merchant created on A, once every other instance authenticates its key (its notice)."""
    made = httpx.post(f"{a.base_url}/v1/merchants", json={"name": "Scale-out Studio", "mode": "test"}, headers=_ADMIN,
                      timeout=30)
    assert made.status_code == 201, made.text
    merchant_id, key = made.json()["id"], made.json()["secret_key"]
    for other in others:
        wait_for(lambda other=other: other.get("/v1/account", key).status_code == 200, timeout_s=_BOUND_S)
    return merchant_id, key


def _active_hashes(url: str, merchant_id: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key_hash FROM api_keys WHERE merchant_id = %s AND revoked_at_ms IS NULL",
                            (merchant_id,)).fetchall()
    return {row[0] for row in rows}


def _revoke_in_database(url: str, merchant_id: str, *, bump: bool) -> None:
    """Revoke the merchant's keys behind APSS's back: no NOTIFY; the generation bumped or not."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at_ms = 1 WHERE merchant_id = %s AND revoked_at_ms IS NULL",
                     (merchant_id,))
        if bump:
            conn.execute("UPDATE cache_generations SET generation = generation + 1 WHERE name = 'merchants'")


def test_a_key_rolled_on_one_instance_is_refused_by_the_other(pair, database):
    a, b = pair
    merchant_id, old_key = _merchant_known_to(a, b)
    rolled = a.post(f"/v1/merchants/{merchant_id}/keys", ADMIN_TOKEN)
    assert rolled.status_code == 201, rolled.text
    new_key = rolled.json()["secret_key"]
    assert a.get("/v1/account", old_key).status_code == 401  # the instance that rolled it: at once
    wait_for(lambda: b.get("/v1/account", old_key).status_code == 401, timeout_s=_BOUND_S)
    refused = b.get("/v1/account", old_key)
    assert refused.json()["error"]["type"] == "authentication_error"
    assert b.get("/v1/account", new_key).json()["id"] == merchant_id
    assert _active_hashes(database, merchant_id) == {hashlib.sha256(new_key.encode()).hexdigest()}
    with psycopg.connect(database) as conn:  # made, then rolled: two generations at least
        assert conn.execute("SELECT generation FROM cache_generations WHERE name = 'merchants'").fetchone()[0] >= 2


def test_a_change_missed_while_the_listener_was_cut_is_loaded_on_reconnect(pair, database):
    a, b = pair
    merchant_id, key = _merchant_known_to(a, b)
    _revoke_in_database(database, merchant_id, bump=False)
    assert _active_hashes(database, merchant_id) == set()
    # No notice, no generation moved, no periodic check within the hour: B cannot know yet.
    assert b.get("/v1/account", key).status_code == 200
    with psycopg.connect(database, autocommit=True) as conn:
        cut = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE application_name = 'apss-listen-apss_cache' AND datname = current_database()"
                           ).fetchall()  # this pair's: the PostgreSQL server also holds other tests' databases
    assert len(cut) == 2, cut  # A's and B's listeners
    wait_for(lambda: b.get("/v1/account", key).status_code == 401, timeout_s=_BOUND_S)
    # And the listener is back: a notice reaches B again.
    _, later_key = _merchant_known_to(a, b)
    assert b.get("/v1/account", later_key).status_code == 200


def test_a_lost_notice_is_made_good_within_the_staleness_bound(pair, database):
    a, b = pair
    c = Instance(a.directory, database, "c", max_stale_s=0.5)
    try:
        merchant_id, key = _merchant_known_to(a, b, c)
        _revoke_in_database(database, merchant_id, bump=True)
        wait_for(lambda: c.get("/v1/account", key).status_code == 401, timeout_s=_BOUND_S)
        # The periodic check did it: B (an hour's bound) got no notice and still takes the key.
        assert b.get("/v1/account", key).status_code == 200
    finally:
        c.stop()


@pytest.fixture(scope="module")
def stripe_standin() -> Iterator[tuple[StripeStandIn, str]]:
    standin = StripeStandIn(secret_key="sk_test_standin_0123456789", webhook_secret="whsec_standin_0123456789",
                            pi_on_create=True)
    port = free_port()
    server, thread = _serve(standin, port, lifespan="off")
    yield standin, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_channels_routing_and_risk_rules_set_on_one_apply_to_the_others_next_order(pair, database, stripe_standin):
    a, b = pair
    standin, stripe_url = stripe_standin
    merchant_id, key = _merchant_known_to(a, b)
    product = a.post("/v1/products", key, {"sku": f"sku_{uuid.uuid4().hex[:12]}", "name": "Gems", "category": "item",
                                           "prices": {"USD": 500}, "stock": 1000})
    assert product.status_code == 201, product.text

    def order_on_b(**fields) -> httpx.Response:
        return b.post("/v1/orders", key, {"player_id": f"p-{uuid.uuid4().hex[:12]}", "currency": "USD",
                                          "items": [{"product_id": product.json()["id"], "quantity": 1}], **fields})

    first = order_on_b()
    assert first.status_code == 201 and first.json()["channel"] == "sandbox", first.text
    unconfigured = order_on_b(channel="stripe")
    assert unconfigured.json()["error"]["code"] == "channel_not_available", unconfigured.text

    saved = a.put("/v1/channels/stripe", key, {"secret_key": standin.secret_key, "webhook_secret": standin.webhook_secret,
                                               "api_base": stripe_url})
    assert saved.status_code == 200, saved.text
    routed = a.put("/v1/channels/routing", key, {"default": ["stripe"]})
    assert routed.status_code == 200, routed.text
    order = wait_for(lambda: (o := order_on_b().json()).get("channel") == "stripe" and o, timeout_s=_BOUND_S)
    assert order["payment"]["status"] == "requires_action", order
    # The stand-in was asked by B, with the credentials saved on A.
    assert any(s["metadata"].get("apss_payment_id") == order["payment"]["id"] for s in standin.sessions.values())
    assert all(r.headers.get("authorization") == f"Bearer {standin.secret_key}" for r in standin.requests)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT channel FROM payments WHERE id = %s", (order["payment"]["id"],)).fetchone() == ("stripe",)

    rules = a.put("/v1/risk/rules", key, {"rules": [{"name": "small", "rule": "block if amount >= 500 and currency == 'USD'"}]})
    assert rules.status_code == 200, rules.text
    blocked = wait_for(lambda: (o := order_on_b().json()).get("status") == "failed" and o, timeout_s=_BOUND_S)
    assert blocked["payment"]["failure_code"] == "risk_blocked", blocked
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT status FROM orders WHERE id = %s", (blocked["id"],)).fetchone() == ("failed",)
