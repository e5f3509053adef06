"""Benchmark: the order-creation write transaction through the single writer (group commit)
against a bare sqlite3 loop doing exactly the same statements on the same disk.

    python bench/writer.py [TRANSACTIONS] [--tasks 64] [--per-commit 100] [--sync FULL,NORMAL] [--repeat 3] [--dir DIR]

Prints figures only; asserts nothing about speed. The transaction is the realistic 8-statement
order creation of apss.services.orders.checkout (reserve step), built from the real store functions:
  reads:  idempotency key lookup, product row
  writes: conditional stock UPDATE (reserve), order, order_items, payment, order_events,
          idempotency key (state 'running')
with the same Python work per transaction as checkout._reserve (ids, token, price decode).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from apss.ids import new_token  # noqa: E402
from apss.ids import new_id  # noqa: E402
from apss.store import catalog, idempotency as keys, merchants, orders  # noqa: E402
from apss.store.db import Database, Tx, open_connection  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402

MERCHANT_ID = "mch_bench"
PRODUCT_ID = "prd_bench"
STOCK = 10**12  # effectively unlimited, but still a conditional decrement (the realistic path)


def seed(path: str) -> None:
    apply_migrations(path)
    conn = open_connection(path, synchronous="FULL", busy_timeout_ms=5000)
    now_ms = int(time.time() * 1000)
    conn.execute("BEGIN IMMEDIATE")
    merchant = {"merchant_id": MERCHANT_ID, "name": "Bench Studio", "mode": "test", "sandbox_secret_sealed": None,
                "now_ms": now_ms}
    if "currency" in inspect.signature(merchants.insert_merchant).parameters:  # the schema is still growing
        merchant["currency"] = "USD"
    merchants.insert_merchant(Tx(conn), **merchant)
    catalog.insert_product(Tx(conn), {
        "id": PRODUCT_ID, "merchant_id": MERCHANT_ID, "sku": "gem_pack", "name": "Gem pack", "category": "currency_pack",
        "prices": '{"USD":499,"EUR":459}', "stock": STOCK, "purchase_limit": None,
        "grants": '[{"type":"currency","currency":"GEM","amount":100}]', "active": 1, "created_at_ms": now_ms,
    })
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def order_transaction(tx: Tx, n: int) -> str:
    """One order creation: 2 reads + 6 writes, as checkout.create's reserve step does them."""
    idem_key = f"idem-{n}"
    assert keys.get_key_tx(tx, merchant_id=MERCHANT_ID, key=idem_key) is None
    product = catalog.get_product_tx(tx, merchant_id=MERCHANT_ID, product_id=PRODUCT_ID)
    assert product is not None and product["active"]
    unit_amount = msgspec.json.decode(product["prices"], type=dict[str, int])["USD"]
    assert product["stock"] is None or product["stock"] >= 1
    now_ms = time.time_ns() // 1_000_000
    order_id, payment_id = new_id("ord"), new_id("pay")
    assert catalog.reserve(tx, product_id=PRODUCT_ID, quantity=1)
    orders.insert_order(tx, {
        "id": order_id, "merchant_id": MERCHANT_ID, "player_id": f"player-{n}", "status": "pending",
        "amount": unit_amount, "currency": "USD", "channel": "sandbox", "merchant_order_ref": None,
        "metadata": "{}", "return_url": None, "checkout_token": new_token(), "payment_id": payment_id,
        "expires_at_ms": now_ms + 900_000, "created_at_ms": now_ms,
        "fx": None,  # priced in its own currency: no FX quote (ignored by a schema without orders.fx)
    })
    orders.insert_items(tx, [(order_id, 0, PRODUCT_ID, product["sku"], 1, unit_amount, unit_amount, product["grants"])])
    orders.insert_payment(tx, {"id": payment_id, "order_id": order_id, "merchant_id": MERCHANT_ID, "channel": "sandbox",
                               "status": "unknown", "amount": unit_amount, "currency": "USD", "created_at_ms": now_ms})
    orders.insert_event(tx, event_id=new_id("evt"), order_id=order_id, type="order.created", from_status=None,
                        to_status="pending", cause="api", now_ms=now_ms)
    keys.insert_key(tx, merchant_id=MERCHANT_ID, key=idem_key, request_hash="0" * 64, state="running", status=None,
                    body=None, resume=f"order:{order_id}", now_ms=now_ms)
    return order_id


def check(path: str, expected: int) -> None:
    conn = open_connection(path, synchronous="FULL", busy_timeout_ms=5000)
    try:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("orders", "order_items", "payments", "order_events", "idempotency_keys")]
        reserved = conn.execute("SELECT reserved FROM products WHERE id = ?", (PRODUCT_ID,)).fetchone()[0]
    finally:
        conn.close()
    if counts != [expected] * 5 or reserved != expected:
        raise SystemExit(f"bench: wrong row counts {counts}, reserved {reserved}; expected {expected} each")


def run_bare(path: str, total: int, per_commit: int, synchronous: str) -> float:
    conn = open_connection(path, synchronous=synchronous, busy_timeout_ms=5000)
    counter = itertools.count()
    start = time.perf_counter()
    done = 0
    while done < total:
        size = min(per_commit, total - done)
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(size):
            order_transaction(Tx(conn), next(counter))
        conn.execute("COMMIT")
        done += size
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def run_writer(path: str, total: int, tasks: int, synchronous: str) -> tuple[float, int]:
    db = Database(path, synchronous=synchronous)
    await db.start()
    counter = itertools.count()
    remaining = [total]

    async def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            n = next(counter)
            await db.write(lambda tx: order_transaction(tx, n))

    await db.ping()  # warm the writer thread and connection
    batches_before = db.batches_committed
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(tasks)))
    elapsed = time.perf_counter() - start
    batches = db.batches_committed - batches_before
    await db.close()
    return elapsed, batches


def fresh_db(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    seed(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transactions", nargs="?", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=64, help="asyncio tasks feeding the writer")
    parser.add_argument("--per-commit", type=int, default=100, help="transactions per commit in the bare loop")
    parser.add_argument("--sync", default="FULL,NORMAL", help="synchronous settings to measure, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs each way; the best run counts")
    parser.add_argument("--dir", default=None, help="directory for the temp databases (default: system temp dir)")
    args = parser.parse_args()
    try:
        import uvloop  # the server's loop (apss serve uses loop="uvloop")
        loop_factory = uvloop.new_event_loop
        loop_name = "uvloop"
    except ImportError:
        loop_factory, loop_name = asyncio.new_event_loop, "asyncio"

    directory = tempfile.mkdtemp(prefix="apss-bench-writer-", dir=args.dir)
    print(f"writer bench: {args.transactions} order transactions each way (8 statements each), writer fed by "
          f"{args.tasks} {loop_name} tasks, bare loop {args.per_commit} tx/commit, WAL, best of {args.repeat}, db in {directory}", flush=True)
    try:
        for synchronous in [s.strip().upper() for s in args.sync.split(",") if s.strip()]:
            # warm-up (imports, statement caches, page cache) on a throwaway file, not measured
            warm = fresh_db(directory, f"warm-{synchronous}.sqlite")
            run_bare(warm, min(2000, args.transactions), args.per_commit, synchronous)

            bare_times, writer_times, batch_sizes = [], [], []
            for attempt in range(args.repeat):  # interleaved; the best of each is the least disturbed
                bare_path = fresh_db(directory, f"bare-{synchronous}-{attempt}.sqlite")
                gc.collect()
                bare_times.append(run_bare(bare_path, args.transactions, args.per_commit, synchronous))
                check(bare_path, args.transactions)

                writer_path = fresh_db(directory, f"writer-{synchronous}-{attempt}.sqlite")
                gc.collect()
                loop = loop_factory()
                try:
                    writer_s, batches = loop.run_until_complete(
                        run_writer(writer_path, args.transactions, args.tasks, synchronous))
                finally:
                    loop.close()
                check(writer_path, args.transactions)
                writer_times.append(writer_s)
                batch_sizes.append(args.transactions / max(batches, 1))
                os.remove(bare_path), os.remove(writer_path)

            def rates(times: list[float]) -> str:
                return "/".join(f"{args.transactions / t / 1000:.1f}k" for t in times)

            bare_rate = args.transactions / min(bare_times)
            writer_rate = args.transactions / min(writer_times)
            print(f"synchronous={synchronous:6} writer: {writer_rate:9,.0f} tx/s  avg batch "
                  f"{sum(batch_sizes) / len(batch_sizes):5.1f} tx/commit   (runs: {rates(writer_times)})", flush=True)
            print(f"synchronous={synchronous:6} bare:   {bare_rate:9,.0f} tx/s  {args.per_commit:5d}     tx/commit   "
                  f"(runs: {rates(bare_times)})   writer/bare = {writer_rate / bare_rate:.0%}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
