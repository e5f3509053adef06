"""Work done once across instances (services/ops/job_leases.py, the claims of store/webhooks.py
and the janitor's): a scheduler job runs on the one instance holding its lease and moves to another when
that one dies; two instances' webhook passes deliver each attempt once; two janitors' claims are
disjoint. Every outcome is read back raw (sqlite3 / psycopg) or counted at a receiving HTTP server.
Leases are short here (well under a second, or 1.5 s for processes) so a takeover is quick; no
assertion is about time."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sqlite3
import threading

import httpx
import psycopg
import pytest
import uvicorn

from apss.clock import SystemClock, TestClock
from apss.crypto import Keyring
from apss.jobs.scheduler import Scheduler
from apss.services.idempotency import Idempotency
from apss.services.notify.merchant_webhooks import WebhookEndpointCreate, Webhooks
from apss.services.ops.job_leases import JobLeases
from apss.services.outbound import TargetClients
from apss.store import channels, orders, refunds
from apss.store import webhooks as webhook_store
from apss.store.db import Database
from apss.store.migrate import apply_migrations
from apss.store.pg_db import PgDatabase
from tests.asgi import read_body
from tests.conftest import ADMIN_TOKEN, free_port, start_run_py, wait_for

_NOW_MS = 1_700_000_000_000


def _raw(target: str, sql: str, params: tuple = ()) -> list[tuple]:
    """A read straight from the database, past APSS."""
    if target.startswith("postgresql"):
        with psycopg.connect(target) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()
    with sqlite3.connect(target) as conn:
        return conn.execute(sql, params).fetchall()


async def _until(predicate, *, timeout_s: float = 20.0) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout=timeout_s)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    """A migrated database; each instance of a test opens it with a Database of its own."""
    target = request.getfixturevalue("pg_url") if request.param == "postgresql" else str(tmp_path / "leases.sqlite")
    apply_migrations(target)
    return target


def _database(target: str) -> Database | PgDatabase:
    return PgDatabase(target, write_connections_max=4) if target.startswith("postgresql") else Database(target)


# -- scheduler leases ----------------------------------------------------------------------------------
class _Instance:
    """One instance's scheduler: a leased job, and a leased job whose pokes run locally."""

    def __init__(self, db, owner: str) -> None:
        self.db = db
        self.leases = JobLeases(db=db, owner=owner, lease_s=0.6)
        self.scheduler = Scheduler(clock=SystemClock(), tick_ms=20, leases=self.leases)
        self.ran: collections.Counter[str] = collections.Counter()
        for name, local in (("tick", False), ("send", True)):
            self.scheduler.add(name, interval_s=3600 if local else 0.05, fn=self._job(name), local_pokes=local)

    def _job(self, name: str):
        async def run() -> None:
            self.ran[name] += 1
        return run


@pytest.mark.anyio
async def test_a_job_runs_on_one_instance_and_moves_when_its_owner_dies(target):
    a, b = _Instance(_database(target), "a"), _Instance(_database(target), "b")
    for instance in (a, b):
        await instance.db.start()
    try:
        a.scheduler.start()
        await _until(lambda: a.ran["tick"] >= 3)
        b.scheduler.start()
        await _until(lambda: b.leases.renewals >= 4)  # several renewals, each finding a's lease alive
        assert b.ran["tick"] == 0, "the job runs on its lease's owner only"
        assert _raw(target, "SELECT job, owner FROM job_leases ORDER BY job") == [("send", "a"), ("tick", "a")]
        assert b.scheduler.stats()[0].lease_held is False and b.scheduler.stats()[0].lease_owner == "a"

        b.scheduler.poke("tick")  # not b's: dropped (a runs it at its interval)
        b.scheduler.poke("send")  # safe on two instances at once: runs where it was poked
        await _until(lambda: b.ran["send"] == 1)
        assert b.ran["tick"] == 0

        await a.scheduler.stop(release=False)  # a dies: no more renewals, its leases left as they were
        (last_expiry,) = _raw(target, "SELECT max(expires_at_ms) FROM job_leases WHERE owner = 'a'")[0]
        runs_of_a = a.ran["tick"]
        await _until(lambda: b.ran["tick"] >= 3)  # resumed on b once a's lease expired
        assert a.ran["tick"] == runs_of_a
        taken = _raw(target, "SELECT job, owner, taken_at_ms FROM job_leases ORDER BY job")
        assert [(job, owner) for job, owner, _ in taken] == [("send", "b"), ("tick", "b")]
        assert all(taken_at_ms >= last_expiry for _, _, taken_at_ms in taken), "taken only after a's lease ended"

        await b.scheduler.stop()  # a clean stop gives the leases up
        assert _raw(target, "SELECT count(*) FROM job_leases") == [(0,)]
    finally:
        for instance in (a, b):
            await instance.scheduler.stop(release=False)
            await instance.db.close()


def _metric(port: int, name: str, job: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                     timeout=10).text
    found = re.search(rf'^{name}\{{job="{job}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_two_processes_run_each_job_once_and_a_killed_owners_jobs_resume_on_the_other(pg_url, tmp_path):
    def env(instance: str) -> dict[str, str]:
        return {"APSS_DATABASE_URL": pg_url, "APSS_DATABASE_PATH": str(tmp_path / "apss.sqlite"),
                "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", "APSS_SCHEDULER_LEASE_S": "1.5",
                "APSS_SCHEDULER_INSTANCE_ID": instance}

    def owners() -> set[str]:
        return {owner for (owner,) in _raw(pg_url, "SELECT owner FROM job_leases")}

    port_a, port_b = free_port(), free_port()
    a = start_run_py(port=port_a, log=tmp_path / "a.log", env=env("a"))
    b = None
    try:
        wait_for(lambda: owners() == {"a"} and len(_raw(pg_url, "SELECT job FROM job_leases")) >= 10, timeout_s=30)
        b = start_run_py(port=port_b, log=tmp_path / "b.log", env=env("b"))
        wait_for(lambda: _metric(port_b, "apss_job_lease_held", "expiry") == 0, timeout_s=30)
        wait_for(lambda: _metric(port_a, "apss_job_runs_total", "expiry") >= 3, timeout_s=30)
        assert _metric(port_b, "apss_job_runs_total", "expiry") == 0, "b leaves a's jobs to a"
        assert owners() == {"a"}

        a.kill()  # no clean stop: the leases stay a's until they expire
        a.wait(timeout=30)
        (last_expiry,) = _raw(pg_url, "SELECT max(expires_at_ms) FROM job_leases")[0]
        wait_for(lambda: owners() == {"b"}, timeout_s=30)
        wait_for(lambda: _metric(port_b, "apss_job_runs_total", "expiry") >= 3, timeout_s=30)
        assert _metric(port_b, "apss_job_lease_held", "expiry") == 1
        (first_taken,) = _raw(pg_url, "SELECT min(taken_at_ms) FROM job_leases")[0]
        assert first_taken >= last_expiry, "b took no lease before a's ended"
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


# -- webhook deliveries claimed ------------------------------------------------------------------------
class _Receiver:
    """Counts every request by its APSS-Delivery-Id, answering 200 after a short pause (so two
    passes overlap)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await read_body(scope, receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.deliveries[headers.get("apss-delivery-id", "?")] += 1
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def receiver():
    app, port = _Receiver(), free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=15)
    app.url = f"http://127.0.0.1:{port}/hooks"
    yield app
    server.should_exit = True
    thread.join(timeout=10)


def _webhooks(db, clock, keyring, claimer: str) -> Webhooks:
    return Webhooks(db=db, clock=clock, keyring=keyring, idempotency=Idempotency(render_error=None, clock_now_ms=clock.now_ms),
                    http=TargetClients(), batch_max=8, send_concurrency_max=4, attempt_timeout_s=5, claimer=claimer)


@pytest.mark.anyio
async def test_two_instances_deliver_each_webhook_attempt_once(pg_url, receiver):
    apply_migrations(pg_url)
    clock, keyring = TestClock(_NOW_MS), Keyring({"k1": os.urandom(32)}, primary="k1")
    first, second = PgDatabase(pg_url, write_connections_max=4), PgDatabase(pg_url, write_connections_max=4)
    for db in (first, second):
        await db.start()
    try:
        a, b = _webhooks(first, clock, keyring, "a"), _webhooks(second, clock, keyring, "b")
        await first.write(lambda tx: tx.execute(
            "INSERT INTO merchants (id, name, mode, created_at_ms) VALUES ('mch_w', 'Hooks', 'test', 0)"))
        await a.create_endpoint(merchant_id="mch_w", merchant_mode="test",
                                command=WebhookEndpointCreate(url=receiver.url, events=["*"]))
        events = 60
        for _ in range(events // 10):
            await first.write(lambda tx: [a.emit(tx, merchant_id="mch_w", type="order.paid", data={"n": 1})
                                          for _ in range(10)])

        def pending() -> int:
            return _raw(pg_url, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")[0][0]

        passes = 0
        while pending():  # both instances' passes at once, again and again, as their jobs would run them
            await asyncio.gather(a.deliver_due(), b.deliver_due(), a.deliver_due(), b.deliver_due())
            passes += 1
            assert passes < 50
        ids = [row[0] for row in _raw(pg_url, "SELECT id FROM webhook_deliveries")]
        assert len(ids) == events
        assert receiver.deliveries == collections.Counter({delivery_id: 1 for delivery_id in ids}), \
            "each delivery received exactly once"
        assert _raw(pg_url, "SELECT status, attempts, count(*), count(claimed_by) FROM webhook_deliveries"
                            " GROUP BY status, attempts") == [("succeeded", 1, events, 0)]

        # A dead instance's claim holds its rows until it expires, then they are delivered.
        await first.write(lambda tx: a.emit(tx, merchant_id="mch_w", type="order.paid", data={"n": 2}))
        claimed = await first.write(lambda tx: webhook_store.claim_due_deliveries(
            tx, now_ms=clock.now_ms(), limit=10, owner="dead", claimed_until_ms=clock.now_ms() + 60_000))
        assert len(claimed) == 1
        assert await a.deliver_due() == 0 and receiver.deliveries[claimed[0]["id"]] == 0
        clock.advance_to(clock.now_ms() + 60_000)
        assert await a.deliver_due() == 1 and receiver.deliveries[claimed[0]["id"]] == 1
    finally:
        for db in (first, second):
            await db.close()


# -- janitor claims ------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_concurrent_janitor_claims_on_postgresql_are_disjoint(pg_url):
    apply_migrations(pg_url)
    dbs = [PgDatabase(pg_url, write_connections_max=4) for _ in range(2)]
    for db in dbs:
        await db.start()
    try:
        def seed(tx) -> None:
            tx.execute("INSERT INTO merchants (id, name, mode, created_at_ms) VALUES ('mch_j', 'Janitor', 'test', 0)")
            for i in range(40):
                tx.execute("INSERT INTO orders (id, merchant_id, player_id, status, amount, currency, channel, metadata,"
                           " checkout_token, expires_at_ms, created_at_ms, updated_at_ms) VALUES (?, 'mch_j', 'p',"
                           " 'pending', 100, 'USD', 'sandbox', '{}', ?, 0, 0, 0)", (f"ord_{i}", f"tok_{i}"))
                tx.execute("INSERT INTO payments (id, order_id, merchant_id, channel, status, amount, currency,"
                           " created_at_ms, updated_at_ms, close_state) VALUES (?, ?, 'mch_j', 'sandbox', 'unknown',"
                           " 100, 'USD', ?, 0, ?)", (f"pay_{i}", f"ord_{i}", _NOW_MS - 3_600_000,
                                                     "pending" if i % 2 else None))
                tx.execute("INSERT INTO refunds (id, merchant_id, order_id, payment_id, amount, currency, status,"
                           " reason, created_at_ms, updated_at_ms) VALUES (?, 'mch_j', ?, ?, 10, 'USD', 'pending',"
                           " 'requested', ?, 0)", (f"rfd_{i}", f"ord_{i}", f"pay_{i}", _NOW_MS - 3_600_000))
        await dbs[0].write(seed)
        until_ms = _NOW_MS + 60_000
        claims = {
            "payments": lambda tx, owner: channels.claim_open_payments_due(
                tx, now_ms=_NOW_MS, first_check_ms=300_000, oldest_ms=0, limit=7, owner=owner, claimed_until_ms=until_ms),
            "closes": lambda tx, owner: orders.claim_payments_to_close(
                tx, now_ms=_NOW_MS + 1, limit=4, owner=owner, claimed_until_ms=until_ms),
            "refunds": lambda tx, owner: refunds.claim_pending_due(
                tx, now_ms=_NOW_MS, first_check_ms=300_000, limit=7, owner=owner, claimed_until_ms=until_ms),
        }
        for kind, claim in claims.items():
            claimers = [f"{kind}-{i}" for i in range(8)]  # eight at once, four on each instance's writer pool
            got = await asyncio.gather(*(dbs[i % 2].write(lambda tx, o=owner: [r["id"] for r in claim(tx, o)])
                                         for i, owner in enumerate(claimers)))
            everything = [row_id for rows in got for row_id in rows]
            assert len(everything) == len(set(everything)), f"{kind}: a row claimed twice"
            table = "refunds" if kind == "refunds" else "payments"
            held = dict(_raw(pg_url, f"SELECT id, claimed_by FROM {table} WHERE claimed_by LIKE ?", (f"{kind}-%",)))
            assert held == {row_id: owner for owner, rows in zip(claimers, got) for row_id in rows}
            expected = 20 if kind == "closes" else 40
            assert len(everything) == expected, f"{kind}: every due row claimed by someone"
            if kind == "payments":  # each row's record ends its claim: the closes may take them
                assert await dbs[1].write(lambda tx: [channels.release_payment(tx, payment_id=i) for i in everything])
                assert _raw(pg_url, "SELECT count(claimed_by) FROM payments") == [(0,)]
    finally:
        for db in dbs:
            await db.close()
