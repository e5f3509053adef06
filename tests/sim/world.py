"""One simulated world: the real APSS app (apss/app.py) driven over ASGI on a real SQLite file, a
moved test clock, seeded providers (the sandbox, and the Stripe, PayPal, Alipay and WeChat Pay
stand-ins of tests/channels with the payers and callback senders the simulation plays, see
tests/sim/providers.py), and crashes at seeded write transactions.

Everything is decided by one random.Random(seed) and driven one request at a time (a burst of
orders forms one group commit deterministically: the writer is held while they queue, in order),
so a seed replays identically. See tests/sim/__init__.py for the model and how to run it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import sqlite3
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import apss.ids
import apss.services.sandbox.provider as sandbox_provider
import tests.channels.standin_paypal as standin_paypal
import tests.channels.standin_stripe as standin_module
import tests.channels.standin_wechatpay as standin_wechatpay
from apss.app import create_app
from apss.channels.paypal.client import PayPalCertFetcher
from apss.clock import TestClock
from apss.config import load_config
from apss.store import db as store_db
from tests.sim import invariants
from tests.sim.faults import (
    CALLBACK_FAULTS,
    PROVIDER_FAULTS,
    FaultyTransport,
    SimulatedCrash,
)
from tests.sim.providers import (
    AlipaySim,
    HostRouter,
    PayPalSim,
    SeededRandomness,
    SimProvider,
    StripeSim,
    WechatPaySim,
)

__all__ = ["Result", "Sim", "run_seed"]

ADMIN = "adm_sim_token_0123456789abcdef"
START_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z, a Monday
CHANNELS = ("sandbox", "stripe", "paypal", "alipay", "wechatpay")
# How often an order goes to each: the sandbox and Stripe, whose charges the banks dispute here, more.
CHANNEL_WEIGHTS = (3, 3, 2, 2, 2)
CNY_CHANNELS = ("alipay", "wechatpay")  # they take CNY only; the others are sold in USD here
PAID_LIKE = ("paid", "delivering", "fulfilled", "partially_refunded", "refunded", "in_review")
SANDBOX_MAGIC = (None, None, None, "delay_callback:120", "duplicate_callback", "lost_callback", "refund_fails")
WAIT_POLLS_MAX = 5000  # a bound on waiting for a burst's writes to queue (real time, never an outcome)


@dataclass
class Result:
    seed: int
    steps: int
    operations: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    kills: int = 0
    kills_in_group_commit: int = 0
    kills_in_recovery: int = 0
    disputes: Counter = field(default_factory=Counter)  # (channel, final status) of the disputes recorded
    # per channel, from the provider's own records at the end: payments it charged, refunds it executed
    charged: Counter = field(default_factory=Counter)
    refunded: Counter = field(default_factory=Counter)
    acknowledged: Counter = field(default_factory=Counter)  # per provider: its callbacks APSS acknowledged
    violation: str | None = None
    violation_step: int | None = None
    trace: list[str] = field(default_factory=list)
    digest: str = ""

    def report(self) -> str:
        lines = [f"seed {self.seed}: {self.steps} steps, {sum(self.operations.values())} operations, "
                 f"{self.kills} kills ({self.kills_in_group_commit} in a group commit, {self.kills_in_recovery} in "
                 f"recovery), {sum(self.faults.values())} faults, {sum(self.disputes.values())} disputes, "
                 f"violations {0 if self.violation is None else 1}"]
        if self.violation is not None:
            lines.append(f"VIOLATION at step {self.violation_step}: {self.violation}")
            lines.append(f"replay: python -m tests.sim --seeds 1 --start {self.seed} --steps {self.steps}")
            lines.append("last steps:")
            lines += [f"  {line}" for line in self.trace[-25:]]
        return "\n".join(lines)


class _Ids:
    """Seeded stand-ins for the modules apss.ids reads (wall time, os.urandom): ids, and so every
    order of rows by id, replay identically. Restored after the run."""

    def __init__(self, clock: TestClock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng

    def time_ns(self) -> int:
        return self._clock.now_ms() * 1_000_000

    def urandom(self, n: int) -> bytes:
        return self._rng.randbytes(n)


class Sim:
    def __init__(self, seed: int, *, steps: int, workdir: Path, crash_rate: float = 0.02,
                 fault_rate: float = 0.15) -> None:
        self.seed = seed
        self.steps = steps
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.clock = TestClock(START_MS)
        self.crash_rate = crash_rate
        self.fault_rate = fault_rate
        self.result = Result(seed=seed, steps=steps)
        self.trace: deque[str] = deque(maxlen=200)
        self.faults_on = [True]
        self.db_path = workdir / "sim.sqlite"
        now_s = lambda: self.clock.now_ms() // 1000  # noqa: E731
        self.providers: dict[str, SimProvider] = {p.name: p for p in (
            StripeSim(self.rng, now_s=now_s), PayPalSim(self.rng), AlipaySim(self.rng, now_s=now_s),
            WechatPaySim(self.rng, now_s=now_s))}
        self.stripe = self.providers["stripe"].standin  # disputes are raised on it directly
        self.outbox: list[dict[str, Any]] = []  # the providers' callbacks to send: they survive our crashes
        self.event_seq = itertools.count(1)
        self.unrouted: list[str] = []  # provider hosts the app called that no stand-in serves
        self.initial_stock: dict[str, int] = {}
        self.products: dict[str, str] = {}  # name -> id
        self.key = ""
        self.merchant_id = ""
        self.in_doubt: list[tuple[str, str, dict | None, str | None]] = []  # requests a crash cut off
        self.idem_seq = itertools.count(1)
        self.step = 0
        # the app of the moment
        self.app = None
        self.svc = None
        self.client: httpx.AsyncClient | None = None
        self.writes = 0
        self.crash_at: int | None = None
        self.crash_after_commit = False
        self.crashed = False
        self.dead: list[Any] = []
        self.in_recovery = False

    # -- trace -------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.trace.append(f"[{self.step}] t+{(self.clock.now_ms() - START_MS) // 1000}s {text}")

    # -- the writer's fault hook ---------------------------------------------------------------
    def _hook(self, db: Any, batch: int, committed: bool) -> None:
        if any(db is d for d in self.dead):
            raise SimulatedCrash("this process was killed")
        if self.svc is None or db is not self.svc.db:
            return
        if not committed:
            # Transactions, not batches: how concurrent writes (a burst's audit rows) group into
            # batches is thread timing's, the count of transactions is the seed's.
            self.writes += batch
        if self.crash_at is not None and self.writes >= self.crash_at and committed == self.crash_after_commit:
            self.dead.append(db)
            self.crashed = True
            self.crash_at = None
            self.result.kills += 1
            if batch > 1:
                self.result.kills_in_group_commit += 1
            if self.in_recovery:
                self.result.kills_in_recovery += 1
            self.trace.append(f"[{self.step}] KILL at write {self.writes} ({'after' if committed else 'before'} "
                              f"COMMIT, batch of {batch}{', in recovery' if self.in_recovery else ''})")
            raise SimulatedCrash("kill -9")

    def _schedule_crash(self, *, recovery: bool) -> None:
        if recovery and self.rng.random() < 0.3:
            self.crash_at = self.writes + self.rng.randint(1, 4)
        elif self.rng.random() < 0.5:
            self.crash_at = self.writes + self.rng.randint(1, int(2 / self.crash_rate))
        else:
            self.crash_at = None
        self.crash_after_commit = self.rng.random() < 0.5

    # -- the process ---------------------------------------------------------------------------
    async def _boot(self, *, crashes: bool) -> None:
        """Build the app anew on the same file and start it (migrations, recovery of cut-off
        requests), as a restart after kill -9 does. A crash may hit the recovery itself."""
        while True:
            config = load_config("/nonexistent-config.toml", environ={
                "APSS_DATABASE_PATH": str(self.db_path), "APSS_ADMIN_TOKEN": ADMIN, "APSS_SEED_DEMO": "false",
                "APSS_SANDBOX_CALLBACK_TRANSPORT": "asgi", "APSS_SERVER_PUBLIC_URL": "http://apss.sim",
            })
            app = create_app(config, clock=self.clock, announce=lambda line: None)
            svc = app.state.services
            svc.scheduler.start = lambda: None  # the simulation runs the jobs itself, at its times
            self.app, self.svc, self.writes, self.crashed = app, svc, 0, False
            if crashes:
                self._schedule_crash(recovery=True)
            self.in_recovery = True
            lifespan = app.lifespan()
            try:
                await lifespan.__aenter__()
            except (SimulatedCrash, store_db.StoreUnavailable, Exception) as exc:
                if not self.crashed:
                    raise
                self.note(f"startup cut off by the kill ({type(exc).__name__})")
                await self._teardown(lifespan=None)
                continue
            finally:
                self.in_recovery = False
            self._lifespan = lifespan
            break
        sandbox_client = svc.sandbox.client
        await sandbox_client.aclose()
        svc.sandbox.client = httpx.AsyncClient(transport=FaultyTransport(
            httpx.ASGITransport(app=app), rng=self.rng, rate=self.fault_rate, faults=CALLBACK_FAULTS,
            counter=self.result.faults, label="sandbox_callback", enabled=self.faults_on), timeout=10)
        routes: dict[str, httpx.AsyncBaseTransport] = {}
        for provider in self.providers.values():
            faulty = FaultyTransport(httpx.ASGITransport(app=provider.app), rng=self.rng, rate=self.fault_rate,
                                     faults=PROVIDER_FAULTS, counter=self.result.faults, label=f"{provider.name}_api",
                                     enabled=self.faults_on)
            routes.update(dict.fromkeys(provider.hosts, faulty))
        svc.provider_http._transport = HostRouter(routes, self.unrouted)  # every channel's calls, the cert too
        # PayPal's certificate cache counts its period (a failed fetch is remembered as long as a
        # good one) on the monotonic clock; here it runs on the simulated one, as time does.
        paypal = svc.channels.registry.get("paypal")
        paypal._cert_fetcher = PayPalCertFetcher(svc.provider_http, now_s=lambda: self.clock.now_ms() / 1000)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://apss.sim", timeout=30)
        if crashes and self.crash_at is None:
            self._schedule_crash(recovery=False)

    async def _teardown(self, *, lifespan) -> None:
        svc = self.svc
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)
        else:  # startup did not finish: close what it opened
            await svc.provider_http.aclose()
            await svc.webhooks.http.aclose()
            await svc.prechecks.http.aclose()
            if svc.sandbox.client is not None:
                await svc.sandbox.client.aclose()
            await svc.db.close(deadline_s=1.0)

    async def _restart(self) -> None:
        self.note("restart: the process state is abandoned, the app is built anew on the same file")
        await self._teardown(lifespan=self._lifespan)
        await self._boot(crashes=True)
        await self._retry_in_doubt()

    async def _retry_in_doubt(self) -> None:
        """A client whose request a crash cut off sends it again, with the same Idempotency-Key."""
        pending, self.in_doubt = self.in_doubt, []
        self.in_recovery = True
        try:
            for index, (method, path, body, key) in enumerate(pending):
                response = await self._call(method, path, body, key=key, retry=True)
                if self.crashed:
                    self.in_doubt.extend(pending[index + 1:])
                    return
                if response is not None and response.status_code == 409 and key is not None:
                    self.in_doubt.append((method, path, body, key))  # still running: the completer finishes it
        finally:
            self.in_recovery = False

    # -- HTTP ----------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, body: dict | None = None, *, key: str | None = None,
                    retry: bool = False, admin: bool = False) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {ADMIN if admin else self.key}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        assert self.client is not None
        response = await self.client.request(method, path, json=body, headers=headers)
        if self.crashed:
            if method != "GET":
                self.in_doubt.append((method, path, body, key))
            self.note(f"{method} {path} cut off by the kill ({response.status_code})")
            return None
        if response.status_code >= 500:
            raise invariants.Violation(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        self.note(f"{method} {path}{' (retry)' if retry else ''} -> {response.status_code}")
        return response

    def _key(self) -> str:
        return f"sim-{self.seed}-{next(self.idem_seq)}"

    # -- reads of the file (what a person would look at; deterministic between requests) ------
    def rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    # -- set-up --------------------------------------------------------------------------------
    async def _setup(self) -> None:
        merchant = (await self._call("POST", "/v1/merchants", {"name": "Sim Studio", "mode": "test"}, admin=True)).json()
        self.key, self.merchant_id = merchant["secret_key"], merchant["id"]
        for provider in self.providers.values():
            response = await self._call("PUT", f"/v1/channels/{provider.name}", provider.settings())
            assert response.status_code == 200, response.text
        await self._call("PUT", "/v1/account/settlement_schedule", {"cycle": "daily", "cutoff_time": "00:00",
                                                                     "timezone": "UTC"})
        events = sorted(invariants.ORDER_EVENT_TYPES | {"refund.succeeded", "refund.failed", "dispute.created", "dispute.updated",
                                                            "dispute.closed"})
        hook = await self._call("POST", "/v1/webhook_endpoints", {"url": "https://hooks.sim.test/apss", "events": events})
        assert hook.status_code == 201, hook.text
        specs = {
            "sword": {"category": "item", "prices": {"USD": 500, "CNY": 3500}, "stock": 20},
            "egg": {"category": "item", "prices": {"USD": 1999, "CNY": 12800}, "stock": 4},
            "gems": {"category": "currency_pack", "prices": {"USD": 499, "CNY": 3000},
                     "grants": [{"type": "currency", "currency": "GEMS", "amount": 500}]},
            "chest": {"category": "item", "prices": {"USD": 300, "CNY": 1800}, "stock": 30,
                      "grants": [{"type": "game", "sku": "chest"}]},
        }
        for name, spec in specs.items():
            response = await self._call("POST", "/v1/products", {"sku": name, "name": name.title(), **spec})
            assert response.status_code == 201, response.text
            self.products[name] = response.json()["id"]
            if spec.get("stock") is not None:
                self.initial_stock[response.json()["id"]] = spec["stock"]

    # -- the workload --------------------------------------------------------------------------
    def _order_body(self) -> dict:
        names = sorted(self.products)
        lines = []
        for name in self.rng.sample(names, self.rng.choice((1, 1, 2))):
            lines.append({"product_id": self.products[name], "quantity": self.rng.randint(1, 2)})
        channel = self.rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0]
        body: dict[str, Any] = {"player_id": f"p{self.rng.randint(1, 6)}", "items": lines, "channel": channel,
                                "currency": "CNY" if channel in CNY_CHANNELS else "USD"}
        magic = self.rng.choice(SANDBOX_MAGIC)
        if magic is not None and body["channel"] == "sandbox":
            body["metadata"] = {"sandbox_outcome": magic}
        return body

    async def op_order(self) -> None:
        body = self._order_body()
        key = self._key() if self.rng.random() < 0.9 else None
        response = await self._call("POST", "/v1/orders", body, key=key)
        if response is not None and key is not None and self.rng.random() < 0.1:
            await self._call("POST", "/v1/orders", body, key=key, retry=True)  # a client retry: replayed

    async def op_burst(self) -> None:
        """Several one-transaction requests (wallet debits, sandbox payer actions, cancels) whose
        writes share one group commit: the writer is held while they queue, one after another, so
        the batch and its order are the seed's. (Orders take two transactions around a provider
        call, whose interleaving after the batch would be thread timing's: they stay one at a time.)"""
        candidates = [("POST", f"/v1/players/{w['player_id']}/wallet/debit",
                       {"currency": "GEMS", "amount": max(1, w["balance"] // 2), "reason": "burst"})
                      for w in self.rows("SELECT player_id, balance FROM wallet_balances WHERE currency = 'GEMS' "
                                         "AND balance > 0 ORDER BY player_id")]
        candidates += [("POST", f"/v1/sandbox/payments/{p['id']}/succeed", None) for p in self.rows(
            "SELECT id FROM payments WHERE status = 'requires_action' AND channel = 'sandbox' ORDER BY id")]
        candidates += [("POST", f"/v1/orders/{o['id']}/cancel", None)
                       for o in self.rows("SELECT id FROM orders WHERE status = 'pending' ORDER BY id")]
        if len(candidates) < 2:
            return
        chosen = [self.rng.choice(candidates) for _ in range(self.rng.randint(2, 4))]
        db = self.svc.db
        gate, entered = threading.Event(), threading.Event()

        def hold(tx) -> None:
            entered.set()
            gate.wait(10)

        blocker = asyncio.ensure_future(db.write(hold))
        tasks = []
        try:
            await self._until(lambda: entered.is_set() or blocker.done(), polls=WAIT_POLLS_MAX)
            self.note(f"burst of {len(chosen)} requests in one group commit")
            if self.crash_at is None and self.rng.random() < 0.3:
                self.crash_at, self.crash_after_commit = self.writes + 2, self.rng.random() < 0.5  # the burst's batch
            for method, path, body in chosen:
                queued = db._queue.qsize()
                task = asyncio.ensure_future(self._call(method, path, body, key=self._key()))
                tasks.append(task)
                await self._until(lambda: task.done() or db._queue.qsize() > queued, polls=WAIT_POLLS_MAX)
        finally:
            gate.set()
        results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        for result in results[1:]:
            if isinstance(result, invariants.Violation):
                raise result
            if isinstance(result, BaseException) and not self.crashed:
                raise result

    async def _until(self, predicate, *, polls: int) -> None:
        for _ in range(polls):
            if predicate():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the simulation waited too long for a write to queue")

    async def op_pay(self) -> None:
        """A payer acts on a payment shown to them (its order may have expired meanwhile)."""
        payments = self.rows("SELECT p.id, p.channel FROM payments p JOIN orders o ON o.id = p.order_id "
                             "WHERE p.status = 'requires_action' ORDER BY p.id")
        if not payments:
            return
        payment = self.rng.choice(payments)
        succeed = self.rng.random() < 0.85
        if payment["channel"] == "sandbox":
            await self._call("POST", f"/v1/sandbox/payments/{payment['id']}/{'succeed' if succeed else 'fail'}",
                             key=self._key())
            return
        provider = self.providers[payment["channel"]]
        events = provider.pay(payment["id"], succeed=succeed)
        if events is None:
            return  # the provider shows this payer nothing to pay (expired, closed)
        self.note(f"payer {'pays' if succeed else 'fails'} {provider.name} payment {payment['id']}")
        for event_type, obj in events:
            self._queue(provider, event_type, obj)

    def _observe(self) -> None:
        """Each provider announces what it did on APSS's calls (captures, refunds) by callback."""
        for provider in self.providers.values():
            for event_type, obj in provider.observe():
                self._queue(provider, event_type, obj)

    def _queue(self, provider: SimProvider, event_type: str, obj: Any, *, losable: bool = True) -> None:
        """A provider queues a callback: maybe lost, maybe delayed, maybe sent twice. A lost payment
        or refund callback stands for one the provider never sends (the janitor's status queries
        find the truth); dispute events are never lost for good (APSS does not poll disputes; Stripe
        retries a webhook for three days), only delayed, duplicated and reordered."""
        seq = next(self.event_seq)
        event = {"seq": seq, "provider": provider.name, "id": provider.event_id(seq), "type": event_type,
                 "obj": json.loads(json.dumps(obj)), "at": self.clock.now_ms(), "attempts": 0}
        label = f"{provider.name}_callback"
        roll = self.rng.random() if self.faults_on[0] else 1.0
        if roll < 0.08 and losable:
            self.result.faults[f"{label}:lost"] += 1
            self.note(f"{provider.name} loses {event_type} {event['id']}")
            return
        if roll < 0.25:
            event["at"] += self.rng.randint(1, 900) * 1000
            self.result.faults[f"{label}:delayed"] += 1
        self.outbox.append(event)
        if self.faults_on[0] and self.rng.random() < 0.1:
            self.result.faults[f"{label}:duplicated"] += 1
            self.outbox.append({**event, "seq": next(self.event_seq)})

    async def op_callbacks(self) -> None:
        """Every provider sends its due callbacks (maybe reordered), signed as it signs them, to
        its channel's endpoint; one not acknowledged is retried with backoff, one whose answer was
        lost is sent again."""
        now = self.clock.now_ms()
        due = sorted((e for e in self.outbox if e["at"] <= now), key=lambda e: e["seq"])
        if len(due) > 1 and self.faults_on[0] and self.rng.random() < 0.5:
            self.rng.shuffle(due)
            self.result.faults["callbacks:reordered"] += 1
        for event in due:
            provider = self.providers[event["provider"]]
            headers, body = provider.signed(event, now_s=now // 1000)
            assert self.client is not None
            response = await self.client.post(f"/v1/channels/{provider.name}/webhook/{self.merchant_id}",
                                              content=body, headers=headers)
            if self.crashed:
                self.note(f"{provider.name} callback {event['id']} cut off by the kill")
                return
            if response.status_code >= 500 and not _retry_answer(response):
                raise invariants.Violation(f"{provider.name} callback {event['type']} answered "
                                           f"{response.status_code}: {response.text[:300]}")
            self.note(f"{provider.name} sends {event['type']} {event['id']} -> {response.status_code}")
            if provider.acknowledged(response):
                if self.faults_on[0] and self.rng.random() < 0.05:  # the answer was lost: sent again
                    self.result.faults[f"{provider.name}_callback:answer_lost"] += 1
                    event["at"] = now + 60_000
                else:
                    self.outbox.remove(event)
                self.result.acknowledged[provider.name] += 1
            else:
                event["attempts"] += 1
                event["at"] = now + 60_000 * 2 ** min(event["attempts"], 6)

    async def op_refunds_settle(self) -> None:
        """A provider settles a pending refund late (a success, sometimes a failure), and says so."""
        pending = [(provider, key) for provider in self.providers.values() for key in provider.pending_refunds()]
        if not pending:
            return
        provider, key = self.rng.choice(pending)
        succeeded = self.rng.random() < 0.85
        self.result.faults[f"{provider.name}_refund:settled_late"] += 1
        self.note(f"{provider.name} settles refund {key} late: {'succeeded' if succeeded else 'failed'}")
        for event_type, obj in provider.settle_refund(key, succeeded=succeeded):
            self._queue(provider, event_type, obj)

    async def op_sandbox_callbacks(self) -> None:
        await self.svc.sandbox.deliver_due()

    async def op_refund(self) -> None:
        orders = self.rows("SELECT o.id, o.amount, (SELECT COALESCE(SUM(amount), 0) FROM refunds r WHERE r.order_id = o.id "
                           "AND r.status != 'failed') AS refunded FROM orders o "
                           "WHERE o.status IN ('fulfilled', 'partially_refunded', 'delivering') ORDER BY o.id")
        if not orders:
            return
        order = self.rng.choice(orders)
        left = order["amount"] - order["refunded"]
        body: dict[str, Any] = {"reason": "sim"}
        if left > 1 and self.rng.random() < 0.5:
            body["amount"] = self.rng.randint(1, left - 1)
        elif self.rng.random() < 0.1:
            body["amount"] = left + 1  # too much: refused, nothing moves
        for provider in self.providers.values():
            provider.before_refund()
        await self._call("POST", f"/v1/orders/{order['id']}/refunds", body, key=self._key())

    async def op_debit(self) -> None:
        wallets = self.rows("SELECT player_id, balance FROM wallet_balances WHERE currency = 'GEMS' AND balance > 0 "
                            "ORDER BY player_id")
        if not wallets:
            return
        wallet = self.rng.choice(wallets)
        amount = self.rng.randint(1, wallet["balance"] + 50)
        await self._call("POST", f"/v1/players/{wallet['player_id']}/wallet/debit",
                         {"currency": "GEMS", "amount": amount, "reason": "potion"}, key=self._key())

    async def op_ack(self) -> None:
        pending = self.rows("SELECT id FROM deliveries WHERE status = 'pending' ORDER BY id")
        if pending:
            delivery = self.rng.choice(pending)
            await self._call("POST", f"/v1/deliveries/{delivery['id']}/ack", key=self._key())

    async def op_cancel(self) -> None:
        pending = self.rows("SELECT id FROM orders WHERE status = 'pending' ORDER BY id")
        if pending:
            await self._call("POST", f"/v1/orders/{self.rng.choice(pending)['id']}/cancel", key=self._key())

    async def op_dispute(self) -> None:
        """The payer's bank disputes a charge both sides hold as paid, for at most what no refund
        took back, on an order that was paid (not one canceled and paid late, whose automatic
        refund a dispute would refuse: that case is not simulated). The sandbox raises it through
        its endpoint (its signed `dispute.created` follows), Stripe queues
        `charge.dispute.created`. One dispute per charge, as at Stripe."""
        charged = invariants.provider_paid(self)
        disputed = {d["payment_id"] for d in invariants.provider_disputes(self).values()}
        payments = [p for p in self.rows(
            "SELECT p.id, p.channel, p.amount, p.provider_ref, (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r "
            "WHERE r.payment_id = p.id AND r.status != 'failed') AS refunded FROM payments p JOIN orders o ON "
            f"o.id = p.order_id WHERE p.status = 'succeeded' AND p.channel IN ('sandbox', 'stripe') AND o.status IN "
            f"{PAID_LIKE} ORDER BY p.id")
            if p["id"] in charged and p["id"] not in disputed and p["amount"] > p["refunded"]]
        if not payments:
            return
        payment = self.rng.choice(payments)
        left = payment["amount"] - payment["refunded"]
        amount = left if self.rng.random() < 0.6 else self.rng.randint(1, left)
        if payment["channel"] == "sandbox":
            await self._call("POST", f"/v1/sandbox/payments/{payment['id']}/dispute", {"amount": amount},
                             key=self._key())
            return
        intent = next(i for _, i in sorted(self.stripe.intents.items())
                      if i["metadata"].get("apss_payment_id") == payment["id"])
        dispute = self.stripe.open_dispute(intent, amount=amount)
        self.note(f"the bank disputes {amount} of Stripe payment {payment['id']}: {dispute['id']}")
        self._queue(self.providers["stripe"], "charge.dispute.created", dispute, losable=False)

    async def op_dispute_close(self) -> None:
        """The bank decides an open dispute: won (the money comes back) or lost."""
        open_ = [(key, d) for key, d in sorted(invariants.provider_disputes(self).items())
                 if d["status"] in ("needs_response", "under_review")]
        if not open_:
            return
        (channel, dispute_id), _ = self.rng.choice(open_)
        outcome = "won" if self.rng.random() < 0.5 else "lost"
        if channel == "sandbox":
            await self._call("POST", f"/v1/sandbox/disputes/{dispute_id}/close", {"outcome": outcome}, key=self._key())
            return
        dispute = self.stripe.disputes[dispute_id]
        dispute["status"] = outcome
        self.note(f"the bank closes Stripe dispute {dispute_id}: {outcome}")
        self._queue(self.providers["stripe"], "charge.dispute.closed", dispute, losable=False)

    async def op_advance(self) -> None:
        roll = self.rng.random()
        if roll < 0.5:
            seconds = self.rng.randint(1, 120)
        elif roll < 0.85:
            seconds = self.rng.randint(300, 1200)  # reservation expiry, the janitor's first query
        elif roll < 0.97:
            seconds = self.rng.randint(3600, 6 * 3600)
        else:
            seconds = 86_400  # settlement cut-offs, the janitor's last query
        self.clock.advance(seconds=seconds)
        self.note(f"clock +{seconds}s")
        self._providers_tick()
        if seconds >= 300:
            await self.op_jobs(every=True)

    JOBS = ("expiry", "sandbox_callbacks", "payment_janitor", "refund_sender", "completer", "settlement",
            "reconciliation_checks", "idempotency_prune")

    async def op_jobs(self, *, every: bool = False) -> None:
        for name in self.JOBS:
            if every or self.rng.random() < 0.5:
                await self.svc.scheduler.run_now(name)
                if self.crashed:
                    self.note(f"job {name} cut off by the kill")
                    return

    OPS = (("order", 24), ("burst", 3), ("pay", 20), ("sandbox_callbacks", 8), ("callbacks", 10),
           ("refunds_settle", 3), ("refund", 8), ("debit", 4), ("ack", 4), ("cancel", 2), ("dispute", 4),
           ("dispute_close", 3), ("advance", 10), ("jobs", 6))

    def _providers_tick(self) -> None:
        for provider in self.providers.values():
            provider.tick(self.clock.now_ms() // 1000)

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> Result:
        await self._boot(crashes=False)
        self.crash_at = None
        await self._setup()
        names = [name for name, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        try:
            for self.step in range(1, self.steps + 1):
                if self.crash_at is None and not self.crashed and self.rng.random() < self.crash_rate:
                    self._schedule_crash(recovery=False)
                name = self.rng.choices(names, weights)[0]
                self.result.operations[name] += 1
                try:
                    await getattr(self, f"op_{name}")()
                except invariants.Violation:
                    raise
                except Exception:
                    if not self.crashed:  # after a kill, what the dead process was doing fails: expected
                        raise
                self._observe()  # what the providers did stands, whether or not we were killed
                if self.crashed:
                    await self._restart()
                    continue
                await invariants.check_step(self)
            self.step = self.steps + 1
            await self._quiesce()
            await invariants.check_final(self)
            self.result.disputes.update((r["channel"], r["status"]) for r in self.rows("SELECT channel, status FROM disputes"))
            self.result.charged.update(invariants.provider_paid(self).values())
            refunded = invariants.provider_refunds(self)
            self.result.refunded.update(channel for channel, _, status in refunded.values() if status == "succeeded")
        except invariants.Violation as violation:
            self.result.violation = str(violation)
            self.result.violation_step = self.step
        finally:
            self.result.trace = list(self.trace)
            self.result.digest = invariants.digest(self)
            await self._teardown(lifespan=self._lifespan)
        return self.result

    async def _quiesce(self) -> None:
        """Faults and crashes stop; clients retry what was cut off; the providers send what they
        still hold; the clock runs 30 h through the janitor's last query and a settlement."""
        self.faults_on[0] = False
        self.crash_at = None
        self.note("quiet phase: no more faults or kills")
        await self._retry_in_doubt()
        for _ in range(60):
            self.clock.advance(seconds=1800)
            self._providers_tick()
            for provider in self.providers.values():
                for key in provider.pending_refunds():
                    for event_type, obj in provider.settle_refund(key, succeeded=True):
                        self._queue(provider, event_type, obj)
            await self.op_callbacks()
            await self.op_jobs(every=True)
            self._observe()
            await self._retry_in_doubt()
        await invariants.check_step(self)


def _retry_answer(response: httpx.Response) -> bool:
    """A callback answered "not now, send it again": 503 (the store is not ready), or 502
    `channel_unavailable` (what verifying or applying it needs from the provider, PayPal's
    signing certificate or a capture, could not be had). Any other 5xx is a defect."""
    if response.status_code == 503:
        return True
    try:
        return response.status_code == 502 and response.json()["error"]["code"] == "channel_unavailable"
    except (ValueError, KeyError, TypeError):
        return False


async def _run(seed: int, steps: int, workdir: Path) -> Result:
    sim = Sim(seed, steps=steps, workdir=workdir)
    saved = (apss.ids.time, apss.ids.os, list(apss.ids._last), standin_module._new_id,
             sandbox_provider._SEND_CONCURRENCY_MAX, standin_paypal.secrets, standin_paypal.uuid,
             standin_wechatpay.secrets)
    ids_rng = random.Random(seed * 7919 + 1)
    shim = _Ids(sim.clock, ids_rng)
    counter = itertools.count(1)
    apss.ids.time, apss.ids.os = shim, shim
    apss.ids._last[:] = [0, 0]
    standin_module._new_id = lambda prefix: f"{prefix}_test_sim{next(counter):08d}"
    # The PayPal and WeChat Pay stand-ins draw ids, nonces and transmission ids from these.
    drawn = SeededRandomness(random.Random(seed * 7919 + 2))
    standin_paypal.secrets = standin_paypal.uuid = standin_wechatpay.secrets = drawn
    sandbox_provider._SEND_CONCURRENCY_MAX = 1  # callbacks one after another: their order is the seed's
    store_db.set_fault_hook(sim._hook)
    quiet = _quiet_logs()
    try:
        return await sim.run()
    finally:
        store_db.set_fault_hook(None)
        apss.ids.time, apss.ids.os = saved[0], saved[1]
        apss.ids._last[:] = saved[2]
        standin_module._new_id = saved[3]
        sandbox_provider._SEND_CONCURRENCY_MAX = saved[4]
        standin_paypal.secrets, standin_paypal.uuid, standin_wechatpay.secrets = saved[5:8]
        quiet()


def _quiet_logs():
    """Kills make the app log failed writes and jobs by design: keep them off the console."""
    logger = logging.getLogger("apss")
    before = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False

    def restore() -> None:
        logger.setLevel(before[0])
        logger.propagate = before[1]
        logger.handlers = before[2]

    return restore


def run_seed(seed: int, *, steps: int, workdir: Path) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(seed, steps, workdir))
