"""The single writer's semantics (DESIGN.md), on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from apss.api.health import healthz
from apss.store import db as db_module
from apss.store.db import (
    Database,
    StoreBug,
    StoreUnavailable,
    TransactionAborted,
    TransactionControlRefused,
)
from tests.conftest import some_services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path):
    database = Database(str(tmp_path / "w.sqlite"), write_batch_max=64, busy_timeout_ms=200)
    await database.start()
    await database.write(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL CHECK (v >= 0))"))
    yield database
    await database.close()


def _insert(key: str, value: int):
    def fn(tx):
        tx.execute("INSERT INTO t VALUES (?, ?)", (key, value))
        return key
    return fn


async def _rows(db: Database) -> dict[str, int]:
    return {row["k"]: row["v"] for row in await db.fetch_all("SELECT k, v FROM t")}


async def test_concurrent_transactions_share_commits(db):
    before = db.batches_committed
    keys = await asyncio.gather(*(db.write(_insert(f"k{i}", i)) for i in range(500)))
    assert keys == [f"k{i}" for i in range(500)]
    assert len(await _rows(db)) == 500
    assert db.batches_committed - before < 500, "queued transactions are committed in batches"


async def test_failure_before_writing_affects_only_its_caller(db):
    def refuse(tx):
        raise ValueError("refused before any write")

    results = await asyncio.gather(db.write(_insert("a", 1)), db.write(refuse), db.write(_insert("b", 2)),
                                   return_exceptions=True)
    assert results[0] == "a" and results[2] == "b" and isinstance(results[1], ValueError)
    assert await _rows(db) == {"a": 1, "b": 2}


async def test_failure_after_writing_rolls_back_only_that_function(db):
    def half(tx):
        tx.execute("INSERT INTO t VALUES ('half', 1)")
        raise RuntimeError("failed after writing")

    def bad_constraint(tx):
        tx.execute("INSERT INTO t VALUES ('c1', 1)")
        tx.execute("INSERT INTO t VALUES ('c2', -1)")  # CHECK fails after the first write

    results = await asyncio.gather(
        db.write(_insert("x", 1)), db.write(half), db.write(_insert("y", 2)), db.write(bad_constraint),
        db.write(_insert("z", 3)), return_exceptions=True)
    assert results[0] == "x" and results[2] == "y" and results[4] == "z"
    assert isinstance(results[1], RuntimeError) and isinstance(results[3], sqlite3.IntegrityError)
    assert await _rows(db) == {"x": 1, "y": 2, "z": 3}


async def test_after_commit_runs_only_for_committed_work(db):
    seen: list[str] = []

    def ok(tx):
        tx.execute("INSERT INTO t VALUES ('ok', 1)")
        tx.after_commit(lambda: seen.append("ok"))

    def broken(tx):
        tx.after_commit(lambda: seen.append("broken"))
        tx.execute("INSERT INTO t VALUES ('br', 1)")
        raise RuntimeError("no")

    await asyncio.gather(db.write(ok), db.write(broken), return_exceptions=True)
    assert seen == ["ok"]


async def test_a_failed_batch_fails_every_member(db):
    # Hold the database lock from another connection so that BEGIN IMMEDIATE cannot start.
    blocker = sqlite3.connect(db.path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        results = await asyncio.gather(*(db.write(_insert(f"blocked{i}", 1)) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not any(k.startswith("blocked") for k in await _rows(db))
    assert await db.write(_insert("after", 1)) == "after", "the writer recovers"


# -- the writer, hardened: each fault below once hung a caller, killed the writer or committed half a batch ----
async def _settled(awaitable, *, hang_s: float = 20.0):
    """The outcome of `awaitable`; a hang is a failure (a guard, not a measure of speed)."""
    try:
        return await asyncio.wait_for(awaitable, timeout=hang_s)
    except TimeoutError:
        raise AssertionError("a write hung: the writer neither answered nor failed it") from None


class _Fault(BaseException):
    """Not an Exception: what a bug in the writer loop, or a stray SystemExit, looks like."""


async def test_a_base_exception_in_a_function_fails_only_its_caller(db):
    def raising(kind: BaseException, *, after_writing: bool):
        def fn(tx):
            if after_writing:
                tx.execute("INSERT INTO t VALUES (?, 1)", (f"half-{type(kind).__name__}",))
            raise kind
        return fn

    faults = [KeyboardInterrupt(), SystemExit(3), _Fault("custom")]
    writes = [db.write(_insert("before", 1))]
    for fault in faults:
        writes += [db.write(raising(fault, after_writing=False)), db.write(raising(fault, after_writing=True))]
    writes.append(db.write(_insert("after", 2)))
    results = await _settled(asyncio.gather(*writes, return_exceptions=True))
    assert results[0] == "before" and results[-1] == "after"
    for index, fault in enumerate(faults):
        for result in results[1 + 2 * index:3 + 2 * index]:
            assert isinstance(result, TransactionAborted), result
            assert result.__cause__ is fault
    assert await _rows(db) == {"before": 1, "after": 2}, "the failed functions' writes were rolled back"
    assert db.writer_alive
    assert await _settled(db.write(_insert("later", 3))) == "later", "the writer goes on"


async def test_a_dead_writer_fails_every_waiting_and_every_later_write(tmp_path, monkeypatch):
    database = Database(str(tmp_path / "dead.sqlite"), write_batch_max=2, busy_timeout_ms=200)
    await database.start()
    try:
        await database.write(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))

        def die(batch):
            raise _Fault("injected into the writer loop")

        monkeypatch.setattr(database, "_run_batch", die)
        results = await _settled(asyncio.gather(*(database.write(_insert(f"w{i}", i)) for i in range(10)),
                                                return_exceptions=True))
        assert all(isinstance(r, StoreUnavailable) and r.code == "not_ready" for r in results), results
        assert not database.writer_alive
        with pytest.raises(StoreUnavailable):
            await _settled(database.write(_insert("later", 1)))
        with pytest.raises(StoreUnavailable):
            await _settled(database.ping())
        app = Litestar(route_handlers=[healthz], logging_config=None,
                       dependencies={"svc": Provide(lambda: some_services(db=database), sync_to_thread=False)})
        async with AsyncTestClient(app) as client:
            assert (await _settled(client.get("/healthz"))).status_code == 503
    finally:
        await _settled(database.close())


@pytest.mark.parametrize("sql", ["COMMIT", "  end transaction", "-- a comment\n ROLLBACK", "/* x */ begin immediate",
                                 "SAVEPOINT s", "\n\trelease s", "Commit"])
async def test_a_function_cannot_end_the_batch_transaction(db, sql):
    def ender(tx):
        tx.execute("INSERT INTO t VALUES ('ender', 1)")
        tx.execute(sql)

    def shrugs(tx):  # refused, caught, and the function goes on: its work commits with the batch
        for call in (lambda: tx.one(sql), lambda: tx.all(sql), lambda: tx.executemany(sql, [()])):
            with pytest.raises(TransactionControlRefused):
                call()
        tx.execute("INSERT INTO t VALUES ('shrugs', 1)")

    results = await _settled(asyncio.gather(db.write(_insert("a", 1)), db.write(ender), db.write(shrugs),
                                            db.write(_insert("b", 2)), return_exceptions=True))
    assert results[0] == "a" and results[3] == "b", results
    assert isinstance(results[1], TransactionControlRefused) and isinstance(results[1], StoreBug), results[1]
    assert results[2] is None, results[2]
    assert await _rows(db) == {"a": 1, "shrugs": 1, "b": 2}


async def test_sql_that_only_mentions_commit_is_not_refused(db):
    def fn(tx):
        tx.execute("INSERT INTO t VALUES ('commit', 1)")
        tx.execute("/* end */ INSERT INTO t VALUES ('end', 2)")
        return tx.one("SELECT 'ROLLBACK' AS word")["word"]

    assert await _settled(db.write(fn)) == "ROLLBACK"
    assert await _rows(db) == {"commit": 1, "end": 2}


async def test_a_function_that_ends_the_transaction_another_way_fails_the_batch(db):
    def rogue(tx):
        tx.execute("INSERT INTO t VALUES ('rogue', 1)")
        tx._conn.commit()  # around the Tx: what the writer must notice after the function

    results = await _settled(asyncio.gather(db.write(_insert("first", 1)), db.write(rogue), db.write(_insert("next", 2)),
                                            return_exceptions=True))
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert "next" not in await _rows(db), "nothing ran outside the batch transaction after it ended"
    assert await _settled(db.write(_insert("after", 3))) == "after", "the writer goes on"


class _Connections:
    """open_connection, counted, each connection wrapped so that a test can make its next COMMIT fail
    (sqlite3.Connection's methods cannot be patched on the instance)."""

    def __init__(self, real) -> None:
        self._real = real
        self.opened: list[_FlakyConnection] = []
        self.refuse_opening = False

    def __call__(self, path, **pragmas):
        if self.refuse_opening:
            raise sqlite3.OperationalError("unable to open database file")
        self.opened.append(_FlakyConnection(self._real(path, **pragmas)))
        return self.opened[-1]


class _FlakyConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.fail_next_commit = False
        self.closed = False

    def execute(self, sql, params=()):
        if sql == "COMMIT" and self.fail_next_commit:
            self.fail_next_commit = False
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, params)

    def close(self) -> None:
        self.closed = True
        self._conn.close()

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
async def flaky(tmp_path, monkeypatch):
    connections = _Connections(db_module.open_connection)
    monkeypatch.setattr(db_module, "open_connection", connections)
    database = Database(str(tmp_path / "flaky.sqlite"), write_batch_max=64, busy_timeout_ms=200)
    await database.start()
    await database.write(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))
    yield database, connections
    await _settled(database.close())


async def test_a_failed_commit_fails_the_batch_and_the_writer_reopens(flaky):
    database, connections = flaky
    [first] = connections.opened
    first.fail_next_commit = True
    results = await _settled(asyncio.gather(*(database.write(_insert(f"lost{i}", i)) for i in range(5)),
                                            return_exceptions=True))
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    raw = sqlite3.connect(database.path)
    try:
        assert raw.execute("SELECT count(*) FROM t").fetchone()[0] == 0, "nothing of the failed batch is in the file"
    finally:
        raw.close()
    assert await _settled(database.write(_insert("next", 1))) == "next"
    assert len(connections.opened) == 2 and first.closed, "the next batch ran on a fresh connection"
    assert database.writer_alive


async def test_while_reopening_fails_writes_fail_at_once_and_recover_when_it_works(flaky):
    database, connections = flaky
    connections.opened[0].fail_next_commit = True
    connections.refuse_opening = True
    with pytest.raises(StoreUnavailable):
        await _settled(database.write(_insert("lost", 1)))
    with pytest.raises(StoreUnavailable, match="cannot be opened"):
        await _settled(database.write(_insert("later", 2)))
    connections.refuse_opening = False  # the file can be opened again: no restart needed
    assert await _settled(database.write(_insert("after", 3))) == "after"
    assert await _rows(database) == {"after": 3}
    assert database.writer_alive


async def test_an_error_of_the_database_inside_a_function_fails_the_whole_batch(db):
    """SQLITE_READONLY leaves SQLite's transaction open: the function's caller would see a raw
    sqlite3 error (a 500) and the others would commit. The batch fails as a whole instead."""
    await db.write(_insert("before", 1))
    def readonly(tx):
        tx.execute("INSERT INTO t VALUES ('half', 1)")
        raise sqlite3.OperationalError("attempt to write a readonly database")  # no errorcode: a bug, not the store
    with pytest.raises(sqlite3.OperationalError):
        await db.write(readonly)
    db.set_read_only(True)
    results = await asyncio.gather(*(db.write(_insert(f"ro{i}", i)) for i in range(5)), db.ping(),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await _rows(db) == {"before": 1}, "reads go on, nothing was written"
    db.set_read_only(False)
    assert await db.write(_insert("after", 2)) == "after"
    await db.ping()
    assert await _rows(db) == {"before": 1, "after": 2}


async def test_sqlite_full_from_the_page_cap_fails_the_batch_and_lifting_it_recovers(db):
    raw = sqlite3.connect(db.path)
    try:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
    finally:
        raw.close()
    db.set_page_count_max(pages)
    big = "x" * 3000  # every row needs a new page soon
    results = await asyncio.gather(*(db.write(_insert(f"{big}{i}", i)) for i in range(20)), return_exceptions=True)
    full = [r for r in results if isinstance(r, StoreUnavailable)]
    assert full and all(isinstance(r, (str, StoreUnavailable)) for r in results), results
    committed = {k for k in await _rows(db)}
    assert committed == {r for r in results if isinstance(r, str)}, "exactly the answered writes are in the file"
    db.set_page_count_max(0)
    assert await db.write(_insert("after", 1)) == "after"


async def _blocked_writer(database: Database) -> threading.Event:
    """Occupy the writer thread until the returned event is set."""
    release, entered = threading.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold(tx):
        loop.call_soon_threadsafe(entered.set)
        release.wait(30)
    database._held = asyncio.ensure_future(database.write(hold))
    await _settled(entered.wait())
    return release


async def test_close_with_a_full_queue_finishes_the_queue_and_refuses_later_writes(tmp_path):
    database = Database(str(tmp_path / "full.sqlite"), write_batch_max=1, write_queue_max=4, busy_timeout_ms=200)
    await database.start()
    await database.write(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))
    release = await _blocked_writer(database)
    queued = [asyncio.ensure_future(database.write(_insert(f"q{i}", i))) for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable):
        await database.write(_insert("overflow", 9))  # the queue is full
    closing = asyncio.ensure_future(database.close(deadline_s=30))
    await asyncio.sleep(0.05)  # close has begun; the event loop is not blocked by it
    with pytest.raises(StoreUnavailable, match="shutting down"):
        await _settled(database.write(_insert("late", 1)))
    release.set()
    assert await _settled(asyncio.gather(*queued)) == [f"q{i}" for i in range(4)], "accepted writes finish"
    await _settled(closing)
    raw = sqlite3.connect(database.path)
    try:
        assert {k for (k,) in raw.execute("SELECT k FROM t")} == {"q0", "q1", "q2", "q3"}
    finally:
        raw.close()


async def test_close_fails_what_cannot_finish_before_its_deadline(tmp_path):
    database = Database(str(tmp_path / "deadline.sqlite"), write_batch_max=1, write_queue_max=4, busy_timeout_ms=200)
    await database.start()
    await database.write(lambda tx: tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))
    release = await _blocked_writer(database)
    queued = [asyncio.ensure_future(database.write(_insert(f"q{i}", i))) for i in range(4)]
    closing = asyncio.ensure_future(database.close(deadline_s=0.1))
    await asyncio.sleep(0.3)  # the deadline passed while the writer was held
    release.set()
    results = await _settled(asyncio.gather(*queued, return_exceptions=True))
    assert all(isinstance(r, StoreUnavailable) and "shutting down" in str(r) for r in results), results
    await _settled(closing)
    assert not database.writer_alive
