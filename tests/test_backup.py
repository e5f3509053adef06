"""`apss backup` under load, `apss restore`, and the scheduled backups: a copy taken while orders
are being created is consistent (integrity, foreign keys, ledger, every order whole, stock adds
up), a restore refuses while a server runs on the file and checks the copy and the data key first,
and the key is never written beside a copy."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from apss.clock import TestClock
from tests.conftest import RunningServer, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
STOCK = 10_000


def _apss(*args: str, database: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "APSS_DATABASE_PATH": str(database), "APSS_SEED_DEMO": "false"}
    return subprocess.run([sys.executable, "-m", "apss", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


async def _apss_async(*args: str, database: Path) -> tuple[int, str]:
    env = {**os.environ, "APSS_DATABASE_PATH": str(database), "APSS_SEED_DEMO": "false"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "apss", *args, cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode, out.decode()


def _consistent(path: Path, product_id: str) -> set[str]:
    """The copy's own checks, from a raw connection: returns its order ids."""
    raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        stock, reserved, sold = raw.execute("SELECT stock, reserved, sold FROM products WHERE id = ?", (product_id,)).fetchone()
        lines = raw.execute("SELECT coalesce(sum(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id "
                            "WHERE i.product_id = ? AND o.status = 'pending'", (product_id,)).fetchone()[0]
        orders = {order_id for (order_id,) in raw.execute("SELECT id FROM orders")}
        bare = raw.execute("SELECT count(*) FROM orders o WHERE NOT EXISTS "
                           "(SELECT 1 FROM order_items i WHERE i.order_id = o.id)").fetchone()[0]
    finally:
        raw.close()
    assert stock + reserved + sold == STOCK and reserved == lines, (stock, reserved, sold, lines)
    assert bare == 0, "an order without its lines"
    return orders


async def test_a_backup_under_load_restores_consistent(tmp_path):
    live = tmp_path / "live" / "apss.sqlite"
    server = RunningServer(db_path=live, clock=TestClock()).start()
    try:
        merchant = server.new_merchant("Backed up")
        with merchant.client() as client:
            product = merchant.product(client, stock=STOCK)
        created: list[str] = []
        backup, key = tmp_path / "backups" / "one.sqlite", tmp_path / "vault" / "apss.keys"
        async with merchant.async_client(max_connections=16) as client:
            stop = asyncio.Event()

            async def buyer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    response = await client.post("/v1/orders", json={"player_id": f"p{n}-{i}", "currency": "USD",
                                                                     "items": [{"product_id": product["id"], "quantity": 1}]})
                    assert response.status_code == 201, response.text
                    created.append(response.json()["id"])
                    i += 1

            buyers = [asyncio.create_task(buyer(n)) for n in range(8)]
            await asyncio.sleep(0.3)  # some orders exist before the copy starts
            before = len(created)
            code, out = await _apss_async("backup", str(backup), "--with-key", str(key), database=live)
            after = len(created)
            stop.set()
            await asyncio.gather(*buyers)
        assert code == 0, out
        assert "integrity ok, ledger balances" in out and "orders" in out, out
        assert before > 0 and after > before, (before, after)
        assert not list(backup.parent.glob("*.keys")), "the data key is never beside the copy"
        assert key.read_bytes() == Path(f"{live}.keys").read_bytes() and oct(key.stat().st_mode & 0o777) == "0o600"
        personal = Path(f"{key}.privacy")  # the personal-data keys travel with --with-key too
        assert personal.read_bytes() == Path(f"{live}.privacy").read_bytes() and oct(personal.stat().st_mode & 0o777) == "0o600"

        in_copy = _consistent(backup, product["id"])
        assert set(created[:before]) <= in_copy <= set(created), "the copy is one moment: everything answered before it"

        # Refused while a server runs on the file, and nothing changed.
        refused = _apss("restore", str(backup), database=live)
        assert refused.returncode == 2 and "a server is running" in refused.stderr, refused.stderr
        assert len(_consistent(live, product["id"])) >= len(created)
    finally:
        server.stop()

    fresh = tmp_path / "restored" / "apss.sqlite"
    no_key = _apss("restore", str(backup), database=fresh)
    assert no_key.returncode == 2 and "--with-key" in no_key.stderr, no_key.stderr
    wrong = tmp_path / "wrong.keys"
    wrong.write_text('{"primary": "k1", "keys": {"k1": "' + "A" * 43 + '="}}')
    refused_key = _apss("restore", str(backup), "--with-key", str(wrong), database=fresh)
    assert refused_key.returncode == 2 and "does not open" in refused_key.stderr, refused_key.stderr
    assert not fresh.exists()

    restored = _apss("restore", str(backup), "--with-key", str(key), database=fresh)
    assert restored.returncode == 0, restored.stderr
    assert _consistent(fresh, product["id"]) == in_copy
    checked = _apss("ledger", "check", database=fresh)
    assert checked.returncode == 0 and "every transaction balances" in checked.stdout, checked.stdout
    # The restored database serves: the merchant's key and sealed secrets open with the restored key.
    again = RunningServer(db_path=fresh, clock=TestClock()).start()
    try:
        with merchant.client() as client:
            client.base_url = again.base_url
            account = client.get("/v1/account")
            assert account.status_code == 200 and account.json()["sandbox_webhook_secret"].startswith("whsec_")
            assert client.get(f"/v1/products/{product['id']}").json()["stock"] == STOCK - len(in_copy)
        # and its sealed personal data opens with the restored personal-data keys: the audit rows'
        # client addresses, sealed before the copy, read back in clear
        assert Path(f"{fresh}.privacy").read_bytes() == Path(f"{key}.privacy").read_bytes()
        with again.admin() as admin:
            audit = admin.get("/v1/admin/audit", params={"merchant_id": merchant.id, "action": "order.create"})
            assert audit.status_code == 200, audit.text
            assert audit.json()["data"] and {e["ip"] for e in audit.json()["data"]} == {"127.0.0.1"}
    finally:
        again.stop()


def test_a_damaged_backup_is_refused(tmp_path):
    live = tmp_path / "apss.sqlite"
    server = RunningServer(db_path=live, clock=TestClock()).start()
    server.stop()
    backup = tmp_path / "copies" / "b.sqlite"
    assert _apss("backup", str(backup), database=live).returncode == 0
    beside = _apss("backup", str(tmp_path / "copies" / "c.sqlite"), "--with-key", str(tmp_path / "copies" / "k"), database=live)
    assert beside.returncode == 2 and "beside" in beside.stderr, beside.stderr
    data = bytearray(backup.read_bytes())
    data[4096 * 2: 4096 * 2 + 512] = os.urandom(512)  # a page of the copy overwritten
    backup.write_bytes(bytes(data))
    refused = _apss("restore", str(backup), database=tmp_path / "other.sqlite")
    assert refused.returncode == 2 and "failed its check" in refused.stderr, refused.stderr


def test_scheduled_backups_keep_the_newest(tmp_path):
    directory = tmp_path / "scheduled"
    env = {"APSS_BACKUP_DIR": str(directory), "APSS_BACKUP_EVERY": "1h", "APSS_BACKUP_KEEP": "2"}
    server = RunningServer(db_path=tmp_path / "db" / "apss.sqlite", clock=TestClock(), env=env).start()
    try:
        server.new_merchant("Scheduled")
        for _ in range(3):
            server.clock.advance(seconds=3601)
            server.wait_job("backup")
        wait_for(lambda: len(list(directory.glob("apss-*.sqlite"))) == 2)
        copies = sorted(directory.iterdir())
        assert [p.suffix for p in copies] == [".sqlite", ".sqlite"], copies  # no key, no partial file
        for copy in copies:
            raw = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
            try:
                assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                assert raw.execute("SELECT count(*) FROM merchants").fetchone()[0] == 1
            finally:
                raw.close()
    finally:
        server.stop()
