"""Privacy through the real server: a player's export checked against a raw scan of the database;
erasure checked by a byte scan of the database file, its -wal and -shm (raw bytes and common
encodings), the ledger check, the export and lookups by the original id afterwards, and a
pre-erasure backup restored and erased again at start; the audit log for a set of actions; key
rotation re-sealing and the retention of IPs (raw rows); the audit hook's route table."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import msgspec
import pytest

from apss.api.audit import ACTIONS, NOT_AUDITED, route_key
from apss.clock import TestClock
from tests.conftest import ADMIN_TOKEN, RunningServer, free_port, wait_for
from tests.test_webhooks import Receiver, _serve

WORKTREE = Path(__file__).resolve().parents[1]


def needles(secret: str) -> dict[str, bytes]:
    """The secret as raw bytes and in the encodings a copy of it could take."""
    raw = secret.encode()
    return {"utf-8": raw, "utf-16-le": secret.encode("utf-16-le"), "utf-16-be": secret.encode("utf-16-be"),
            "base64": base64.b64encode(raw).rstrip(b"="), "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
            "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode(),
            "url": urllib.parse.quote(secret, safe="").encode(), "json-escaped": msgspec.json.encode(secret)[1:-1]}


def byte_scan(db_path: Path, secrets: list[str]) -> list[str]:
    """Every (file, secret, encoding) found in the database file, its -wal and its -shm."""
    found = []
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db_path}{suffix}")
        data = path.read_bytes() if path.exists() else b""
        for secret in secrets:
            for name, needle in needles(secret).items():
                if needle in data:
                    found.append(f"{path.name}: {secret!r} as {name}")
    return found


def ledger_check(db_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apss", "ledger", "check"], cwd=WORKTREE, capture_output=True,
                          text=True, env={**os.environ, "APSS_DATABASE_PATH": str(db_path), "APSS_SEED_DEMO": "false"},
                          timeout=60)


@pytest.fixture
def own_server(tmp_path):
    running = RunningServer(db_path=tmp_path / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


def test_erasure_leaves_no_byte_of_the_player_and_is_applied_again_after_a_restore(own_server, tmp_path):
    server = own_server
    merchant = server.new_merchant()
    player = f"plyr-{uuid.uuid4().hex[:12]}"
    email = f"erase.me.{uuid.uuid4().hex[:8]}@example.org"
    ip = "203.0.113.77"
    device = f"dev-{uuid.uuid4().hex[:10]}"
    secrets_ = [player, email, ip, device]
    receiver = Receiver()
    port = free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(receiver, port, lifespan="off")
    try:
        url = receiver.route(then=200)
        with merchant.client() as client:
            assert client.post("/v1/webhook_endpoints", json={"url": url, "events": ["*"]}).status_code == 201
            item = merchant.product(client, stock=10)
            gems = merchant.product(client, category="currency_pack",
                                    grants=[{"type": "currency", "currency": "GEMS", "amount": 100}])
            orders = []
            for n, product in enumerate((item, gems)):
                # Personal data as the API takes it today: metadata; the idempotency key names the player.
                created = client.post("/v1/orders", headers={"Idempotency-Key": f"order-{player}-{n}"}, json={
                    "player_id": player, "currency": "USD", "items": [{"product_id": product["id"], "quantity": 1}],
                    "metadata": {"email": email, "ip": ip, "device_id": device},
                    "return_url": f"https://game.example/back?player={player}"})
                assert created.status_code == 201, created.text
                orders.append(created.json())
                assert client.post(f"/v1/sandbox/payments/{created.json()['payment']['id']}/succeed").status_code == 202
            for order in orders:
                wait_for(lambda o=order: client.get(f"/v1/orders/{o['id']}").json()["status"] == "fulfilled")
            debit = client.post(f"/v1/players/{player}/wallet/debit", headers={"Idempotency-Key": f"debit-{player}"},
                                json={"currency": "GEMS", "amount": 30, "reason": "potion"})
            assert debit.status_code == 201, debit.text
            refund = client.post(f"/v1/orders/{orders[0]['id']}/refunds", headers={"Idempotency-Key": f"rf-{player}"},
                                 json={"amount": 100})
            assert refund.status_code in (200, 201), refund.text
            wait_for(lambda: sum(1 for r in receiver.at(url) if player.encode() in r.body) >= 4)

            # The export against a raw scan of the database.
            export = client.get(f"/v1/players/{player}/export")
            assert export.status_code == 200, export.text
            body = export.json()
            db = server.db_path
            assert sorted(o["id"] for o in body["orders"]) == sorted(
                r["id"] for r in server.raw("SELECT id FROM orders WHERE merchant_id = ? AND player_id = ?", (merchant.id, player)))
            assert sorted(p["id"] for p in body["payments"]) == sorted(
                r["id"] for r in server.raw("SELECT p.id FROM payments p JOIN orders o ON o.id = p.order_id"
                                            " WHERE o.player_id = ?", (player,)))
            assert [r["id"] for r in body["refunds"]] == [refund.json()["id"]]
            assert {(w["currency"], w["balance"]) for w in body["wallet_balances"]} == {
                (r["currency"], r["balance"]) for r in server.raw("SELECT * FROM wallet_balances WHERE player_id = ?", (player,))}
            assert {(i["sku"], i["quantity"]) for i in body["inventory_items"]} == {(item["sku"], 1)}
            raw_events = {r["id"] for r in server.raw("SELECT id, payload FROM webhook_events WHERE merchant_id = ?",
                                                       (merchant.id,)) if f'"{player}"'.encode() in bytes(r["payload"])}
            assert raw_events and {e["id"] for e in body["webhook_events"]} == raw_events
            assert all(o["metadata"] for o in body["orders"])

            backup = tmp_path / "backup.sqlite"  # a consistent copy taken before the erasure
            with sqlite3.connect(db) as source, sqlite3.connect(backup) as target:
                source.backup(target)
            amounts_before = sorted((o["id"], o["amount"], o["status"]) for o in body["orders"])
            assert byte_scan(db, secrets_), "the scan finds the data while it is there (the scan can fail)"

            erased = client.post(f"/v1/players/{player}/erase", headers={"Idempotency-Key": f"erase-{player}"})
            assert erased.status_code == 200, erased.text
            pseudonym = erased.json()["pseudonym"]
            assert erased.json() == {"player_id": pseudonym, "erased": True, "pseudonym": pseudonym}
            assert pseudonym.startswith("anon_") and player not in pseudonym
            again = client.post(f"/v1/players/{player}/erase", headers={"Idempotency-Key": f"erase-{player}"})
            assert again.json() == erased.json() and again.headers.get("idempotent-replayed") == "true"

            assert byte_scan(db, secrets_) == []
            check = ledger_check(db)
            assert check.returncode == 0, check.stdout + check.stderr

            after = client.get(f"/v1/players/{player}/export").json()
            assert after["player_id"] == pseudonym and after["erased"] is True
            assert sorted((o["id"], o["amount"], o["status"]) for o in after["orders"]) == amounts_before
            assert all(o["player_id"] == pseudonym and o["metadata"] == "{}" for o in after["orders"])
            text = msgspec.json.encode(after).decode()
            assert not any(s in text for s in secrets_), "the export afterwards holds only pseudonymous records"
            assert {e["id"] for e in after["webhook_events"]} == raw_events
            # Requests naming the original id find the pseudonymous records.
            inventory = client.get(f"/v1/players/{player}/inventory").json()
            assert inventory["player_id"] == pseudonym and inventory["items"] == [{"sku": item["sku"], "quantity": 1}]
            assert client.get(f"/v1/players/{player}/wallet").json()["balances"] == {"GEMS": 70}
            listed = client.get("/v1/orders", params={"player_id": player}).json()["data"]
            assert sorted(o["id"] for o in listed) == sorted(o["id"] for o in orders)
            # A stored answer of the erased player replays, pseudonymous, for its key.
            replay = client.post(f"/v1/players/{player}/wallet/debit", headers={"Idempotency-Key": f"debit-{player}"},
                                 json={"currency": "GEMS", "amount": 30, "reason": "potion"})
            assert replay.status_code == 201 and replay.json()["player_id"] == pseudonym
    finally:
        served.should_exit = True
        thread.join(timeout=10)

    # The pre-erasure backup restored: the erasure recorded beside the database is applied at start.
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)
    assert byte_scan(db, secrets_), "the restored backup holds the player again"
    restarted = RunningServer(db_path=db, clock=TestClock(server.clock.now_ms())).start()
    try:
        assert byte_scan(db, secrets_) == []
        with httpx_client(restarted, merchant.key) as client:
            export = client.get(f"/v1/players/{player}/export").json()
            assert export["player_id"] == pseudonym and len(export["orders"]) == 2
        assert ledger_check(db).returncode == 0
    finally:
        restarted.stop()
    server.start = lambda: server  # the fixture stops it once more: harmless


def httpx_client(server: RunningServer, key: str):
    import httpx

    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_audit_log_records_who_did_what_when_and_from_where(own_server):
    server = own_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        product = merchant.product(client, stock=5)
        order = merchant.order(client, product["id"], player_id="audited-player").json()
        client.post(f"/v1/orders/{order['id']}/cancel")
        assert client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": 5}).status_code == 200
        client.post("/v1/players/audited-player/erase")
        client.get("/v1/products")  # a read: not recorded
    with server.admin() as admin:
        assert admin.post(f"/v1/merchants/{merchant.id}/keys").status_code == 201
        page = admin.get("/v1/admin/audit", params={"merchant_id": merchant.id, "limit": 100})
        assert page.status_code == 200, page.text
        entries = page.json()["data"]
        assert set(page.json()) == {"data", "has_more", "next_cursor"}
        actions = [(e["actor"], e["action"], e["object_id"]) for e in reversed(entries)]
        pseudonym = server.services.privacy.personal.pseudonym(merchant.id, "audited-player")
        assert actions == [
            ("admin", "merchant.create", merchant.id),
            ("merchant", "product.create", product["id"]),
            ("merchant", "order.create", order["id"]),
            ("merchant", "order.cancel", order["id"]),
            ("merchant", "product.update", product["id"]),
            ("merchant", "player.erase", f"player:{pseudonym}"),
            ("admin", "merchant.key_roll", merchant.id),
        ]
        assert all(e["ip"] == "127.0.0.1" and e["status_code"] < 300 for e in entries)
        assert {e["key_ref"][:8] for e in entries if e["actor"] == "merchant"} == {"sk_test_"}
        text = page.text
        assert merchant.key not in text and ADMIN_TOKEN not in text and "audited-player" not in text
        only = admin.get("/v1/admin/audit", params={"action": "order.cancel", "merchant_id": merchant.id}).json()["data"]
        assert [e["object_id"] for e in only] == [order["id"]]
    # The IP is sealed at rest, never in clear.
    rows = server.raw("SELECT ip_sealed FROM audit_log WHERE merchant_id = ?", (merchant.id,))
    assert rows and all(r["ip_sealed"].startswith("p1:") and "127.0.0.1" not in r["ip_sealed"] for r in rows)


def test_key_rotation_reseals_in_the_background_and_retention_erases_old_ips(own_server):
    server = own_server
    merchant = server.new_merchant()
    with merchant.client() as client:
        for _ in range(3):
            product = merchant.product(client)
        order = merchant.order(client, product["id"], player_id="kept", ip="81.2.69.160", device_id="dev-kept").json()
    with server.admin() as admin:
        rotated = admin.post("/v1/admin/privacy/keys/rotate")
        assert rotated.status_code == 200, rotated.text
        assert rotated.json() == {"primary_key_id": "p2", "key_ids": ["p1", "p2"]}

    def sealed_kids() -> set[str]:
        return {r["ip_sealed"].split(":")[0] for r in server.raw("SELECT ip_sealed FROM audit_log WHERE ip_sealed IS NOT NULL")}

    wait_for(lambda: sealed_kids() == {"p2"})
    with server.admin() as admin:  # still readable after re-sealing
        assert {e["ip"] for e in admin.get("/v1/admin/audit").json()["data"]} == {"127.0.0.1"}
    server.clock.advance(seconds=91 * 86_400)
    server.wait_job("privacy_retention")
    old = server.raw("SELECT count(*) AS n FROM audit_log WHERE ip_sealed IS NOT NULL AND created_at_ms < ?",
                     (server.clock.now_ms() - 90 * 86_400_000,))
    assert old[0]["n"] == 0
    assert server.raw("SELECT count(*) AS n FROM audit_log")[0]["n"] >= 4, "the entries stay, without IPs"
    facts = server.raw("SELECT ip, device_id FROM risk_order_facts WHERE order_id = ?", (order["id"],))
    assert facts == [(None, None)], "the risk check's IP and device are erased too"


def test_every_changing_route_is_audited_or_listed_as_not_audited(server):
    found = set()
    for route in server.app.routes:
        for handler in getattr(route, "route_handlers", ()):
            for method in handler.http_methods:
                if method in ("POST", "PUT", "PATCH", "DELETE"):
                    found.add(route_key(method, route.path))
    missing = sorted(k for k in found if k not in ACTIONS and k not in NOT_AUDITED)
    assert missing == [], "add the route to api/audit.py ACTIONS (or NOT_AUDITED)"
    stale = sorted(k for k in list(ACTIONS) + list(NOT_AUDITED) if k[0] != "GET" and k not in found)
    assert stale == []


@pytest.mark.anyio
async def test_a_checkpoint_runs_between_batches_and_empties_the_wal(tmp_path):
    from apss.store.db import Database

    database = Database(str(tmp_path / "wal.sqlite"))
    await database.start()
    try:
        await database.write(lambda tx: tx.execute("CREATE TABLE t (v TEXT)"))
        writes = [database.write(lambda tx, i=i: tx.execute("INSERT INTO t VALUES (?)", (f"row{i}",))) for i in range(50)]
        results = await asyncio.gather(*writes, database.checkpoint_truncate())  # queued among the writes
        assert results[-1] is True
        assert (await database.fetch_one("SELECT count(*) AS n FROM t"))["n"] == 50
        assert await database.checkpoint_truncate() is True
        assert Path(f"{tmp_path / 'wal.sqlite'}-wal").stat().st_size == 0
    finally:
        await database.close()
