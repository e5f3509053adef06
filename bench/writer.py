"""Benchmark: the order-creation write transaction through the single writer (group commit)
against bare sqlite3 loops doing exactly the same statements on the same disk: one on the
project's schema, one on a lean schema (the same tables and columns, no foreign keys, no CHECKs,
only the primary keys, idempotency's unique key among them).

    python bench/writer.py [TRANSACTIONS] [--tasks 64] [--per-commit 100] [--sync FULL,NORMAL] [--repeat 3] [--dir DIR]
                           [--costs] [--cost-transactions 2000] [--cost-repeat 5]

Prints figures only; asserts nothing about speed (it exits non-zero if a run wrote the wrong rows).
The transaction is the realistic 8-statement order creation of apss.services.orders.checkout
(reserve step), built from the real store functions:
  reads:  idempotency key lookup, product row
  writes: conditional stock UPDATE (reserve), order, order_items, payment, order_events,
          idempotency key (state 'running')
with the same Python work per transaction as checkout._reserve (ids, token, price decode).

`--costs` then measures what each foreign key, CHECK, UNIQUE, STRICT and secondary index of the
hot tables costs: the project-schema loop on a scratch copy of the schema without it, against the
unchanged copy run just before or after it (bench/schema_variants.py; the real schema is never
changed), in CPU time per transaction, which other work on a shared machine disturbs less than
wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import itertools
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from apss.ids import new_id, new_token  # noqa: E402
from apss.store import catalog, merchants, orders  # noqa: E402
from apss.store import idempotency as keys  # noqa: E402
from apss.store.db import Database, Tx, open_connection  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402
from bench.schema_variants import Item, Schema, items, lean, read_schema, without  # noqa: E402

MERCHANT_ID = "mch_bench"
PRODUCT_ID = "prd_bench"
STOCK = 10**12  # effectively unlimited, but still a conditional decrement (the realistic path)


def seed(path: str) -> None:
    apply_migrations(path)
    seed_rows(path, with_merchant=True)


def seed_copy(path: str, schema: Schema) -> None:
    """A fresh file holding `schema` (a scratch copy of the project's, or the lean one)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one commit for the whole schema, not one per statement
        for statement in schema.ddl():
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()
    seed_rows(path, with_merchant="merchants" in schema.tables)


def seed_rows(path: str, *, with_merchant: bool) -> None:
    conn = open_connection(path, synchronous="FULL", busy_timeout_ms=5000)
    now_ms = int(time.time() * 1000)
    conn.execute("BEGIN IMMEDIATE")
    if with_merchant:  # the lean schema has no merchants table (nor a foreign key to it)
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
        "payment_flow": None, "payer_openid": None,  # no mobile flow (channel_options)
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


def run_bare(path: str, total: int, per_commit: int, synchronous: str) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds): on a shared machine the CPU time is what the
    statements cost, whatever else runs (it leaves out the fsync waits, the same for every schema)."""
    conn = open_connection(path, synchronous=synchronous, busy_timeout_ms=5000)
    counter = itertools.count()
    start, start_cpu = time.perf_counter(), time.thread_time()
    done = 0
    while done < total:
        size = min(per_commit, total - done)
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(size):
            order_transaction(Tx(conn), next(counter))
        conn.execute("COMMIT")
        done += size
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
    conn.close()
    return elapsed, cpu


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


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def timed_bare(path: str, total: int, per_commit: int, synchronous: str) -> tuple[float, float]:
    """One bare-loop run on a seeded file, checked, then removed: (wall, CPU) seconds."""
    gc.collect()
    times = run_bare(path, total, per_commit, synchronous)
    check(path, total)
    remove_db(path)
    return times


def timed_writer(path: str, total: int, tasks: int, synchronous: str, loop_factory) -> tuple[float, float]:
    """One writer run on a seeded file, checked, then removed: (seconds, average batch)."""
    gc.collect()
    loop = loop_factory()
    try:
        elapsed, batches = loop.run_until_complete(run_writer(path, total, tasks, synchronous))
    finally:
        loop.close()
    check(path, total)
    remove_db(path)
    return elapsed, total / max(batches, 1)


def compare(directory: str, args: argparse.Namespace, synchronous: str, lean_schema: Schema, loop_factory) -> None:
    """The writer, the project-schema loop and the lean loop, interleaved; the best of each."""
    project_times, lean_times, writer_times, batch_sizes = [], [], [], []
    for attempt in range(args.repeat):  # interleaved; the best of each is the least disturbed
        project_times.append(timed_bare(fresh_db(directory, f"project-{synchronous}-{attempt}.sqlite"),
                                        args.transactions, args.per_commit, synchronous)[0])
        lean_path = os.path.join(directory, f"lean-{synchronous}-{attempt}.sqlite")
        seed_copy(lean_path, lean_schema)
        lean_times.append(timed_bare(lean_path, args.transactions, args.per_commit, synchronous)[0])
        writer_s, batch = timed_writer(fresh_db(directory, f"writer-{synchronous}-{attempt}.sqlite"),
                                       args.transactions, args.tasks, synchronous, loop_factory)
        writer_times.append(writer_s)
        batch_sizes.append(batch)

    def rates(times: list[float]) -> str:
        return "/".join(f"{args.transactions / t / 1000:.1f}k" for t in times)

    project_rate, lean_rate, writer_rate = (args.transactions / min(t) for t in (project_times, lean_times, writer_times))
    label = f"synchronous={synchronous:6}"
    print(f"{label} writer:       {writer_rate:9,.0f} tx/s  avg batch {sum(batch_sizes) / len(batch_sizes):5.1f} tx/commit  "
          f"(runs: {rates(writer_times)})", flush=True)
    print(f"{label} project loop: {project_rate:9,.0f} tx/s  {args.per_commit:5d} tx/commit            "
          f"(runs: {rates(project_times)})   writer/project = {writer_rate / project_rate:.0%}", flush=True)
    print(f"{label} lean loop:    {lean_rate:9,.0f} tx/s  {args.per_commit:5d} tx/commit            "
          f"(runs: {rates(lean_times)})   writer/lean = {writer_rate / lean_rate:.0%}   "
          f"project/lean = {project_rate / lean_rate:.0%}", flush=True)


def variants(schema: Schema) -> list[tuple[str, Schema]]:
    """The unchanged copy first (the reference), then each item removed alone, then by kind."""
    found = items(schema)
    chosen = [("(nothing: the project schema, copied)", schema)]
    chosen += [(f"{item.kind} {item.label}", without(schema, [item])) for item in found]

    def of(*kinds: str) -> list[Item]:
        return [item for item in found if item.kind in kinds]

    chosen += [("every FK of the hot tables", without(schema, of("FK"))),
               ("every CHECK of the hot tables", without(schema, of("CHECK"))),
               ("every UNIQUE and secondary index of the hot tables", without(schema, of("UNIQUE", "index"))),
               ("every STRICT of the hot tables", without(schema, of("STRICT"))),
               ("all of them but STRICT (the lean schema's constraints)", lean(schema))]
    return chosen


def cost_table(directory: str, args: argparse.Namespace, synchronous: str, schema: Schema) -> None:
    """What each constraint and index of the hot tables costs the project-schema loop, in CPU
    time per transaction: each variant runs in pairs with the unchanged copy, one just after the
    other (their order alternating), so that a slow spell of the machine hits both; the median of
    the pairs' differences counts, and their spread says how far to trust it."""
    chosen = variants(schema)
    total = args.cost_transactions

    def cpu_us(variant: Schema) -> float:
        path = os.path.join(directory, "cost.sqlite")
        seed_copy(path, variant)
        return timed_bare(path, total, args.per_commit, synchronous)[1] / total * 1e6

    references: list[float] = []
    rows = []
    for label, variant in chosen[1:]:
        saved = []
        for attempt in range(args.cost_repeat):
            if attempt % 2:
                removed, reference = cpu_us(variant), cpu_us(schema)
            else:
                reference, removed = cpu_us(schema), cpu_us(variant)
            references.append(reference)
            saved.append(reference - removed)
        rows.append((label, statistics.median(saved), min(saved), max(saved)))
    reference = statistics.median(references)
    print(f"\ncost of each constraint and index, synchronous={synchronous}: the project-schema loop on a scratch copy "
          f"without it against the unchanged copy, {args.cost_repeat} pairs of {total} tx each; the unchanged copy "
          f"takes {reference:.1f} us CPU/tx (median of its {len(references)} runs)\n")
    print("| removed | CPU saved, us/tx (median) | pairs' spread | share of the transaction |")
    print("|---|---|---|---|")
    for label, median, low, high in rows:
        print(f"| {label} | {median:+.1f} | {low:+.1f} .. {high:+.1f} | {median / reference:.0%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transactions", nargs="?", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=64, help="asyncio tasks feeding the writer")
    parser.add_argument("--per-commit", type=int, default=100, help="transactions per commit in the bare loops")
    parser.add_argument("--sync", default="FULL,NORMAL", help="synchronous settings to measure, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs each way; the best run counts")
    parser.add_argument("--dir", default=None, help="directory for the temp databases (default: system temp dir)")
    parser.add_argument("--costs", action="store_true",
                        help="then the cost of each constraint and index (first --sync setting; minutes)")
    parser.add_argument("--cost-transactions", type=int, default=2_000, help="transactions per --costs run")
    parser.add_argument("--cost-repeat", type=int, default=5, help="pairs (variant, unchanged copy) per --costs variant")
    args = parser.parse_args()
    try:
        import uvloop  # the server's loop (apss serve uses loop="uvloop")
        loop_factory = uvloop.new_event_loop
        loop_name = "uvloop"
    except ImportError:
        loop_factory, loop_name = asyncio.new_event_loop, "asyncio"

    directory = tempfile.mkdtemp(prefix="apss-bench-writer-", dir=args.dir)
    print(f"writer bench: {args.transactions} order transactions each way (8 statements each), writer fed by "
          f"{args.tasks} {loop_name} tasks, bare loops {args.per_commit} tx/commit, WAL, best of {args.repeat}, "
          f"db in {directory}", flush=True)
    try:
        schema = read_schema(fresh_db(directory, "schema.sqlite"))
        settings = [s.strip().upper() for s in args.sync.split(",") if s.strip()]
        for synchronous in settings:
            # warm-up (imports, statement caches, page cache) on a throwaway file, not measured
            timed_bare(fresh_db(directory, f"warm-{synchronous}.sqlite"), min(2000, args.transactions),
                       args.per_commit, synchronous)
            compare(directory, args, synchronous, lean(schema), loop_factory)
        if args.costs:
            cost_table(directory, args, settings[0], schema)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
