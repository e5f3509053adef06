"""The store's rules that hold on SQLite because one thread writes, exercised with real concurrency
on both backends: the same test on SQLite (the single writer) and on a real PostgreSQL server
(eight writer connections, SERIALIZABLE transactions retried on conflict). Each result is checked
with a raw query of its own, and the money tests end with the ledger check."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from apss.config import FinanceConfig
from apss.domain.ledger import Entry
from apss.errors import ApssError
from apss.services.idempotency import Idempotency, IdempotencyRequest, Outcome
from apss.services.money.ledger import Ledger
from apss.store import catalog, idempotency, players
from apss.store.db import Database
from apss.store.migrate import apply_migrations
from apss.store.pg_db import PgDatabase

pytestmark = pytest.mark.anyio
_ids = itertools.count()


class _Clock:
    def now_ms(self) -> int:
        return 1_700_000_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    if request.param == "sqlite":
        path = str(tmp_path / "contract.sqlite")
        apply_migrations(path)
        database: Database | PgDatabase = Database(path)
    else:
        url = request.getfixturevalue("pg_url")
        apply_migrations(url)
        database = PgDatabase(url, write_connections_max=8)
    await database.start()
    await database.write(lambda tx: tx.execute(
        "INSERT INTO merchants (id, name, mode, created_at_ms) VALUES ('mch_c', 'Contract', 'test', 0)"))
    yield database
    await database.close()


def _product(db, stock: int) -> str:
    product_id = f"prd_{next(_ids)}"

    def insert(tx):
        tx.execute("INSERT INTO products (id, merchant_id, sku, name, category, prices, stock, grants, active,"
                   " created_at_ms, updated_at_ms) VALUES (?, 'mch_c', ?, 'Gem', 'item', '{\"USD\": 100}', ?, '[]', 1, 0, 0)",
                   (product_id, product_id, stock))
    return product_id, insert


async def test_stock_never_goes_below_zero_under_concurrent_reservations(db):
    product_id, insert = _product(db, 50)
    await db.write(insert)
    results = await asyncio.gather(*(db.write(lambda tx: catalog.reserve(tx, product_id=product_id, quantity=1))
                                     for _ in range(200)))
    assert results.count(True) == 50 and results.count(False) == 150
    await asyncio.gather(*(db.write(lambda tx: catalog.take_reserved(tx, product_id=product_id, quantity=1))
                           for _ in range(50)))
    row = await db.fetch_one("SELECT stock, reserved, sold FROM products WHERE id = ?", (product_id,))
    assert (row["stock"], row["reserved"], row["sold"]) == (0, 0, 50)
    # Three units at once against two left: refused whole, never a partial or negative stock.
    other, insert = _product(db, 2)
    await db.write(insert)
    assert await db.write(lambda tx: catalog.reserve(tx, product_id=other, quantity=3)) is False
    assert (await db.fetch_one("SELECT stock FROM products WHERE id = ?", (other,)))["stock"] == 2


async def test_an_idempotency_key_begins_once(db):
    made: list[int] = []
    service = Idempotency(render_error=lambda error: Outcome(status=409, body=b"refused"), clock_now_ms=_Clock().now_ms)
    request = IdempotencyRequest(key="order-1", request_hash="h" * 64)

    def begin(n: int):
        def transaction(tx):
            def make(tx):
                tx.execute("INSERT INTO settings (name, value) VALUES (?, 'made')", (f"made:{n}",))
                return n
            return service.begin(tx, merchant_id="mch_c", request=request, fn=make, resume=lambda made: f"resume:{made}")
        return transaction

    results = await asyncio.gather(*(db.write(begin(n)) for n in range(40)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, ApssError)]
    assert errors == []
    first = [r for r in results if isinstance(r, int)]
    assert len(first) == 1, results  # one caller ran the request; every other one met the key
    made.extend(first)
    rows = await db.fetch_all("SELECT name FROM settings WHERE name LIKE 'made:%'")
    assert [r["name"] for r in rows] == [f"made:{made[0]}"]
    key = await db.fetch_one("SELECT state, resume FROM idempotency_keys WHERE merchant_id = 'mch_c' AND key = 'order-1'")
    assert (key["state"], key["resume"]) == ("running", f"resume:{made[0]}")
    # Finished once; a second finish is refused (a StoreBug assertion), the answer stays the first.
    await db.write(lambda tx: idempotency.finish_key(tx, merchant_id="mch_c", key="order-1", status=201, body=b"{}"))
    with pytest.raises(AssertionError):
        await db.write(lambda tx: idempotency.finish_key(tx, merchant_id="mch_c", key="order-1", status=500, body=b"x"))
    row = await db.fetch_one("SELECT response_status, response_body FROM idempotency_keys WHERE key = 'order-1'")
    assert (row["response_status"], bytes(row["response_body"])) == (201, b"{}")


async def test_a_wallet_debit_never_overdraws(db):
    def credit(tx):
        players.apply_wallet_change(tx, txn_id="wtx_credit", merchant_id="mch_c", player_id="p1", currency="GEM",
                                    amount=100, reason="grant", order_id=None, now_ms=0)
    await db.write(credit)

    def debit(n: int):
        def transaction(tx):
            balance = players.get_balance_tx(tx, merchant_id="mch_c", player_id="p1", currency="GEM")
            if balance < 10:
                return None
            return players.apply_wallet_change(tx, txn_id=f"wtx_{n}", merchant_id="mch_c", player_id="p1",
                                               currency="GEM", amount=-10, reason="spend", order_id=None, now_ms=n)
        return transaction

    results = await asyncio.gather(*(db.write(debit(n)) for n in range(60)))
    paid = [r for r in results if r is not None]
    assert len(paid) == 10 and sorted(paid) == list(range(0, 100, 10))  # every balance after, once each
    row = await db.fetch_one("SELECT balance FROM wallet_balances WHERE merchant_id = 'mch_c' AND player_id = 'p1'")
    journal = await db.fetch_one("SELECT sum(amount) AS total, min(balance_after) AS lowest, count(*) AS n"
                                 " FROM wallet_transactions WHERE player_id = 'p1'")
    assert (row["balance"], journal["total"], journal["lowest"], journal["n"]) == (0, 0, 0, 11)


async def test_ledger_postings_balance_and_post_once(db):
    ledger = Ledger(db=db, clock=_Clock(), config=FinanceConfig())

    def entries(amount: int) -> list[Entry]:
        return [Entry(account="provider_clearing:sandbox:mch_c", currency="USD", debit=amount, credit=0),
                Entry(account="merchant_payable:mch_c", currency="USD", debit=0, credit=amount)]

    def post(reference: str, amount: int):
        return lambda tx: ledger.post(tx, merchant_id="mch_c", kind="adjustment", reference=reference, entries=entries(amount))

    # The same business event from 20 writers at once: posted once.
    once = await asyncio.gather(*(db.write(post("adj_same", 500)) for _ in range(20)))
    assert once.count(True) == 1
    # 100 events on the same two accounts at once: every balance row equals its entries.
    assert all(await asyncio.gather(*(db.write(post(f"adj_{n}", n + 1)) for n in range(100))))
    with pytest.raises(AssertionError):  # an unbalanced posting never reaches the database
        await db.write(lambda tx: ledger.post(tx, merchant_id="mch_c", kind="adjustment", reference="adj_bad",
                                               entries=entries(5)[:1]))
    total = 500 + sum(range(1, 101))
    balances = {(r["account"], r["debits"], r["credits"]) for r in await db.fetch_all(
        "SELECT account, debits, credits FROM ledger_balances ORDER BY account")}
    assert balances == {("merchant_payable:mch_c", 0, total), ("provider_clearing:sandbox:mch_c", total, 0)}
    sums = await db.fetch_one("SELECT sum(debit) AS d, sum(credit) AS c, count(DISTINCT transaction_id) AS t FROM ledger_entries")
    assert (sums["d"], sums["c"], sums["t"]) == (total, total, 101)
    check = await ledger.check()
    assert check.ok, check.problem
    assert (check.transactions, check.entries) == (101, 202)
