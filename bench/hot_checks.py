"""Benchmark: what the hot tables' CHECKs cost on SQLite, before and after migration 0032 (IN lists
spelled as OR terms), both schemas built in the same run from the shipped migrations.

    python bench/hot_checks.py [--rows 2000] [--repeat 7]

Each round writes, in one transaction, `--rows` times what an order and its callback write to the
four tables 0032 rebuilt: an order, its payment, a payment attempt and a risk decision (four
INSERTs), then the payment's and the order's status UPDATEs. It prints the CPU time (process time,
which other work on a shared machine disturbs less than wall time) per such group of six
statements, on the schema of migration 31 and on the newest, rounds alternating between them.
Prints figures only; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apss.store.migrate import MIGRATIONS_DIR, apply_migrations  # noqa: E402

_ids = itertools.count()


def _database(directory: Path, name: str, up_to: int | None) -> sqlite3.Connection:
    migrations = MIGRATIONS_DIR
    if up_to is not None:
        migrations = directory / f"migrations-{name}"
        migrations.mkdir()
        for path in MIGRATIONS_DIR.glob("00*.sql"):
            if int(path.name[:4]) <= up_to:
                shutil.copy(path, migrations / path.name)
    path = directory / f"{name}.sqlite"
    apply_migrations(str(path), migrations)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # CPU, not the disk
    return conn


def _round(conn: sqlite3.Connection, rows: int) -> float:
    """CPU microseconds per group of six statements."""
    started = time.process_time()
    conn.execute("BEGIN")
    for _ in range(rows):
        n = next(_ids)
        order, payment = f"ord_{n}", f"pay_{n}"
        conn.execute("INSERT INTO orders (id, merchant_id, player_id, status, amount, currency, channel, metadata,"
                     " checkout_token, expires_at_ms, created_at_ms, updated_at_ms) VALUES (?, 'mch', 'p', 'pending',"
                     " 499, 'USD', 'sandbox', '{}', ?, 0, 0, 0)", (order, f"tok_{n}"))
        conn.execute("INSERT INTO payments (id, order_id, merchant_id, channel, status, amount, currency, created_at_ms,"
                     " updated_at_ms) VALUES (?, ?, 'mch', 'sandbox', 'requires_action', 499, 'USD', 0, 0)",
                     (payment, order))
        conn.execute("INSERT INTO payment_attempts (payment_id, channel, operation, outcome, created_at_ms)"
                     " VALUES (?, 'sandbox', 'create_payment', 'succeeded', 0)", (payment,))
        conn.execute("INSERT INTO risk_decisions (order_id, merchant_id, stage, score, action, rules_fired, attributes,"
                     " created_at_ms) VALUES (?, 'mch', 'order', 5, 'allow', '[]', '{}', 0)", (order,))
        conn.execute("UPDATE payments SET status = 'succeeded' WHERE id = ?", (payment,))
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = ?", (order,))
    conn.execute("COMMIT")
    return (time.process_time() - started) / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="apss-bench-checks-"))
    try:
        schemas = {"migration 31 (IN lists)": _database(directory, "before", 31),
                   "newest (OR terms)": _database(directory, "newest", None)}
        timings: dict[str, list[float]] = {name: [] for name in schemas}
        for _ in range(args.repeat):
            for name, conn in schemas.items():
                timings[name].append(_round(conn, args.rows))
        print(f"hot CHECKs: {args.rows:,} groups (4 INSERTs + 2 UPDATEs) per round, {args.repeat} rounds alternating, "
              "CPU time per group", flush=True)
        for name, values in timings.items():
            print(f"{name:26} median {statistics.median(values):6.1f} us   rounds "
                  + " ".join(f"{v:.1f}" for v in values), flush=True)
        before, after = (statistics.median(v) for v in timings.values())
        print(f"newest/before = {after / before:.0%} of the CPU time", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
