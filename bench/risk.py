"""Benchmark: the risk evaluator, and order creation over HTTP with and without a rule set.

    python bench/risk.py [--past-orders 1000000] [--orders 2000] [--http-orders 1500] [--concurrency 32]

1. The evaluator itself: a migrated temp database whose velocity counters hold `--past-orders`
   orders spread over the last 7 days (50,000 players, 20,000 IPs, 10,000 devices; the bucket
   rows such a history leaves, written directly), 50 rules reading those counters, lists and
   order attributes; then `RiskEngine.assess_order_tx` (attributes, counter reads, lists, the
   evaluation) for `--orders` orders on the writer's connection. Prints p50 / p99 / max per
   order, and the same with no merchant rules (the built-in lists only) as the baseline.
2. HTTP: the real server (`python run.py`, temp database, rate limit off), two merchants in the
   same run, one with the 50 rules and one with an empty rule set; `--http-orders` orders each
   with ip and device_id, `--concurrency` at once (httpx; the driver bounds the absolute rate,
   so compare the two lines, not with bench/http.py). Prints req/s and p50 / p99 of both.
Prints figures only; asserts nothing about speed.
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
import os  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

REPO = _BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from apss.clock import TestClock  # noqa: E402
from apss.crypto import Keyring, PersonalData  # noqa: E402
from apss.services.risk.engine import RiskEngine, RiskFacts  # noqa: E402
from apss.store.db import Tx  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402

PLAYERS, IPS, DEVICES = 50_000, 20_000, 10_000
WEEK_S = 7 * 86_400


def rules_50() -> list[tuple[str, str, bool]]:
    """50 rules over counters, lists and order attributes (most never match)."""
    out = []
    for i, window in enumerate(("1h", "1d", "7d")):
        out += [
            (f"orders_ip_{window}", f"block if orders_per_ip_{window} > {50 + i * 100}", True),
            (f"orders_dev_{window}", f"block if orders_per_device_{window} > {60 + i * 100}", True),
            (f"orders_player_{window}", f"review if orders_per_player_{window} > {40 + i * 100}", True),
            (f"amount_player_{window}", f"review if amount_per_player_{window} > {500_000 * (i + 1)}", True),
            (f"amount_ip_{window}", f"review if amount_per_ip_{window} > {900_000 * (i + 1)}", True),
            (f"declines_dev_{window}", f"block if declines_per_device_{window} >= {5 + i * 5}", True),
            (f"declines_ip_{window}", f"block if declines_per_ip_{window} >= {10 + i * 5}", True),
            (f"players_ip_{window}", f"review if players_per_ip_{window} >= {20 + i * 20}", True),
            (f"players_dev_{window}", f"review if players_per_device_{window} >= {5 + i * 5}", True),
            (f"cards_{window}", f"review if cards_per_player_{window} >= {4 + i * 2}", True),
            (f"refunds_{window}", f"review if refunds_per_player_{window} >= {3 + i}", True),
        ]
    out += [
        ("geo", "review if ip_country != billing_country and amount_usd > 50000", True),
        ("sanctioned", "block if ip_country in ['KP', 'IR', 'SY']", True),
        ("vip", "allow if player_id in @vip", True),
        ("watch", "review if device_id in @watch_devices", True),
        ("new_big", "review if player_account_age_days < 1 and amount > 20000", True),
        ("score", "require_3ds if risk_score >= 65", True),
        ("score_block", "block if risk_score >= 90", True),
        ("missing", "review if is_missing(ip) and amount > 100000", True),
        ("tiny", "review if amount < 50 and orders_per_device_1h > 3", True),
        ("mixed", "block if (orders_per_ip_1h > 20 or declines_per_ip_1h > 5) and not is_missing(device_id)", True),
        ("big_usd", "review if amount_usd >= 1000000", True),
        ("channel", "review if channel == 'paypal' and amount > 30000", True),
        ("disputes", "block if disputes_per_player_7d >= 2", True),
        ("cat", "review if product_categories in ['currency_pack'] and amount > 40000", True),
        ("email", "review if email_domain in ['mailinator.com', 'tempmail.dev']", True),
        ("many_cards", "block if cards_per_player_1d >= 6", True),
        ("burst", "block if orders_per_player_1h > 30", True),
    ]
    assert len(out) == 50, len(out)
    return out


def seed_counters(path: str, *, merchant_id: str, past_orders: int, now_s: int, hash_of) -> None:
    """The bucket rows `past_orders` orders over the last week leave (aggregated in memory)."""
    rng = random.Random(7)
    counters: dict[tuple, int] = {}
    distinct: set[tuple] = set()
    for _ in range(past_orders):
        at = now_s - rng.randrange(WEEK_S)
        player, ip, device = rng.randrange(PLAYERS), rng.randrange(IPS), rng.randrange(DEVICES)
        keys = {"player": hash_of(f"p:bench-{player}"), "ip": hash_of(f"i:10.{ip >> 8 & 255}.{ip & 255}.1"),
                "device": hash_of(f"d:dev-{device}")}
        amount = rng.choice((99, 499, 999, 4999))
        for grain in (60, 3600):
            bucket = at // grain
            for by, key in keys.items():
                for dim, value in ((f"orders:{by}", 1), (f"amount:{by}", amount)):
                    counters[(dim, key, grain, bucket)] = counters.get((dim, key, grain, bucket), 0) + value
            distinct.add(("players:ip", keys["ip"], grain, bucket, keys["player"]))
            distinct.add(("players:device", keys["device"], grain, bucket, keys["player"]))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO risk_counters VALUES (?, ?, ?, ?, ?, ?)",
                         [(merchant_id, d, k, g, b, v) for (d, k, g, b), v in counters.items()])
        conn.executemany("INSERT INTO risk_distinct VALUES (?, ?, ?, ?, ?, ?)",
                         [(merchant_id, d, k, g, b, m) for (d, k, g, b, m) in distinct])
    conn.close()
    print(f"seeded {past_orders:,} past orders: {len(counters):,} counter rows, {len(distinct):,} distinct rows")


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {p(0.50):.3f} ms, p99 {p(0.99):.3f} ms, max {ordered[-1] * 1000:.3f} ms"


def bench_evaluator(args: argparse.Namespace, directory: Path) -> None:
    path = str(directory / "risk.db")
    apply_migrations(path)
    clock = TestClock(1_800_000_000_000)
    engine = RiskEngine(db=None, clock=clock, keyring=Keyring({"k1": os.urandom(32)}, primary="k1"),
                        personal=PersonalData({"p1": os.urandom(32)}, primary="p1", pseudonym_key=os.urandom(32)),
                        fx_rate_age_max_s=86_400)
    engine._hash_key = os.urandom(32)  # what start() unseals; no Database in this bench
    merchant_id = "mch_bench"
    seed_counters(path, merchant_id=merchant_id, past_orders=args.past_orders, now_s=clock.now_ms() // 1000,
                  hash_of=engine.keyed_hash)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    tx = Tx(conn)
    rng = random.Random(11)
    lines = [{"product_id": "prd_bench", "sku": "gems", "category": "currency_pack"}]
    for label, rules in (("50 rules", rules_50()), ("no merchant rules (baseline)", [])):
        engine._rules[merchant_id] = engine.compile_rules(rules, merchant_currency="USD")
        samples = []
        for _ in range(args.orders):
            ip = rng.randrange(IPS)
            facts = RiskFacts(ip=f"10.{ip >> 8 & 255}.{ip & 255}.1", device_id=f"dev-{rng.randrange(DEVICES)}",
                              billing_country="US", email="someone@example.com")
            started = time.perf_counter()
            conn.execute("BEGIN")
            engine.assess_order_tx(tx, merchant_id=merchant_id, merchant_currency="USD",
                                   player_id=f"bench-{rng.randrange(PLAYERS)}", amount=rng.choice((99, 4999)),
                                   currency="USD", channel="sandbox", lines=lines, facts=facts)
            conn.execute("ROLLBACK")
            samples.append(time.perf_counter() - started)
        print(f"evaluator, {label}: {args.orders} orders, {percentiles(samples)}")
    conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _drive(client: httpx.AsyncClient, key: str, product: str, count: int, concurrency: int, tag: str) -> tuple[float, list[float], int]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        body = {"player_id": f"{tag}-{i % 500}", "currency": "USD", "items": [{"product_id": product, "quantity": 1}],
                "ip": f"10.0.{i % 200}.{i % 250 + 1}", "device_id": f"dev-{i % 300}", "billing_country": "US"}
        async with gate:
            started = time.perf_counter()
            response = await client.post("/v1/orders", json=body, headers={"Authorization": f"Bearer {key}",
                                                                            "Idempotency-Key": f"{tag}-{i}"})
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 201

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started), latencies, errors


def bench_http(args: argparse.Namespace, directory: Path) -> None:
    port, admin = _free_port(), f"adm_{secrets.token_hex(16)}"
    env = {**os.environ, "APSS_DATABASE_PATH": str(directory / "http.db"), "APSS_SERVER_PORT": str(port),
           "APSS_ADMIN_TOKEN": admin, "APSS_SEED_DEMO": "false", "APSS_SERVER_LOG_LEVEL": "warning",
           "APSS_API_REQUESTS_PER_S_MAX": "0"}
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)
        merchants = {}
        for label, rules in (("with 50 rules", rules_50()), ("empty rule set", [])):
            made = httpx.post(f"{base}/v1/merchants", json={"name": label, "mode": "test"},
                              headers={"Authorization": f"Bearer {admin}"}).json()
            key = made["secret_key"]
            auth = {"Authorization": f"Bearer {key}"}
            product = httpx.post(f"{base}/v1/products", headers=auth, json={
                "sku": "bench", "name": "Bench", "category": "item", "prices": {"USD": 499}}).json()["id"]
            put = httpx.put(f"{base}/v1/risk/rules", headers=auth,
                            json={"rules": [{"name": n, "rule": r} for n, r, _ in rules]})
            assert put.status_code == 200, put.text
            merchants[label] = (key, product)

        async def run() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=args.concurrency)) as client:
                for label, (key, product) in merchants.items():  # a warm-up round each, then the measured one
                    await _drive(client, key, product, 200, args.concurrency, f"warm-{label[:4]}")
                for label, (key, product) in merchants.items():
                    rate, latencies, errors = await _drive(client, key, product, args.http_orders, args.concurrency, label[:4])
                    print(f"HTTP POST /v1/orders, {label}: {rate:,.0f} req/s, {percentiles(latencies)}, {errors} non-201")

        asyncio.run(run())
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--past-orders", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--http-orders", type=int, default=1500)
    # The driver is httpx in one Python process: past a few connections it, not the server, sets
    # the rate on a small machine (bench/http.py drives the server with wrk for absolute figures).
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--only", choices=("evaluator", "http"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="apss-bench-risk-") as tmp:
        if args.only in (None, "evaluator"):
            bench_evaluator(args, Path(tmp))
        if args.only in (None, "http"):
            bench_http(args, Path(tmp))


if __name__ == "__main__":

    main()
