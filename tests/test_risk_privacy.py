"""IPs and device ids at rest, through the real server: the risk facts seal them (a byte scan of
the database file, its -wal and -shm finds neither, raw rows hold `<key id>:` values) while the
counters, the callback's re-assessment, the lists, dispute evidence, the export and key rotation
still read them; rows written before the seal (a database of before migration 0028, made by
writing clear values back with the server stopped) are sealed by the rotation job; the migration
strips the copies earlier decisions held; the retention job on a moved clock erases them and the
player's marks. The new_device and new_ip_country attributes at both stages, in rules, and
erased with the player."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from apss.clock import TestClock
from apss.store.migrate import MIGRATIONS_DIR, apply_migrations
from tests.conftest import RunningServer, assert_error, assert_ledger_ok, database_at, plant, wait_for
from tests.conftest import raw_read as raw
from tests.test_privacy import byte_scan

US_IP, DE_IP, JP_IP = "3.14.15.92", "53.58.97.93", "126.23.84.62"  # ip_country US, DE, JP (shipped table)


@pytest.fixture
def own_server(tmp_path):
    running = RunningServer(db_path=tmp_path / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


def _rules(client, *rules: tuple[str, str]) -> None:
    response = client.put("/v1/risk/rules", json={"rules": [{"name": n, "rule": r} for n, r in rules]})
    assert response.status_code == 200, response.text


def _status(client, order_id: str, wanted: str) -> dict:
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order_id}").json())["status"] == wanted and o)


def _risk(client, order_id: str) -> dict:
    response = client.get(f"/v1/orders/{order_id}/risk")
    assert response.status_code == 200, response.text
    return response.json()


def _unique_ip() -> str:
    n = uuid.uuid4().int
    return f"198.51.{n % 200 + 10}.{n // 200 % 200 + 10}"


def _facts(server, order_id: str) -> sqlite3.Row:
    return server.raw("SELECT * FROM risk_order_facts WHERE order_id = ?", (order_id,))[0]


def test_ips_and_devices_are_sealed_at_rest_and_what_reads_them_still_works(own_server):
    server = own_server
    merchant = server.new_merchant()
    ip, device = _unique_ip(), f"dev-{uuid.uuid4().hex[:12]}"
    player = f"sealed-{uuid.uuid4().hex[:8]}"
    plant(ip, device)
    with merchant.client() as client:
        product = merchant.product(client, stock=20)
        _rules(client, ("shared_ip", "review if players_per_ip_1h >= 1 and player_id == 'second'"),
               ("declined_device", "block if declines_per_device_1h >= 1 and player_id == 'third'"))
        first = merchant.order(client, product["id"], player_id=player, ip=ip, device_id=device).json()
        assert client.post(f"/v1/sandbox/payments/{first['payment']['id']}/succeed").status_code == 202
        _status(client, first["id"], "fulfilled")
        risk = _risk(client, first["id"])  # the callback's decision read the sealed facts
        assert risk["stage"] == "callback" and risk["attributes"]["ip"] == ip and risk["attributes"]["device_id"] == device
        assert [h["attributes"]["ip"] for h in risk["history"]] == [ip]

        # The counters: players per IP, then a decline counted per device (read from the sealed facts).
        second = merchant.order(client, product["id"], player_id="second", ip=ip, device_id=device).json()
        assert _risk(client, second["id"])["attributes"]["players_per_ip_1h"] == 1
        assert [r["name"] for r in _risk(client, second["id"])["rules_fired"]] == ["shared_ip"]
        assert client.post(f"/v1/sandbox/payments/{second['payment']['id']}/fail").status_code == 202
        _status(client, second["id"], "failed")
        third = merchant.order(client, product["id"], player_id="third", ip=ip, device_id=device).json()
        assert third["status"] == "failed" and _risk(client, third["id"])["attributes"]["declines_per_device_1h"] == 1

        # A CIDR entered after the order was created blocks it at the callback: the IP was opened.
        held = merchant.order(client, product["id"], player_id=player, ip=ip, device_id=device).json()
        cidr = ".".join(ip.split(".")[:3]) + ".0/24"
        assert client.post("/v1/risk/lists/blocked_ips/items", json={"value": cidr}).status_code == 201
        assert client.post(f"/v1/sandbox/payments/{held['payment']['id']}/succeed").status_code == 202
        _status(client, held["id"], "in_review")
        assert [r["name"] for r in _risk(client, held["id"])["rules_fired"]] == ["blocked_ips"]

        # Dispute evidence: the IPs and devices seen.
        assert client.post(f"/v1/sandbox/payments/{first['payment']['id']}/dispute", json={}).status_code == 202
        dispute = wait_for(lambda: next((d for d in client.get("/v1/disputes").json()["data"]
                                         if d["order_id"] == first["id"]), None))
        bundle = client.get(f"/v1/disputes/{dispute['id']}/evidence").json()
        assert bundle["network"] == {"ips": [ip], "devices": [device]}
        assert bundle["risk_decision"]["attributes"]["ip"] == ip

        # The export is the player's own data: opened.
        facts = client.get(f"/v1/players/{player}/export").json()["risk_order_facts"]
        assert sorted((f["order_id"], f["ip"], f["device_id"]) for f in facts) == sorted(
            [(first["id"], ip, device), (held["id"], ip, device)])
        assert all("ip_sealed" not in f for f in facts)
    assert_ledger_ok(server)

    rows = server.raw("SELECT * FROM risk_order_facts WHERE merchant_id = ?", (merchant.id,))
    assert len(rows) == 4
    assert all(r["ip"] is None and r["device_id"] is None for r in rows), "the clear columns stay empty"
    assert all(r["ip_sealed"].startswith("p1:") and r["device_id_sealed"].startswith("p1:") for r in rows)
    decisions = server.raw("SELECT attributes FROM risk_decisions WHERE merchant_id = ?", (merchant.id,))
    assert decisions and not any('"ip"' in d["attributes"] or '"device_id"' in d["attributes"] for d in decisions)
    assert byte_scan(server.db_path, [player]), "the scan finds what is stored in the clear (it can fail)"
    assert byte_scan(server.db_path, [ip, device]) == []

    # Key rotation re-seals them; they still open.
    with server.admin() as admin:
        assert admin.post("/v1/admin/privacy/keys/rotate").status_code == 200
    kids = lambda: {r["ip_sealed"][:3] for r in server.raw("SELECT ip_sealed FROM risk_order_facts")}  # noqa: E731
    wait_for(lambda: kids() == {"p2:"})
    with merchant.client() as client:
        assert _risk(client, first["id"])["attributes"]["device_id"] == device
    assert byte_scan(server.db_path, [ip, device]) == []


def _write_back_in_clear(db_path, order_id: str, *, ip: str, device: str) -> None:
    """The facts row as a database of before migration 0028 holds it: the IP and device in clear."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE risk_order_facts SET ip = ?, device_id = ?, ip_sealed = NULL, device_id_sealed = NULL"
                     " WHERE order_id = ?", (ip, device, order_id))
    assert byte_scan(db_path, [ip, device]), "the clear values are in the file"


def test_rows_written_before_the_seal_are_sealed_by_the_rotation_job(tmp_path):
    db = tmp_path / "apss.sqlite"
    server = RunningServer(db_path=db, clock=TestClock()).start()
    ip, device = _unique_ip(), f"dev-old-{uuid.uuid4().hex[:10]}"
    plant(ip, device)
    try:
        merchant = server.new_merchant()
        with merchant.client() as client:
            product = merchant.product(client)
            order = merchant.order(client, product["id"], player_id="old-player", ip=ip, device_id=device).json()
    finally:
        server.stop()
    _write_back_in_clear(db, order["id"], ip=ip, device=device)
    restarted = RunningServer(db_path=db, clock=TestClock(server.clock.now_ms())).start()
    try:
        wait_for(lambda: _facts(restarted, order["id"])["ip"] is None and _facts(restarted, order["id"])["device_id"] is None)
        facts = _facts(restarted, order["id"])
        assert facts["ip_sealed"].startswith("p1:") and facts["device_id_sealed"].startswith("p1:")
        wait_for(lambda: byte_scan(db, [ip, device]) == [])  # the WAL checkpointed after the pass
        with restarted.admin() as admin:
            assert admin.get("/v1/merchants").status_code == 200
        with merchant.client() as client:  # the merchant's key works against the restarted server
            client.base_url = restarted.base_url
            attributes = _risk(client, order["id"])["attributes"]
            assert (attributes["ip"], attributes["device_id"]) == (ip, device)
    finally:
        restarted.stop()


def test_the_migration_strips_the_ips_and_devices_earlier_decisions_copied(tmp_path):
    db = database_at(tmp_path, 27)
    ip, device = _unique_ip(), f"dev-decision-{uuid.uuid4().hex[:8]}"
    with sqlite3.connect(db) as conn:  # foreign keys are off on this plain connection: no order needed
        for seq, attributes in enumerate([f'{{"ip": "{ip}", "device_id": "{device}", "amount": 500}}',
                                          '{"amount": 700, "ip_country": "DE"}'], 1):
            conn.execute("INSERT INTO risk_decisions (seq, order_id, merchant_id, stage, score, action, rules_fired,"
                         " attributes, created_at_ms) VALUES (?, 'ord_x', 'mch_x', 'order', 5, 'allow', '[]', ?, 1)",
                         (seq, attributes))
    assert byte_scan(db, [ip, device])
    latest = max(int(path.name[:4]) for path in MIGRATIONS_DIR.glob("00*.sql"))
    assert apply_migrations(str(db)) == (27, latest)
    kept = [r["attributes"] for r in raw(db, "SELECT attributes FROM risk_decisions ORDER BY seq")]
    assert kept == ['{"amount":500}', '{"amount": 700, "ip_country": "DE"}']
    assert byte_scan(db, [ip, device]) == [], "no freed byte nor WAL frame keeps them"


def test_retention_erases_ips_devices_and_marks_everywhere_after_the_period(tmp_path):
    db = tmp_path / "apss.sqlite"
    server = RunningServer(db_path=db, clock=TestClock()).start()
    ip, device, old_device = US_IP, f"dev-ret-{uuid.uuid4().hex[:10]}", f"dev-legacy-{uuid.uuid4().hex[:8]}"
    plant(device, old_device)
    try:
        merchant = server.new_merchant()
        with merchant.client() as client:
            product = merchant.product(client, stock=10)
            kept = merchant.order(client, product["id"], player_id="ret-player", ip=ip, device_id=device).json()
            assert client.post(f"/v1/sandbox/payments/{kept['payment']['id']}/succeed").status_code == 202
            _status(client, kept["id"], "fulfilled")
            legacy = merchant.order(client, product["id"], player_id="ret-legacy", ip=DE_IP, device_id=old_device).json()
    finally:
        server.stop()
    marks = raw(db, "SELECT kind FROM risk_player_marks WHERE merchant_id = ?", (merchant.id,))
    assert sorted(m["kind"] for m in marks) == ["device", "device", "ip", "ip", "ip_country", "ip_country"]
    _write_back_in_clear(db, legacy["id"], ip=DE_IP, device=old_device)
    restarted = RunningServer(db_path=db, clock=TestClock(server.clock.now_ms())).start()
    try:
        restarted.clock.advance(seconds=91 * 86_400)
        restarted.wait_job("privacy_retention")
        for order in (kept, legacy):
            facts = _facts(restarted, order["id"])
            assert [facts[c] for c in ("ip", "device_id", "ip_sealed", "device_id_sealed")] == [None] * 4
        assert raw(db, "SELECT * FROM risk_player_marks WHERE merchant_id = ?", (merchant.id,)) == []
        decisions = raw(db, "SELECT attributes FROM risk_decisions WHERE order_id IN (?, ?)", (kept["id"], legacy["id"]))
        assert len(decisions) == 3 and all('"ip"' not in d["attributes"] for d in decisions)
        with merchant.client() as client:
            client.base_url = restarted.base_url
            for order in (kept, legacy):
                attributes = _risk(client, order["id"])["attributes"]
                assert "ip" not in attributes and "device_id" not in attributes and attributes["amount"] == order["amount"]
        wait_for(lambda: byte_scan(db, [device, old_device, DE_IP]) == [])
        with restarted.admin() as admin:
            assert admin.get("/v1/admin/ledger/check").json()["ok"] is True
    finally:
        restarted.stop()


@pytest.mark.both_backends
def test_new_device_and_new_ip_country_at_creation_and_callback(merchant, server):
    player = f"travel-{uuid.uuid4().hex[:8]}"
    home, other = f"dev-home-{uuid.uuid4().hex[:6]}", f"dev-other-{uuid.uuid4().hex[:6]}"
    plant(home, other)
    with merchant.client() as client:
        product = merchant.product(client, stock=20)
        bad = client.put("/v1/risk/rules", json={"rules": [{"name": "x", "rule": "review if new_device == 1"}]})
        message = assert_error(bad, 400, "invalid_request_error", "rule_invalid", "rules[0].rule")["message"]
        assert "bool" in message and "position 22" in message, message
        _rules(client, ("takeover", "review if new_device and new_ip_country"),
               ("known", "require_3ds if not new_device and player_id == 'nobody'"))

        def seen(device: str | None, ip: str | None) -> tuple[dict, dict]:
            fields = {k: v for k, v in (("device_id", device), ("ip", ip)) if v}
            order = merchant.order(client, product["id"], player_id=player, **fields).json()
            return order, _risk(client, order["id"])

        def flags(risk: dict) -> tuple:
            return risk["attributes"].get("new_device"), risk["attributes"].get("new_ip_country")

        first, risk = seen(home, US_IP)
        assert flags(risk) == (True, False) and risk["action"] == "allow", "no country seen before: not new"
        assert risk["attributes"]["ip_country"] == "US"
        _, risk = seen(home, DE_IP)
        assert flags(risk) == (False, True) and risk["action"] == "allow"
        _, risk = seen(home, US_IP)
        assert flags(risk) == (False, False)
        _, risk = seen(None, "192.0.2.7")  # no device, an address no registry gives a country (TEST-NET-1)
        assert flags(risk) == (None, None)
        taken, risk = seen(other, JP_IP)
        assert flags(risk) == (True, True) and risk["action"] == "review"
        assert [r["name"] for r in risk["rules_fired"]] == ["takeover"]
        _, risk = seen(other, JP_IP)
        assert flags(risk) == (False, False), "seen now, the blocked-or-not order counted"

        # At the callback: as of the order's creation (its own device and country were marked then).
        assert client.post(f"/v1/sandbox/payments/{taken['payment']['id']}/succeed").status_code == 202
        _status(client, taken["id"], "in_review")
        risk = _risk(client, taken["id"])
        assert risk["stage"] == "callback" and flags(risk) == (True, True) and risk["action"] == "review"
        assert flags({"attributes": risk["history"][0]["attributes"]}) == (True, True)

        marks = server.raw("SELECT kind, mark FROM risk_player_marks WHERE merchant_id = ? AND player_id = ?",
                           (merchant.id, player))
        assert sorted(k for k, _ in marks if k != "ip") == ["device", "device", "ip_country", "ip_country", "ip_country"]
        assert len([k for k, _ in marks if k == "ip"]) == 4  # US_IP, DE_IP, 192.0.2.7, JP_IP
        assert not {home, other, "US", "DE", "JP"} & {m for _, m in marks}, "keyed hashes only"
        if not server.config.database.postgresql:  # the file's bytes (on PostgreSQL the rows above say it)
            assert byte_scan(server.db_path, [home, other]) == []

        assert client.post(f"/v1/players/{player}/erase").status_code == 200
        assert server.raw("SELECT count(*) AS n FROM risk_player_marks WHERE merchant_id = ?",
                          (merchant.id,))[0]["n"] == 0
        again = merchant.order(client, product["id"], player_id=player, device_id=home, ip=US_IP).json()
        assert flags(_risk(client, again["id"])) == (True, False), "an erased player's marks are gone"
    assert first["status"] == "pending"


def test_device_age_counts_from_the_players_first_order_on_the_device(own_server):
    """device_age_s: seconds since the player's first order on the order's device (0 on a new
    one, per player, missing without a device), in rules, as of the order's creation at the
    callback, from the marks' first_seen_ms (a raw read)."""
    merchant = own_server.new_merchant()
    player, device = f"aging-{uuid.uuid4().hex[:8]}", f"dev-age-{uuid.uuid4().hex[:6]}"
    plant(device)
    with merchant.client() as client:
        product = merchant.product(client, stock=20)
        _rules(client, ("young_device_on_old_account", "review if device_age_s >= 600 and device_age_s < 3600"))

        def seen(**fields) -> tuple[dict, dict]:
            order = merchant.order(client, product["id"], player_id=fields.pop("player", player), **fields).json()
            return order, _risk(client, order["id"])

        _, risk = seen(device_id=device, ip=US_IP)
        assert (risk["attributes"]["device_age_s"], risk["attributes"]["new_device"]) == (0, True)
        assert risk["action"] == "allow"
        first_ms = own_server.clock.now_ms()
        own_server.clock.advance(seconds=1234)
        held, risk = seen(device_id=device, ip=US_IP)
        assert (risk["attributes"]["device_age_s"], risk["attributes"]["new_device"]) == (1234, False)
        assert risk["action"] == "review" and [r["name"] for r in risk["rules_fired"]] == ["young_device_on_old_account"]
        _, other = seen(device_id=device, ip=US_IP, player=f"{player}-sibling")  # another player: new to them
        assert other["attributes"]["device_age_s"] == 0 and other["action"] == "allow"
        marks = raw(own_server.db_path, "SELECT first_seen_ms, last_seen_ms FROM risk_player_marks WHERE merchant_id = ?"
                    " AND player_id = ? AND kind = 'device'", (merchant.id, player))
        assert [(m["first_seen_ms"], m["last_seen_ms"]) for m in marks] == [(first_ms, first_ms)]
        assert _facts(own_server, held["id"])["device_age_s"] == 1234

        own_server.clock.advance(seconds=4000)  # the callback later: still the age at the order's creation
        assert client.post(f"/v1/sandbox/payments/{held['payment']['id']}/succeed").status_code == 202
        _status(client, held["id"], "in_review")
        risk = _risk(client, held["id"])
        assert risk["stage"] == "callback" and risk["attributes"]["device_age_s"] == 1234 and risk["action"] == "review"
        _, risk = seen(device_id=device)
        assert risk["attributes"]["device_age_s"] == 5234 and risk["action"] == "allow"

        _, bare = seen()  # neither IP nor device: no device age
        assert "device_age_s" not in bare["attributes"] and "new_device" not in bare["attributes"]
    assert_ledger_ok(own_server)


def test_ip_age_and_the_devices_and_ips_seen_count_per_player(own_server):
    """ip_age_s: seconds since the player's first order from the order's IP (0 on a new one, per
    player, missing without an IP); player_devices_seen / player_ips_seen: the distinct devices and
    IPs the player was seen with before this order. In rules, as of the order's creation at the
    callback, from marks holding keyed hashes, never the address (raw reads)."""
    merchant = own_server.new_merchant()
    player, home, phone, travel = f"ip-age-{uuid.uuid4().hex[:8]}", _unique_ip(), f"dev-ipa-{uuid.uuid4().hex[:6]}", _unique_ip()
    plant(home)
    with merchant.client() as client:
        product = merchant.product(client, stock=20)
        _rules(client, ("second_device_young_ip", "review if ip_age_s >= 600 and ip_age_s < 3600 and player_devices_seen >= 1"))

        def seen(**fields) -> tuple[dict, dict]:
            order = merchant.order(client, product["id"], player_id=fields.pop("player", player), **fields).json()
            return order, _risk(client, order["id"])

        def values(risk: dict) -> tuple:
            return tuple(risk["attributes"].get(k) for k in ("ip_age_s", "player_devices_seen", "player_ips_seen"))

        _, risk = seen(ip=home, device_id=phone)
        assert values(risk) == (0, 0, 0) and risk["action"] == "allow"
        first_ms = own_server.clock.now_ms()
        own_server.clock.advance(seconds=1234)
        held, risk = seen(ip=home, device_id=f"{phone}-new")
        assert values(risk) == (1234, 1, 1)
        assert risk["action"] == "review" and [r["name"] for r in risk["rules_fired"]] == ["second_device_young_ip"]
        _, other = seen(ip=home, device_id=phone, player=f"{player}-sibling")  # another player: all new to them
        assert values(other) == (0, 0, 0) and other["action"] == "allow"
        _, abroad = seen(ip=travel)  # no device: no device age, the IP new
        assert values(abroad) == (0, 2, 1) and "device_age_s" not in abroad["attributes"]
        marks = raw(own_server.db_path, "SELECT mark, first_seen_ms FROM risk_player_marks WHERE merchant_id = ?"
                    " AND player_id = ? AND kind = 'ip' ORDER BY first_seen_ms", (merchant.id, player))
        assert [m["first_seen_ms"] for m in marks] == [first_ms, first_ms + 1_234_000]
        assert not any(home in m["mark"] or travel in m["mark"] for m in marks)  # keyed hashes
        facts = _facts(own_server, held["id"])
        assert (facts["ip_age_s"], facts["player_devices_seen"], facts["player_ips_seen"]) == (1234, 1, 1)

        own_server.clock.advance(seconds=4000)  # the callback later: the values at the order's creation
        assert client.post(f"/v1/sandbox/payments/{held['payment']['id']}/succeed").status_code == 202
        _status(client, held["id"], "in_review")
        risk = _risk(client, held["id"])
        assert risk["stage"] == "callback" and values(risk) == (1234, 1, 1) and risk["action"] == "review"
        _, risk = seen(ip=home)
        assert values(risk) == (5234, 2, 2) and risk["action"] == "allow"
        _, bare = seen()  # neither IP nor device: no IP age, the counts still (no score)
        assert values(bare) == (None, 2, 2) and "risk_score" not in bare["attributes"]
    assert_ledger_ok(own_server)


def test_the_ip_marks_migration_keeps_the_marks_and_takes_the_new_kind(tmp_path):
    db = database_at(tmp_path, 35)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO risk_player_marks (merchant_id, player_id, kind, mark, last_seen_ms, first_seen_ms)"
                         " VALUES (?, ?, ?, ?, ?, ?)", [("mch_x", "p1", "device", "m1", 90_000, 1000),
                                                        ("mch_x", "p1", "ip_country", "c1", 80_000, 2000)])
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO risk_player_marks VALUES ('mch_x', 'p1', 'ip', 'i1', 1, 1)")
    assert apply_migrations(str(db))[0] == 35
    rows = raw(db, "SELECT player_id, kind, mark, last_seen_ms, first_seen_ms FROM risk_player_marks ORDER BY kind")
    assert [tuple(r) for r in rows] == [("p1", "device", "m1", 90_000, 1000), ("p1", "ip_country", "c1", 80_000, 2000)]
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO risk_player_marks VALUES ('mch_x', 'p1', 'ip', 'i1', 1, 1)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO risk_player_marks VALUES ('mch_x', 'p1', 'address', 'a1', 1, 1)")
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'risk_player_marks_seen'").fetchone()[0] == 1


def test_marks_from_before_device_age_count_from_the_players_first_order(tmp_path):
    db = database_at(tmp_path, 29)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO risk_players (merchant_id, player_id, first_seen_ms) VALUES ('mch_x', 'p1', 1000)")
        conn.executemany("INSERT INTO risk_player_marks (merchant_id, player_id, kind, mark, last_seen_ms) VALUES (?, ?, ?, ?, ?)",
                         [("mch_x", "p1", "device", "m1", 90_000), ("mch_x", "p2", "device", "m2", 70_000)])
    assert apply_migrations(str(db))[0] == 29
    rows = raw(db, "SELECT player_id, first_seen_ms FROM risk_player_marks ORDER BY player_id")
    assert [(r["player_id"], r["first_seen_ms"]) for r in rows] == [("p1", 1000), ("p2", 70_000)]
