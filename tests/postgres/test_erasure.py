"""A player's erasure on PostgreSQL, through the real server: before it, a raw scan of every column
of every table of the database (read with psycopg, not through APSS) finds the player's id, email,
IP and device; after it, none of them in any encoding, the export and the lookups by the original id
find the pseudonymous records, a stored answer replays, and the ledger check passes."""

from __future__ import annotations

import uuid

import msgspec
import psycopg

from apss.clock import TestClock
from tests.conftest import RunningServer, free_port, wait_for
from tests.test_privacy import needles
from tests.test_webhooks import Receiver, _serve


def pg_scan(url: str, secrets: list[str]) -> list[str]:
    """Every (table.column, secret, encoding) whose value holds a secret, over the whole database."""
    found = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            names = [c.name for c in cursor.description]
            for row in cursor:
                for name, value in zip(names, row):
                    data = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else b""
                    found += [f"{table}.{name}: {s!r} as {how}" for s in secrets
                              for how, needle in needles(s).items() if needle in data]
    return found


def test_erasure_on_postgresql_leaves_no_trace_in_any_column(tmp_path, database_env):
    env = database_env("postgresql")
    url = env["APSS_DATABASE_URL"]
    server = RunningServer(db_path=tmp_path / "apss.sqlite", clock=TestClock(), env=env).start()
    receiver = Receiver()
    port = free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    served, thread = _serve(receiver, port, lifespan="off")
    player = f"plyr-{uuid.uuid4().hex[:12]}"
    email, ip, device = f"erase.me.{uuid.uuid4().hex[:8]}@example.org", "203.0.113.78", f"dev-{uuid.uuid4().hex[:10]}"
    secrets_ = [player, email, ip, device]
    try:
        merchant = server.new_merchant()
        with merchant.client() as client:
            hook = receiver.route(then=200)
            assert client.post("/v1/webhook_endpoints", json={"url": hook, "events": ["*"]}).status_code == 201
            gems = merchant.product(client, category="currency_pack",
                                    grants=[{"type": "currency", "currency": "GEMS", "amount": 100}])
            created = client.post("/v1/orders", headers={"Idempotency-Key": f"order-{player}"}, json={
                "player_id": player, "currency": "USD", "items": [{"product_id": gems["id"], "quantity": 1}],
                "metadata": {"email": email, "ip": ip, "device_id": device},
                "return_url": f"https://game.example/back?player={player}"})
            assert created.status_code == 201, created.text
            order = created.json()
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
            wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
            debit = client.post(f"/v1/players/{player}/wallet/debit", headers={"Idempotency-Key": f"debit-{player}"},
                                json={"currency": "GEMS", "amount": 30, "reason": "potion"})
            assert debit.status_code == 201, debit.text
            wait_for(lambda: any(player.encode() in r.body for r in receiver.at(hook)))
            before = pg_scan(url, secrets_)
            assert {line.split(":")[0] for line in before} >= {"orders.player_id", "webhook_events.payload",
                                                               "idempotency_keys.key"}, before

            erased = client.post(f"/v1/players/{player}/erase")
            assert erased.status_code == 200, erased.text
            pseudonym = erased.json()["pseudonym"]
            assert pg_scan(url, secrets_) == []

            after = client.get(f"/v1/players/{player}/export").json()
            assert after["player_id"] == pseudonym and after["erased"] is True
            assert [o["id"] for o in after["orders"]] == [order["id"]]
            assert not any(s in msgspec.json.encode(after).decode() for s in secrets_)
            assert client.get(f"/v1/players/{player}/wallet").json()["balances"] == {"GEMS": 70}
            replay = client.post(f"/v1/players/{player}/wallet/debit", headers={"Idempotency-Key": f"debit-{player}"},
                                 json={"currency": "GEMS", "amount": 30, "reason": "potion"})
            assert replay.status_code == 201 and replay.json()["player_id"] == pseudonym
        with server.admin() as admin:
            assert admin.get("/v1/admin/ledger/check").json()["ok"] is True
    finally:
        served.should_exit = True
        thread.join(timeout=10)
        server.stop()
