"""Benchmark: `apss migrate-to-postgres`'s copy (store/pg_move.py) by COPY, against executemany
INSERTs of the same rows into another empty database of the same server, in the same run.

    python bench/pg_move.py [--rows 100000] [--batch-rows 50000] [--url postgresql://...]

The source is a SQLite database at the newest schema holding `--rows` ledger transactions (two
balanced entries each, with their balances), `--rows` wallet transactions and `--rows` stored
idempotent answers (a 300-byte BLOB each): 5 x rows rows in all, so the ledger check passes on the
copy. Each method copies it into a new database (migrated first, not timed) in one transaction,
counts and ledger check included, as the command does. Without --url a throwaway PostgreSQL server
is started (tests/postgres/server.py: fsync off, so the figures are the copy's, not the disk's).
Prints figures only; asserts nothing about speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]  # bench/http.py shadows `http`
sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

import psycopg  # noqa: E402

from apss.config import FinanceConfig  # noqa: E402
from apss.services.money.ledger import Ledger  # noqa: E402
from apss.store import pg_move  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402
from bench._harness import throwaway_postgres  # noqa: E402


def build_source(path: str, rows: int) -> None:
    apply_migrations(path)
    conn = sqlite3.connect(path)
    with conn:
        accounts = [("provider_clearing:bench", "asset"), ("merchant_payable:bench", "liability")]
        conn.executemany("INSERT INTO ledger_accounts (name, currency, type, created_at_ms) VALUES (?, 'USD', ?, 0)",
                         accounts)
        conn.executemany("INSERT INTO ledger_transactions (id, kind, reference, created_at_ms) VALUES (?, 'bench', ?, ?)",
                         ((f"ltx_{i:09d}", f"ref_{i}", i) for i in range(rows)))
        conn.executemany("INSERT INTO ledger_entries (transaction_id, account, currency, debit, credit)"
                         " VALUES (?, ?, 'USD', ?, ?)",
                         (entry for i in range(rows) for entry in (
                             (f"ltx_{i:09d}", accounts[0][0], 100, 0), (f"ltx_{i:09d}", accounts[1][0], 0, 100))))
        conn.executemany("INSERT INTO ledger_balances (account, currency, debits, credits) VALUES (?, 'USD', ?, ?)",
                         [(accounts[0][0], 100 * rows, 0), (accounts[1][0], 0, 100 * rows)])
        conn.executemany("INSERT INTO wallet_transactions (id, merchant_id, player_id, currency, amount, balance_after,"
                         " reason, created_at_ms) VALUES (?, 'mch_bench', ?, 'GEMS', 10, ?, 'bench', ?)",
                         ((f"wtx_{i:09d}", f"player-{i % 1000}", 10 * (i // 1000 + 1), i) for i in range(rows)))
        blob = os.urandom(300)
        conn.executemany("INSERT INTO idempotency_keys (merchant_id, key, request_hash, state, response_status,"
                         " response_body, created_at_ms) VALUES ('mch_bench', ?, 'h', 'done', 201, ?, ?)",
                         ((f"key-{i}", blob, i) for i in range(rows)))
    conn.close()


def ledger_check(reader: pg_move.TxReader) -> tuple[bool, str]:
    result = asyncio.run(Ledger(db=reader, clock=None, config=FinanceConfig()).check())
    return result.ok, result.problem or f"{result.transactions} transactions balance"


def new_database(server_url: str) -> str:
    name = f"apss_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=pg_move.BATCH_ROWS)
    parser.add_argument("--url", help="a PostgreSQL server's maintenance database (databases are created on it)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        server = None if args.url else stack.enter_context(throwaway_postgres())
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "source.sqlite")
            build_source(path, args.rows)
            print(f"source: {5 * args.rows} rows ({args.rows} ledger transactions with 2 entries each, "
                  f"{args.rows} wallet transactions, {args.rows} idempotent answers), batch {args.batch_rows} rows")
            figures = {}
            for method in ("insert", "copy"):  # the baseline first
                url = new_database(args.url or server.url())
                apply_migrations(url)
                moved = pg_move.copy(path, url, verify=ledger_check, batch_rows=args.batch_rows, method=method)
                figures[method] = moved.seconds
                print(f"{'executemany' if method == 'insert' else 'COPY':>11}: {moved.rows} rows in "
                      f"{moved.seconds:.2f} s = {moved.rows / moved.seconds:,.0f} rows/s ({moved.verified})")
            print(f"COPY takes {figures['copy'] / figures['insert']:.2f} x executemany's time")


if __name__ == "__main__":
    main()
