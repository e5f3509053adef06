"""A full disk and a read-only database under the real app over HTTP: writes answer 503
not_ready, reads keep working, nothing is half-written, and writes come back by themselves (no
restart) once space returns or the file is writable again.

The full disk is a real SQLITE_FULL: `PRAGMA max_page_count` on the writer's connection
(Database.set_page_count_max, also `database.page_count_max` in config). The read-only file is
SQLite's own `mode=ro` open of the writer's connection (Database.set_read_only): chmod does not stop
root, who runs the tests in CI, and `chattr +i` needs a capability containers often lack."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from apss.clock import TestClock
from tests.conftest import RunningServer, assert_error, wait_for

STOCK = 400


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    # A server of its own: the shared one must never see a full or read-only database. A short
    # provider timeout lets the completer finish a request cut off between its transactions soon.
    env = {"APSS_CHANNELS_PROVIDER_TIMEOUT_S": "1", "APSS_ORDERS_IDEMPOTENCY_RUNNING_MAX_S": "5"}
    running = RunningServer(db_path=tmp_path_factory.mktemp("disk") / "apss.sqlite", clock=TestClock(), env=env).start()
    yield running
    running.stop()


def _raw(path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _dump(path) -> list[str]:
    raw = _raw(path)
    try:
        return list(raw.iterdump())
    finally:
        raw.close()


def _order(client: httpx.Client, product_id: str, n: int) -> httpx.Response:
    # Metadata values make each order take room, so the page cap is reached within a few orders.
    return client.post("/v1/orders", headers={"Idempotency-Key": f"full-{n}"},
                       json={"player_id": f"p{n}", "currency": "USD", "items": [{"product_id": product_id, "quantity": 1}],
                             "metadata": {f"k{i}": "v" * 200 for i in range(10)}})


def _stock_adds_up(path, product_id: str) -> tuple[int, int]:
    raw = _raw(path)
    try:
        stock, reserved, sold = raw.execute("SELECT stock, reserved, sold FROM products WHERE id = ?", (product_id,)).fetchone()
        orders = raw.execute("SELECT count(*) FROM orders o JOIN order_items i ON i.order_id = o.id WHERE i.product_id = ?",
                             (product_id,)).fetchone()[0]
        bare = raw.execute("SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)"
                           ).fetchone()[0]
    finally:
        raw.close()
    assert stock + reserved + sold == STOCK, (stock, reserved, sold)
    assert bare == 0, "an order without its lines: half-written"
    return reserved + sold, orders


def test_a_full_disk_answers_503_keeps_reads_and_recovers_when_space_returns(own_server):
    server = own_server
    merchant = server.new_merchant("Full disk")
    db = server.services.db
    with merchant.client() as client:
        product = merchant.product(client, stock=STOCK)
        raw = _raw(server.db_path)
        try:
            pages = raw.execute("PRAGMA page_count").fetchone()[0]
        finally:
            raw.close()
        db.set_page_count_max(pages + 2)
        answers = {n: _order(client, product["id"], n) for n in range(40)}
        full = [n for n, r in answers.items() if r.status_code == 503]
        assert full, "the page cap was never reached"
        for n in full:
            assert_error(answers[n], 503, "api_error", "not_ready")
        assert {r.status_code for r in answers.values()} <= {201, 503}, {n: r.text for n, r in answers.items()}
        # Reads keep working while the disk is full.
        assert client.get(f"/v1/products/{product['id']}").status_code == 200
        listed = client.get("/v1/orders", params={"limit": 100})
        assert listed.status_code == 200
        created = {r.json()["id"] for r in answers.values() if r.status_code == 201}
        assert created <= {o["id"] for o in listed.json()["data"]}
        taken, orders = _stock_adds_up(server.db_path, product["id"])
        assert taken == orders >= len(created), "every unit taken is an order's, every 201 is in the file"

        db.set_page_count_max(0)  # space returns: no restart
        wait_for(lambda: client.get("/healthz").status_code == 200)
        server.clock.advance(seconds=10)  # requests cut off between their transactions: the completer ends them
        server.wait_job("completer")
        retried = {n: _order(client, product["id"], n) for n in full}
        assert all(r.status_code == 201 for r in retried.values()), {n: r.text for n, r in retried.items()}
        fresh = _order(client, product["id"], 1000)
        assert fresh.status_code == 201, fresh.text
    taken, orders = _stock_adds_up(server.db_path, product["id"])
    assert taken == orders == len(answers) + 1, "each key made exactly one order, the retried ones included"


def test_a_read_only_database_answers_503_changes_nothing_and_recovers(own_server):
    server = own_server
    merchant = server.new_merchant("Read-only")
    db = server.services.db
    with merchant.client() as client:
        product = merchant.product(client, stock=STOCK)
        wait_for(lambda: client.get("/healthz").status_code == 200)
        db.set_read_only(True)
        try:
            before = _dump(server.db_path)
            refused = [_order(client, product["id"], 5000 + n) for n in range(3)]
            refused.append(client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": -1}))
            for response in refused:
                assert_error(response, 503, "api_error", "not_ready")
            assert client.get("/healthz").status_code == 503
            assert client.get(f"/v1/products/{product['id']}").json()["stock"] == STOCK
            assert _dump(server.db_path) == before, "a refused write changed the file"
        finally:
            db.set_read_only(False)
        assert _order(client, product["id"], 6000).status_code == 201
        assert client.get("/healthz").status_code == 200
