"""`apss migrate-to-postgres --from sqlite PATH --to URL`, end to end: a SQLite database filled by
the real server over HTTP (orders paid through the sandbox, a coupon, a refund, a dispute, a
settlement, a wallet debit, a webhook endpoint, a risk list entry, a KYC record, an erasure), the
command run as a subprocess, then
(a) every row of every table read raw with psycopg equals the same table read raw with sqlite3;
(b) `apss serve` on the target, with the key files copied beside its database.path, answers the
    existing orders, wallet, account and settlements exactly as the source server did, and takes a
    NEW paid order (its payment attempt, risk decision and ledger entries get ids past the copied
    ones: the identity sequences were reset), with `apss ledger check` passing on the target;
(c) the refusals (a target with rows, a missing file, an old schema, no psycopg) are one line and
    exit 2, and leave the target as it was."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ADMIN_TOKEN, free_port, plant, start_run_py, wait_for

ROOT = Path(__file__).resolve().parents[2]
IDENTITIES = ("dispute_events", "ledger_entries", "payment_attempts", "risk_decisions", "sandbox_callbacks")


@dataclass(frozen=True)
class Filled:
    source: Path
    port: int
    key: str
    orders: list[str]
    answers: dict[str, dict]


def _apss(cwd: Path, *args: str, python: tuple[str, ...] = ("-m", "apss")) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def _server(tmp: Path, name: str, port: int, **env: str) -> tuple[subprocess.Popen, str]:
    process = start_run_py(port=port, log=tmp / f"{name}.log", env={
        "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", "APSS_SCHEDULER_TICK_MS": "20", **env})
    return process, f"http://127.0.0.1:{port}"


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def _paid(client: httpx.Client, order: dict) -> dict:
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _order(client: httpx.Client, product: dict, player: str, **fields) -> dict:
    made = client.post("/v1/orders", headers={"Idempotency-Key": uuid.uuid4().hex}, json={
        "player_id": player, "currency": "USD", "items": [{"product_id": product["id"], "quantity": 1}], **fields})
    assert made.status_code == 201, made.text
    return made.json()


def _fill(base: str) -> tuple[str, list[str], dict[str, dict]]:
    """A merchant and its history, made over HTTP; (its key, its order ids, the answers to compare)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
        made = admin.post("/v1/merchants", json={"name": "Moving Studio", "mode": "test"})
        assert made.status_code == 201, made.text
    merchant = made.json()
    plant(merchant["secret_key"])
    email = f"mover.{uuid.uuid4().hex[:8]}@example.org"
    plant(email)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {merchant['secret_key']}"}, timeout=30) as c:
        def post(path: str, body: dict | None = None, ok: int = 201) -> dict:
            answer = c.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            assert answer.status_code == ok, (path, answer.text)
            return answer.json()

        gems = post("/v1/products", {"sku": "gems_100", "name": "100 Gems", "category": "currency_pack",
                                     "prices": {"USD": 500},
                                     "grants": [{"type": "currency", "currency": "GEMS", "amount": 100}]})
        sword = post("/v1/products", {"sku": "sword", "name": "Sword", "category": "item", "prices": {"USD": 900},
                                      "stock": 50})
        post("/v1/promotions", {"name": "Ten off", "code": "MOVE-10", "percent_off_bps": 1000})
        post("/v1/webhook_endpoints", {"url": f"http://127.0.0.1:{free_port()}/hook", "events": ["*"]})
        post("/v1/risk/lists/blocked_devices/items", {"value": "dev-stolen", "reason": "chargebacks"})
        post("/v1/players/alice/kyc", {"status": "unverified"}, ok=200)
        paid = [_paid(c, _order(c, gems, "alice", metadata={"email": email})),
                _paid(c, _order(c, sword, "alice", coupon="MOVE-10")),
                _paid(c, _order(c, gems, "bob")),
                _paid(c, _order(c, gems, "gone-player"))]
        pending = _order(c, sword, "carol")
        canceled = _order(c, sword, "dave")
        post(f"/v1/orders/{canceled['id']}/cancel", ok=200)
        post(f"/v1/orders/{paid[1]['id']}/refunds", {"amount": 300, "reason": "goodwill"}, ok=201)
        post(f"/v1/sandbox/payments/{paid[2]['payment']['id']}/dispute", {"reason": "fraudulent"}, ok=202)
        post("/v1/players/alice/wallet/debit", {"currency": "GEMS", "amount": 30, "reason": "potion"})
        post("/v1/players/gone-player/erase", ok=200)
        post("/v1/settlements/run", ok=200)
        orders = [o["id"] for o in (*paid, pending, canceled)]
        wait_for(lambda: all(c.get(f"/v1/orders/{o}/refunds").json()["data"][0]["status"] == "succeeded"
                             for o in orders[1:2]))
        wait_for(lambda: c.get("/v1/disputes").json()["data"])
        return merchant["secret_key"], orders, _answers(c, orders)


def _answers(client: httpx.Client, orders: list[str]) -> dict[str, dict]:
    paths = ["/v1/account", "/v1/players/alice/wallet", "/v1/players/alice/inventory", "/v1/settlements",
             "/v1/disputes", "/v1/promotions", "/v1/ledger/balances", "/v1/orders?limit=100"]
    for order in orders:
        paths += [f"/v1/orders/{order}", f"/v1/orders/{order}/events", f"/v1/orders/{order}/refunds"]
    answers = {}
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        answers[path] = answer.json()
    return answers


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix != ".log"}


def _sqlite_rows(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite%'")]
        found = {}
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            found[table] = (columns, sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr))
        return found
    finally:
        conn.close()


def _pg_rows(url: str, layout: dict[str, tuple[list[str], list]]) -> dict[str, tuple[list[str], list]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {table: (columns, sorted(conn.execute(
            f"SELECT {', '.join(columns)} FROM {table}").fetchall(), key=repr)) for table, (columns, _) in layout.items()}


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Filled:
    """The source: a server's SQLite database, filled over HTTP, the server stopped."""
    source_dir = tmp_path_factory.mktemp("sqlite")
    source = source_dir / "apss.sqlite"
    port = free_port()  # the target's server takes the same address: the answers name it (checkout_url)
    process, base = _server(source_dir, "source", port, APSS_DATABASE_PATH=str(source))
    try:
        key, orders, answers = _fill(base)
    finally:
        _stop(process)
    assert {p.name for p in source_dir.iterdir()} >= {"apss.sqlite.keys", "apss.sqlite.privacy", "apss.sqlite.erasures"}
    return Filled(source=source, port=port, key=key, orders=orders, answers=answers)


def test_a_sqlite_database_moves_to_postgresql_and_serves_there(tmp_path, pg_url, filled):
    source, port, key, orders, before = filled.source, filled.port, filled.key, filled.orders, filled.answers
    target_dir = tmp_path / "pg"
    target_dir.mkdir()
    raw = _sqlite_rows(source)
    assert sum(1 for _, rows in raw.values() if rows) >= 40, "the source fills most tables"
    assert all(raw[t][1] for t in ("settlements", "disputes", "refunds", "webhook_deliveries", *IDENTITIES))

    untouched = _files(source.parent)
    moved = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(source), "--to", pg_url)
    assert moved.returncode == 0, moved.stderr
    assert _files(source.parent) == untouched, "the source is only read"
    rows = sum(len(r) for _, r in raw.values()) - len(raw["schema_version"][1])
    assert f"{len(raw) - 1} tables, {rows} rows in " in moved.stdout, moved.stdout
    assert "ledger: " in moved.stdout and "every transaction balances" in moved.stdout
    assert "Traceback" not in moved.stderr and "warning" not in moved.stderr, moved.stderr
    assert str(source) + ".keys" in moved.stderr, "the command names the key files to keep"

    # (a) every row of every table, raw on both sides
    assert _pg_rows(pg_url, raw) == raw
    with psycopg.connect(pg_url, autocommit=True) as conn:
        top = {t: conn.execute(f"SELECT max(seq) FROM {t}").fetchone()[0] for t in IDENTITIES}

    # refused now: the target holds rows (the same command again), and the target is unchanged
    again = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(source), "--to", pg_url)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not empty" in again.stderr, again.stderr
    assert _pg_rows(pg_url, raw) == raw

    # (b) the server on PostgreSQL, with the key files copied beside its database.path
    for suffix in (".keys", ".privacy", ".erasures"):
        shutil.copy2(f"{source}{suffix}", target_dir / f"apss.sqlite{suffix}")
    process, base = _server(tmp_path, "target", port, APSS_DATABASE_URL=pg_url,
                            APSS_DATABASE_PATH=str(target_dir / "apss.sqlite"))
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            after = _answers(client, orders)
            for path in before:
                assert after[path] == before[path], path
            product = next(p for p in client.get("/v1/products").json()["data"] if p["sku"] == "gems_100")
            new = _paid(client, _order(client, product, "alice"))
            assert client.get("/v1/players/alice/wallet").json()["balances"] == {"GEMS": 170}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
            assert admin.get("/v1/admin/ledger/check").json()["ok"] is True
    finally:
        _stop(process)
    assert not (target_dir / "apss.sqlite").exists()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT status FROM orders WHERE id = %s", (new["id"],)).fetchone() == ("fulfilled",)
        for table in ("ledger_entries", "payment_attempts", "risk_decisions"):
            assert conn.execute(f"SELECT min(seq) FROM {table} WHERE seq > %s", (top[table],)).fetchone()[0] \
                == top[table] + 1, f"{table}'s identity goes on after the copied ids"
    env_check = {"APSS_DATABASE_URL": pg_url, "APSS_DATABASE_PATH": str(target_dir / "apss.sqlite")}
    checked = subprocess.run([sys.executable, "-m", "apss", "ledger", "check"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                             **env_check})
    assert checked.returncode == 0 and "every transaction balances" in checked.stdout, checked.stderr


def test_a_copy_that_fails_its_ledger_check_is_rolled_back_and_can_be_run_again(tmp_path, pg_url, filled):
    """One account's balance off by one in a copy of the source: the whole copy is rolled back
    (exit 1, every APSS table of the target empty); put right, the same command on the same
    target succeeds (the restart rule)."""
    source = tmp_path / "apss.sqlite"
    with sqlite3.connect(filled.source) as original, sqlite3.connect(source) as copy:
        original.backup(copy)
    with sqlite3.connect(source) as conn:
        account, currency = conn.execute("SELECT account, currency FROM ledger_balances ORDER BY 1, 2").fetchone()
        conn.execute("UPDATE ledger_balances SET debits = debits + 1 WHERE account = ? AND currency = ?",
                     (account, currency))
    failed = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(source), "--to", pg_url)
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "the ledger check failed on the copy" in failed.stderr and "nothing was committed" in failed.stderr
    assert "moved " not in failed.stdout
    layout = _sqlite_rows(source)
    del layout["schema_version"]
    assert all(rows == [] for _, rows in _pg_rows(pg_url, layout).values()), "no row of the copy was committed"

    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE ledger_balances SET debits = debits - 1 WHERE account = ? AND currency = ?",
                     (account, currency))
    again = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(source), "--to", pg_url)
    assert again.returncode == 0 and "moved " in again.stdout, again.stderr
    layout = _sqlite_rows(source)
    del layout["schema_version"]
    assert _pg_rows(pg_url, layout) == layout


def test_refusals_are_one_line_and_exit_2(tmp_path, pg_url):
    missing = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(tmp_path / "none.sqlite"), "--to", pg_url)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "no SQLite database at" in missing.stderr

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT")
        conn.execute("INSERT INTO schema_version VALUES (3)")
    behind = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(old), "--to", pg_url)
    assert behind.returncode == 2 and behind.stderr.count("\n") == 1 and "apss migrate" in behind.stderr, behind.stderr

    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello " * 1000)
    text = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(not_sqlite), "--to", pg_url)
    assert text.returncode == 2 and text.stderr.count("\n") == 1 and "not a SQLite database" in text.stderr

    no_driver = _apss(tmp_path, "migrate-to-postgres", "--from", "sqlite", str(old), "--to", pg_url, python=(
        "-c", "import sys; sys.modules['psycopg'] = None; from apss.cli import main; main(sys.argv[1:])"))
    assert no_driver.returncode == 2 and no_driver.stderr.count("\n") == 1, no_driver.stderr
    assert "the `postgres` extra" in no_driver.stderr and "Traceback" not in no_driver.stderr

    with psycopg.connect(pg_url, autocommit=True) as conn:  # nothing was created on the target
        assert conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,)
