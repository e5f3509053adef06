"""Benchmark: does the server's cost stay flat as the database grows to millions of orders?

    python bench/growth.py [--orders 1000000] [--yesterday-share 0.5] [--days 14] [--http-orders 2000]
                           [--concurrency 16] [--dir DIR]

1. A migrated temp database, then the real server (`python run.py`, rate limit off, no demo seed)
   with a merchant, an item product and a webhook endpoint (a sink subprocess answering 200), all
   made over the API, and one purchase made over the API (order, then a signed sandbox callback).
   That purchase's rows are the template of the bulk fill.
2. Three stages, at 0 orders, 100,000 and `--orders`: the server is stopped, the fill adds orders
   up to the stage's count directly in SQL (executemany, 20,000 orders per transaction, foreign
   keys on): each a copy of the template's rows in every table the purchase wrote (order, item,
   three order events, payment, provider reference, attempt, provider event, risk facts and
   decisions, audit line, ledger transaction and its 4 entries, two webhook events and their
   deliveries), with fresh ids and times, and the running sums the server keeps (ledger balances,
   product sold, inventory, risk players). Times: `--yesterday-share` of the orders in yesterday
   (UTC), the rest spread over the `--days` days before it; none today. The fill then checks the
   ledger (the `apss ledger check` code) and exits non-zero when it does not balance.
   Rows the fill does not copy: idempotency keys (pruned after 24 h) and risk velocity counters
   (keyed hashes under the server's sealed key; pruned after 7 days).
3. Per stage, on the restarted server: `--http-orders` orders created over HTTP, `--concurrency` at
   once, then their sandbox callbacks (httpx: the Python driver on the same 2 cores bounds the
   absolute rates, so compare the stages with the 0-order stage, the baseline of the same run);
   the server's RSS (VmRSS, and VmHWM the peak) from /proc; the median of 5 GETs of each list
   endpoint, the dashboard overview (/admin, /admin/live.json, with an admin session) and the
   report endpoints. At 100,000 and N also: one daily report of yesterday (the service method the
   report job calls, in this process, before the server starts) and one settlement run over
   yesterday (POST /v1/settlements/run, manual cycle, chunked by the server: its markers are set
   by the fill as if everything before yesterday had been settled), with the report job's own
   catch-up run at start (13 daily and the weekly reports) read from /metrics.
Prints figures only; asserts nothing about speed. Exits non-zero when the fill's ledger does not
balance or the settlement does not settle every payment of its period.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/http.py would shadow the
# standard library's `http` package (which httpx needs): drop the folder first.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

REPO = _BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from apss.channels.sandbox import SIGNATURE_HEADER, build_event, sign_callback  # noqa: E402
from apss.clock import SystemClock, format_rfc3339  # noqa: E402
from apss.config import FinanceConfig  # noqa: E402
from apss.domain.payments import CallbackKind  # noqa: E402
from apss.ids import new_id  # noqa: E402
from apss.services.money.ledger import Ledger  # noqa: E402
from apss.services.money.reports import Reports  # noqa: E402
from apss.store.db import Database  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402

DAY_MS = 86_400_000
TEMPLATE_PLAYER = "growth-template-player"
PLAYERS = 200_000
FILL_CHUNK = 20_000
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

SINK = r"""
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


# -- ids as apss/ids.py makes them, at a chosen time ---------------------------------------------
def id_ms(value: str) -> int:
    body = value.split("_", 1)[1] if "_" in value else value
    bits = 0
    for char in body[:10]:
        bits = bits << 5 | _CROCKFORD.index(char)
    return bits >> 2  # 50 bits read, the first 48 are the milliseconds


def id_body_at(ms: int, rng: random.Random) -> str:
    """48 bits of milliseconds then 80 random bits, left-aligned in 26 characters (the last one
    carries 3 bits and two zero bits), as new_id writes them."""
    bits = ms << 2 | rng.getrandbits(2)
    head = "".join(_CROCKFORD[bits >> shift & 31] for shift in range(45, -1, -5))
    return head + "".join(rng.choices(_CROCKFORD, k=15)) + _CROCKFORD[rng.getrandbits(3) << 2]


# -- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python run.py` on the bench's database, started and stopped per stage."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.db_path = directory / "apss.sqlite"
        self.admin = secrets.token_urlsafe(24)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "APSS_DATABASE_PATH": str(self.db_path), "APSS_SERVER_PORT": str(self.port),
               "APSS_ADMIN_TOKEN": self.admin, "APSS_SEED_DEMO": "false", "APSS_SERVER_LOG_LEVEL": "warning",
               "APSS_API_REQUESTS_PER_S_MAX": "0"}
        log = open(self.directory / "apss.log", "a")
        self.process = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"growth: server exited:\n{(self.directory / 'apss.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("growth: server not ready after 120 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server process, MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def job_metric(self, name: str, job: str) -> float | None:
        text = httpx.get(f"{self.base}/metrics", headers={"Authorization": f"Bearer {self.admin}"}, timeout=30).text
        match = re.search(rf'^{name}(?:_total)?{{job="{job}"}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else None


class Shop:
    """The merchant, product and webhook endpoint made over the API."""

    def __init__(self, server: Server, sink_port: int) -> None:
        admin = {"Authorization": f"Bearer {server.admin}"}
        merchant = _ok(httpx.post(f"{server.base}/v1/merchants", headers=admin, json={"name": "Growth Studio", "mode": "test"}))
        self.merchant_id, self.key = merchant["id"], merchant["secret_key"]
        self.headers = {"Authorization": f"Bearer {self.key}"}
        api = httpx.Client(base_url=server.base, headers=self.headers, timeout=30)
        self.product_id = _ok(api.post("/v1/products", json={"sku": "sword", "name": "Sword", "category": "item",
                                                             "prices": {"USD": 499, "EUR": 459}}))["id"]
        self.endpoint_id = _ok(api.post("/v1/webhook_endpoints", json={"url": f"http://127.0.0.1:{sink_port}/hook",
                                                                       "events": ["*"]}))["id"]
        self.callback_secret = _ok(api.get("/v1/account"))["sandbox_webhook_secret"]
        api.close()


def _ok(response: httpx.Response) -> dict:
    if response.status_code not in (200, 201):
        raise SystemExit(f"growth: {response.request.method} {response.request.url} answered {response.status_code}: "
                         f"{response.text[:500]}")
    return response.json()


def callback_request(shop: Shop, order: dict) -> tuple[bytes, dict]:
    payment = order["payment"]
    now_s = int(time.time())
    body = build_event(event_id=new_id("evt"), kind=CallbackKind.PAYMENT_SUCCEEDED, created_s=now_s,
                       payment_id=payment["id"], amount=order["amount"], currency=order["currency"],
                       provider_ref=payment["next_action"]["url"].rsplit("/", 1)[1], failure_code=None)
    header = sign_callback(secret=shop.callback_secret, body=body, now_s=now_s)
    return body, {SIGNATURE_HEADER: header, "Content-Type": "application/json"}


def template_purchase(server: Server, shop: Shop) -> str:
    """One purchase over the API, its webhooks delivered: the order id whose rows the fill copies."""
    with httpx.Client(base_url=server.base, headers=shop.headers, timeout=30) as api:
        order = _ok(api.post("/v1/orders", headers={"Idempotency-Key": "growth-template"}, json={
            "player_id": TEMPLATE_PLAYER, "items": [{"product_id": shop.product_id, "quantity": 1}], "currency": "USD"}))
        body, headers = callback_request(shop, order)
        _ok(api.post(f"/v1/channels/sandbox/webhook/{shop.merchant_id}", content=body, headers=headers))
        for _ in range(100):
            deliveries = _ok(api.get("/v1/webhook_deliveries"))["data"]
            if len(deliveries) >= 2 and all(d["status"] == "succeeded" for d in deliveries):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"growth: the template's webhooks were not delivered: {deliveries}")
        if _ok(api.get(f"/v1/orders/{order['id']}"))["status"] != "fulfilled":
            raise SystemExit("growth: the template order is not fulfilled")
    return order["id"]


# -- the template: one purchase's rows, with its ids and times as markers -------------------------
_TEMPLATE_QUERIES = {
    "orders": "SELECT * FROM orders WHERE id = :o",
    "payments": "SELECT * FROM payments WHERE order_id = :o",
    "order_items": "SELECT * FROM order_items WHERE order_id = :o",
    "order_events": "SELECT * FROM order_events WHERE order_id = :o ORDER BY id",
    "payment_refs": "SELECT * FROM payment_refs WHERE payment_id = :p",
    "payment_attempts": "SELECT * FROM payment_attempts WHERE payment_id = :p ORDER BY seq",
    "provider_events": "SELECT * FROM provider_events WHERE payment_id = :p",
    "risk_order_facts": "SELECT * FROM risk_order_facts WHERE order_id = :o",
    "risk_decisions": "SELECT * FROM risk_decisions WHERE order_id = :o ORDER BY seq",
    "audit_log": "SELECT * FROM audit_log WHERE object_id = :o",
    "ledger_transactions": "SELECT * FROM ledger_transactions WHERE reference = :p ORDER BY id",
    "ledger_entries": "SELECT * FROM ledger_entries WHERE transaction_id IN"
                      " (SELECT id FROM ledger_transactions WHERE reference = :p) ORDER BY seq",
    "webhook_events": "SELECT * FROM webhook_events WHERE instr(CAST(payload AS TEXT), :o) > 0 ORDER BY id",
    "webhook_deliveries": "SELECT * FROM webhook_deliveries WHERE event_id IN (SELECT id FROM webhook_events"
                          " WHERE instr(CAST(payload AS TEXT), :o) > 0) ORDER BY id",
}
_ID_RE = re.compile(r"^([a-z]{2,3})_[0-9a-z]{26}$")
_TOKEN_RE = re.compile(r"^(sbx_)?([0-9a-z]{26})([A-Za-z0-9_-]{22})$")


class Template:
    """Each table's rows as compiled cells: a constant, a time (offset from the order's creation),
    a sequence (NULL: SQLite numbers it), or text split at the markers (ids, tokens, times) that
    change per order."""

    def __init__(self, conn: sqlite3.Connection, order_id: str, *, fixed_ids: set[str]) -> None:
        self.fixed_ids = fixed_ids  # the merchant's, product's and endpoint's: the same in every copy
        conn.row_factory = sqlite3.Row
        payment_id = conn.execute("SELECT payment_id FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
        self.rows = {table: [dict(r) for r in conn.execute(sql, {"o": order_id, "p": payment_id})]
                     for table, sql in _TEMPLATE_QUERIES.items()}
        missing = [table for table, rows in self.rows.items() if not rows]
        assert not missing, f"the template purchase wrote no rows in {missing}"
        order = self.rows["orders"][0]
        self.created_ms = order["created_at_ms"]
        self.markers = self._markers(order)
        self.pattern = re.compile("|".join(re.escape(m) for m in sorted(self.markers, key=len, reverse=True)))
        self.compiled = {table: [self._compile_row(row) for row in rows] for table, rows in self.rows.items()}
        self.columns = {table: list(rows[0]) for table, rows in self.rows.items()}

    def _markers(self, order: dict) -> dict[str, tuple]:
        """Marker text -> how to make its value for a new order."""
        markers: dict[str, tuple] = {TEMPLATE_PLAYER: ("player",)}
        for rows in self.rows.values():
            for row in rows:
                for value in row.values():
                    if value in self.fixed_ids:
                        continue
                    if isinstance(value, str) and (match := _ID_RE.match(value)):
                        markers[value] = ("id", match.group(1), id_ms(value) - self.created_ms)
                    elif isinstance(value, str) and (match := _TOKEN_RE.match(value)):
                        markers[value] = ("token", match.group(1) or "", id_ms(match.group(2)) - self.created_ms)
        for ms in {order["created_at_ms"], order["expires_at_ms"]}:
            markers[format_rfc3339(ms)] = ("rfc3339", ms - self.created_ms)
        for event in self.rows["webhook_events"]:
            created_s = json.loads(event["payload"])["created"]
            markers[f'"created":{created_s}'] = ("created_s", created_s * 1000 - self.created_ms)
        return markers

    def _compile_row(self, row: dict) -> list[tuple]:
        cells = []
        for column, value in row.items():
            if column == "seq":
                cells.append(("seq",))
            elif isinstance(value, int) and abs(value - self.created_ms) < 2 * DAY_MS:
                cells.append(("time", value - self.created_ms))
            elif isinstance(value, (str, bytes)):
                text = value.decode() if isinstance(value, bytes) else value
                pieces, last = [], 0
                for match in self.pattern.finditer(text):
                    pieces += [text[last:match.start()], match.group(0)]
                    last = match.end()
                pieces.append(text[last:])
                cells.append(("text", pieces, isinstance(value, bytes)))
            else:
                cells.append(("const", value))
        return cells

    def values_for(self, created_ms: int, player: str, rng: random.Random) -> dict[str, str]:
        values = {}
        for marker, how in self.markers.items():
            if how[0] == "player":
                values[marker] = player
            elif how[0] == "id":
                values[marker] = f"{how[1]}_{id_body_at(created_ms + how[2], rng)}"
            elif how[0] == "token":
                values[marker] = how[1] + id_body_at(created_ms + how[2], rng) + secrets.token_urlsafe(16)
            elif how[0] == "rfc3339":
                values[marker] = format_rfc3339(created_ms + how[1])
            else:
                values[marker] = f'"created":{(created_ms + how[1]) // 1000}'
        return values

    def render(self, table: str, created_ms: int, values: dict[str, str]) -> list[tuple]:
        out = []
        for cells in self.compiled[table]:
            row = []
            for cell in cells:
                kind = cell[0]
                if kind == "const":
                    row.append(cell[1])
                elif kind == "time":
                    row.append(created_ms + cell[1])
                elif kind == "seq":
                    row.append(None)
                else:
                    pieces = cell[1]
                    pieces_out = pieces[:]
                    pieces_out[1::2] = [values[p] for p in pieces[1::2]]
                    text = "".join(pieces_out)
                    row.append(text.encode() if cell[2] else text)
            out.append(tuple(row))
        return out


# -- the bulk fill -------------------------------------------------------------------------------
def order_times(count: int, *, share: float, days: int, rng: random.Random) -> list[int]:
    """Creation times, ascending: `share` of them in yesterday (UTC), the rest over the `days` days
    before yesterday; none today."""
    today_ms = int(time.time() * 1000) // DAY_MS * DAY_MS
    yesterday_ms = today_ms - DAY_MS
    first_ms = yesterday_ms - days * DAY_MS
    return sorted(yesterday_ms + rng.randrange(DAY_MS) if rng.random() < share else first_ms + rng.randrange(days * DAY_MS)
                  for _ in range(count))


def fill(db_path: Path, template: Template, *, count: int, share: float, days: int, rng: random.Random,
         merchant_id: str, product_id: str) -> float:
    """Add `count` orders; returns the seconds taken."""
    started = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -262144")
    times = order_times(count, share=share, days=days, rng=rng)
    inserts = {table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
               for table, cols in template.columns.items()}
    for start in range(0, count, FILL_CHUNK):
        chunk = times[start:start + FILL_CHUNK]
        rows: dict[str, list[tuple]] = {table: [] for table in template.columns}
        players: dict[str, list[int]] = {}
        for created_ms in chunk:
            player = f"player-{rng.randrange(PLAYERS):06d}"
            values = template.values_for(created_ms, player, rng)
            for table in rows:
                rows[table] += template.render(table, created_ms, values)
            players.setdefault(player, []).append(created_ms)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("PRAGMA defer_foreign_keys = ON")  # orders and payments name each other
        for table, table_rows in rows.items():
            conn.executemany(inserts[table], table_rows)
        add_running_sums(conn, template, merchant_id=merchant_id, product_id=product_id, orders=len(chunk), players=players)
        conn.execute("COMMIT")
        print(f"  filled {start + len(chunk):,} / {count:,} orders", end="\r", flush=True)
    reset_derived(conn, merchant_id=merchant_id, first_ms=times[0] if times else None)
    conn.close()
    print()
    return time.perf_counter() - started


def add_running_sums(conn: sqlite3.Connection, template: Template, *, merchant_id: str, product_id: str, orders: int,
                     players: dict[str, list[int]]) -> None:
    """What the server keeps summed as it goes: account balances, units sold, inventories, and each
    player's first sighting by the risk engine."""
    for entry in template.rows["ledger_entries"]:
        cursor = conn.execute("UPDATE ledger_balances SET debits = debits + ?, credits = credits + ? WHERE account = ?"
                              " AND currency = ?", (entry["debit"] * orders, entry["credit"] * orders, entry["account"],
                                                    entry["currency"]))
        assert cursor.rowcount == 1, entry["account"]
    quantity = template.rows["order_items"][0]["quantity"]
    sku = template.rows["order_items"][0]["sku"]
    conn.execute("UPDATE products SET sold = sold + ? WHERE id = ?", (orders * quantity, product_id))
    conn.executemany(
        "INSERT INTO inventory_items (merchant_id, player_id, sku, quantity, updated_at_ms) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET quantity = quantity + excluded.quantity,"
        " updated_at_ms = max(updated_at_ms, excluded.updated_at_ms)",
        [(merchant_id, p, sku, len(t) * quantity, max(t)) for p, t in players.items()])
    conn.executemany(
        "INSERT INTO risk_players (merchant_id, player_id, first_seen_ms) VALUES (?, ?, ?)"
        " ON CONFLICT DO UPDATE SET first_seen_ms = min(first_seen_ms, excluded.first_seen_ms)",
        [(merchant_id, p, min(t)) for p, t in players.items()])


def reset_derived(conn: sqlite3.Connection, *, merchant_id: str, first_ms: int | None) -> None:
    """The merchant existed before its first order; batches and reports of an earlier stage are made
    again (they are derived from the ledger, which the fill just changed); the manual settlement
    markers stand at yesterday 00:00, as if a run then had settled everything before."""
    yesterday_ms = int(time.time() * 1000) // DAY_MS * DAY_MS - DAY_MS
    conn.execute("BEGIN IMMEDIATE")
    if first_ms is not None:
        began_ms = first_ms - 3_600_000
        for table, column in (("merchants", "id"), ("products", "merchant_id"), ("ledger_accounts", "merchant_id"),
                              ("webhook_endpoints", "merchant_id"), ("api_keys", "merchant_id")):
            conn.execute(f"UPDATE {table} SET created_at_ms = min(created_at_ms, ?) WHERE {column} = ?", (began_ms, merchant_id))
    conn.execute("DELETE FROM settlement_lines WHERE settlement_id IN (SELECT id FROM settlements WHERE merchant_id = ?)",
                 (merchant_id,))
    conn.execute("DELETE FROM settlements WHERE merchant_id = ?", (merchant_id,))
    conn.execute("DELETE FROM reports WHERE merchant_id = ?", (merchant_id,))
    conn.execute(
        "INSERT INTO settlement_schedules (merchant_id, cycle, weekday, t_plus_days, cutoff_time, timezone, minimum_payout,"
        " reserve_bps, reserve_hold_days, last_cutoff_at_ms, settled_through_ms, updated_at_ms)"
        " VALUES (?, 'manual', NULL, 0, '00:00', 'UTC', '{}', 0, 0, ?, ?, ?)"
        " ON CONFLICT (merchant_id) DO UPDATE SET last_cutoff_at_ms = excluded.last_cutoff_at_ms,"
        " settled_through_ms = excluded.settled_through_ms, settling_cutoff_at_ms = NULL, settling_after_ms = NULL,"
        " settling_after_id = NULL",
        (merchant_id, yesterday_ms, yesterday_ms, yesterday_ms))
    conn.execute("COMMIT")


async def _in_process(db_path: Path, work) -> object:
    db = Database(str(db_path), read_connections_max=2)
    await db.start()
    try:
        return await work(db)
    finally:
        await db.close()


def ledger_check(db_path: Path) -> tuple[bool, str, float]:
    """The `apss ledger check` code on the filled database: (ok, what it says, seconds)."""
    started = time.perf_counter()
    result = asyncio.run(_in_process(db_path, lambda db: Ledger(db=db, clock=None, config=FinanceConfig()).check()))
    text = f"{result.transactions:,} transactions, {result.entries:,} entries"
    return result.ok, text if result.ok else f"{text}: {result.problem}", time.perf_counter() - started


def daily_report(db_path: Path, merchant_id: str) -> float:
    """Seconds to make yesterday's daily report (Reports.generate, as the report job calls it)."""
    yesterday_ms = int(time.time() * 1000) // DAY_MS * DAY_MS - DAY_MS

    async def work(db: Database) -> float:
        clock = SystemClock()
        reports = Reports(db=db, clock=clock, ledger=Ledger(db=db, clock=clock, config=FinanceConfig()))
        started = time.perf_counter()
        _, created = await reports.generate(merchant_id=merchant_id, period="daily", start_ms=yesterday_ms)
        assert created, "yesterday's report existed already"
        return time.perf_counter() - started

    return asyncio.run(_in_process(db_path, work))


# -- measurements over HTTP ----------------------------------------------------------------------
def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _drive(requests: list, concurrency: int, send) -> tuple[float, list[float], list]:
    """Send every request, `concurrency` at once: (req/s, latencies, answers)."""
    queue = list(enumerate(requests))
    latencies: list[float] = []
    answers: list = [None] * len(requests)

    async def worker() -> None:
        while queue:
            index, request = queue.pop()
            started = time.perf_counter()
            answers[index] = await send(request)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - started), latencies, answers


async def orders_and_callbacks(server: Server, shop: Shop, *, count: int, concurrency: int, tag: str) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base, headers=shop.headers, limits=limits, timeout=60) as client:
        async def create(i: int) -> dict:
            answer = await client.post("/v1/orders", headers={"Idempotency-Key": f"growth-{tag}-{i}"}, json={
                "player_id": f"http-player-{i % 5000}", "items": [{"product_id": shop.product_id, "quantity": 1}],
                "currency": "USD"})
            return answer.json() if answer.status_code == 201 else {"error": answer.status_code}

        create_rate, create_lat, created = await _drive(list(range(count)), concurrency, create)
        orders = [o for o in created if "id" in o]

        async def callback(order: dict) -> int:
            body, headers = callback_request(shop, order)
            return (await client.post(f"/v1/channels/sandbox/webhook/{shop.merchant_id}", content=body,
                                      headers=headers)).status_code

        callback_rate, callback_lat, statuses = await _drive(orders, concurrency, callback)
        await webhooks_sent(client)
    return {"create": (create_rate, percentile(create_lat, 0.5), percentile(create_lat, 0.99), count - len(orders)),
            "callback": (callback_rate, percentile(callback_lat, 0.5), percentile(callback_lat, 0.99),
                         sum(s != 200 for s in statuses)),
            "order_id": orders[-1]["id"], "player_id": orders[-1]["player_id"]}


async def webhooks_sent(client: httpx.AsyncClient) -> None:
    """Wait until the webhooks of the orders just paid are delivered, so that the reads measured
    next do not share the server with the webhook sender."""
    for _ in range(600):
        answer = await client.get("/v1/webhook_deliveries", params={"status": "pending", "limit": 1})
        if not answer.json()["data"]:
            return
        await asyncio.sleep(0.5)
    raise SystemExit("growth: webhooks still pending after 300 s")


def admin_client(server: Server) -> httpx.Client:
    client = httpx.Client(base_url=server.base, follow_redirects=True, timeout=120)
    page = client.get("/admin/login")
    csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
    logged = client.post("/admin/login", data={"csrf": csrf, "token": server.admin})
    assert "/admin/logout" in logged.text, logged.text[:300]
    return client


def read_paths(shop: Shop, *, order_id: str, player_id: str) -> list[tuple[str, str, str]]:
    """(who, label, path) of the list endpoints, the overview and the report reads."""
    today_ms = int(time.time() * 1000) // DAY_MS * DAY_MS
    now = format_rfc3339(int(time.time() * 1000))
    day = f"from={format_rfc3339(today_ms - DAY_MS)}&to={format_rfc3339(today_ms)}"
    fortnight = f"from={format_rfc3339(today_ms - 14 * DAY_MS)}&to={now}"
    m = f"merchant={shop.merchant_id}"
    paths = [
        ("api", "/v1/orders?limit=100"), ("api", "/v1/orders?limit=100&status=fulfilled"),
        ("api", "/v1/orders?limit=100&status=pending"), ("api", "/v1/orders?limit=100&status=refunded"),
        ("api", f"/v1/orders?limit=100&player_id={player_id}"), ("api", f"/v1/orders/{order_id}/events"),
        ("api", f"/v1/orders/{order_id}/refunds"), ("api", "/v1/deliveries?limit=100"),
        ("api", "/v1/webhook_deliveries?limit=100"), ("api", "/v1/webhook_deliveries?limit=100&status=failed"),
        ("api", f"/v1/webhook_endpoints/{shop.endpoint_id}/deliveries?limit=100"),
        ("api", "/v1/ledger/balances"), ("api", "/v1/settlements?limit=100"), ("api", "/v1/alerts?limit=100"),
        ("api", "/v1/disputes?limit=100"), ("api", "/v1/reports?limit=100"),
        ("admin", f"/admin?{m}"), ("admin", f"/admin/live.json?{m}"), ("admin", f"/admin/orders?{m}"),
        ("admin", f"/admin/reports?{m}"), ("admin", f"/admin/settlements?{m}"), ("admin", f"/admin/webhooks?{m}"),
    ]
    labelled = [(who, _label(path), path) for who, path in paths]
    return labelled + [("api", "/v1/reports/summary (yesterday)", f"/v1/reports/summary?{day}"),
                       ("api", "/v1/reports/summary (14 days to now)", f"/v1/reports/summary?{fortnight}")]


def _label(path: str) -> str:
    """The path with ids as {ord} / {we}, and the status or player filter kept."""
    base, _, query = path.partition("?")
    base = re.sub(r"/(ord|we)_[0-9a-z]{26}", r"/{\1}", base)
    kept = [p for p in query.split("&") if p.startswith(("status=", "player_id="))]
    return f"{base}?{kept[0].split('=')[0]}={kept[0].split('=')[1][:12]}" if kept else base


def read_latencies(server: Server, shop: Shop, paths: list[tuple[str, str, str]], repeat: int = 5) -> dict[str, float]:
    """Median ms of `repeat` GETs of each path (each answer must be 200)."""
    api = httpx.Client(base_url=server.base, headers=shop.headers, timeout=120)
    admin = admin_client(server)
    out = {}
    for who, label, path in paths:
        client = api if who == "api" else admin
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            answer = client.get(path)
            samples.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"growth: GET {path} answered {answer.status_code}: {answer.text[:300]}")
        out[label] = statistics.median(samples) * 1000
    api.close()
    admin.close()
    return out


def settle(server: Server, shop: Shop, *, expected_payments: int) -> tuple[float, int, int]:
    """POST /v1/settlements/run (manual cycle): (seconds, lines of payments settled, batches)."""
    started = time.perf_counter()
    answer = httpx.post(f"{server.base}/v1/settlements/run", headers={**shop.headers, "Idempotency-Key": secrets.token_hex(8)},
                        timeout=3600)
    seconds = time.perf_counter() - started
    batches = _ok(answer)["data"]
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    lines = conn.execute("SELECT count(*) FROM settlement_lines WHERE kind = 'payment' AND settlement_id IN"
                         f" ({', '.join('?' * len(batches))})", [b["id"] for b in batches]).fetchone()[0] if batches else 0
    conn.close()
    if lines != expected_payments:
        raise SystemExit(f"growth: the settlement run settled {lines} payments, expected {expected_payments}")
    return seconds, lines, len(batches)


def payments_since(db_path: Path, since_ms: int) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM ledger_transactions WHERE kind = 'payment_captured'"
                            " AND created_at_ms >= ?", (since_ms,)).fetchone()[0]
    finally:
        conn.close()


def wait_report_job(server: Server) -> float | None:
    """The report job's first run (at start) catches up on the stage's days: its duration, s."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if (server.job_metric("apss_job_runs", "reports") or 0) >= 1:
            return server.job_metric("apss_job_last_duration_seconds", "reports")
        time.sleep(1)
    return None


# -- the stages ----------------------------------------------------------------------------------
def measure(server: Server, shop: Shop, args: argparse.Namespace, *, stage: str, with_money: bool) -> dict:
    result: dict = {"stage": stage}
    if with_money:
        result["report_s"] = daily_report(server.db_path, shop.merchant_id)
    server.start()
    try:
        result["report_job_s"] = wait_report_job(server) if with_money else None
        result["rss_start"] = server.memory_mb()[0]
        rates = asyncio.run(orders_and_callbacks(server, shop, count=args.http_orders, concurrency=args.concurrency, tag=stage))
        result.update(rates)
        result["reads"] = read_latencies(server, shop, read_paths(shop, order_id=rates["order_id"], player_id=rates["player_id"]))
        if with_money:
            yesterday_ms = int(time.time() * 1000) // DAY_MS * DAY_MS - DAY_MS
            expected = payments_since(server.db_path, yesterday_ms)
            result["settle"] = settle(server, shop, expected_payments=expected)
        result["rss"], result["hwm"] = server.memory_mb()
    finally:
        server.stop()
    result["orders"] = count_orders(server.db_path)
    result["db_gb"] = sum(f.stat().st_size for f in server.directory.glob("apss.sqlite*")) / 1e9
    return result


def count_orders(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    finally:
        conn.close()


def print_table(results: list[dict]) -> None:
    base = results[0]
    heads = [f"{r['orders']:,} orders" for r in results]
    print(f"\n{'':52}" + "".join(f"{h:>20}" for h in heads) + f"{'last/first':>12}")

    def row(label: str, values: list, fmt: str, ratio: bool = True) -> None:
        cells = "".join(f"{format(v, fmt) if v is not None else '-':>20}" for v in values)
        tail = f"{values[-1] / values[0]:>12.0%}" if ratio and values[0] and values[-1] is not None else ""
        print(f"{label:52}{cells}{tail}")

    row("POST /v1/orders req/s", [r["create"][0] for r in results], ",.0f")
    row("  p50 / p99 ms", [f"{r['create'][1]:.1f} / {r['create'][2]:.1f}" for r in results], "", ratio=False)
    row("  errors", [r["create"][3] for r in results], "d", ratio=False)
    row("callbacks req/s", [r["callback"][0] for r in results], ",.0f")
    row("  p50 / p99 ms", [f"{r['callback'][1]:.1f} / {r['callback'][2]:.1f}" for r in results], "", ratio=False)
    row("  errors", [r["callback"][3] for r in results], "d", ratio=False)
    row("server RSS after start, MB", [r["rss_start"] for r in results], ".0f", ratio=False)
    row("server RSS at the end / peak, MB", [f"{r['rss']:.0f} / {r['hwm']:.0f}" for r in results], "", ratio=False)
    for path in base["reads"]:
        row(f"GET {path} ms", [r["reads"].get(path) for r in results], ".1f", ratio=False)
    row("daily report of yesterday, s", [r.get("report_s") for r in results], ".2f", ratio=False)
    row("report job catch-up at start, s", [r.get("report_job_s") for r in results], ".1f", ratio=False)
    row("settlement run over yesterday, s", [r["settle"][0] if "settle" in r else None for r in results], ".2f", ratio=False)
    row("  payments settled", [r["settle"][1] if "settle" in r else None for r in results], ",d", ratio=False)
    row("  payments settled per s", [r["settle"][1] / r["settle"][0] if "settle" in r else None for r in results],
        ",.0f", ratio=False)
    row("database files, GB", [r["db_gb"] for r in results], ".2f", ratio=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders at the last stage")
    parser.add_argument("--middle", type=int, default=100_000, help="orders at the middle stage")
    parser.add_argument("--yesterday-share", type=float, default=0.5, help="share of the filled orders made yesterday")
    parser.add_argument("--days", type=int, default=13, help="days before yesterday the rest is spread over")
    parser.add_argument("--http-orders", type=int, default=2000, help="orders (and callbacks) over HTTP per stage")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dir", default="", help="keep the database in this folder (default: a temp folder, removed)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    assert 0 < args.middle < args.orders and 0 <= args.yesterday_share <= 1
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="apss-bench-growth-"))
    directory.mkdir(parents=True, exist_ok=True)
    server = Server(directory)
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    rng = random.Random(args.seed)
    print(f"growth bench: {args.orders:,} orders ({args.yesterday_share:.0%} yesterday, the rest over {args.days} days "
          f"before), {args.http_orders} HTTP orders and callbacks per stage at concurrency {args.concurrency} (httpx), "
          f"{os.cpu_count()} CPUs shared with the driver, in {directory}", flush=True)
    try:
        apply_migrations(str(server.db_path))
        server.start()
        try:
            shop = Shop(server, sink_port)
            template_id = template_purchase(server, shop)
        finally:
            server.stop()
        conn = sqlite3.connect(server.db_path)
        template = Template(conn, template_id, fixed_ids={shop.merchant_id, shop.product_id, shop.endpoint_id})
        conn.close()
        results = [measure(server, shop, args, stage="empty", with_money=False)]
        for target in (args.middle, args.orders):
            count = target - count_orders(server.db_path)
            seconds = fill(server.db_path, template, count=count, share=args.yesterday_share, days=args.days, rng=rng,
                           merchant_id=shop.merchant_id, product_id=shop.product_id)
            ok, text, check_s = ledger_check(server.db_path)
            print(f"fill: +{count:,} orders in {seconds:.0f} s ({count / seconds:,.0f} orders/s); ledger check "
                  f"({check_s:.1f} s): {'ok' if ok else 'FAILED'}, {text}", flush=True)
            if not ok:
                raise SystemExit(1)
            results.append(measure(server, shop, args, stage=str(target), with_money=True))
        print_table(results)
        last, first = results[-1], results[0]
        print(f"\norder creation at {last['orders']:,} orders: {last['create'][0] / first['create'][0]:.0%} of the empty "
              f"database's rate; callbacks {last['callback'][0] / first['callback'][0]:.0%} (aim: 80% or more)")
    finally:
        server.stop()
        sink.terminate()
        sink.wait()
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
