"""The single writer's semantics (DESIGN.md), on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from apss.store.db import Database, StoreUnavailable

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
