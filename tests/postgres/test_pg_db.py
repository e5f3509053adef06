"""store/pg_db.py's Database on a real PostgreSQL server: the semantics the callers rely on (a
function sees its own writes, the future resolves after COMMIT, after-commit callbacks run only on
commit, a failing function leaves nothing behind), the serializable retry as a whole, and the
statement translation from the store's dialect."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from apss.store.db import (
    StoreUnavailable,
    TransactionAborted,
    TransactionControlRefused,
)
from apss.store.pg_db import PgDatabase, to_postgresql

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL CHECK (v >= 0))")
    database = PgDatabase(pg_url, write_connections_max=4, read_connections_max=2)
    await database.start()
    yield database
    await database.close()


async def _rows(db) -> dict[str, int]:
    return {row["k"]: row["v"] for row in await db.fetch_all("SELECT k, v FROM t ORDER BY k")}


async def test_a_function_sees_its_own_writes_and_callbacks_run_after_commit(db, pg_url):
    seen: list[object] = []

    def fn(tx):
        tx.execute("INSERT INTO t (k, v) VALUES (:k, :v)", {"k": "a", "v": 1})
        tx.execute("UPDATE t SET v = v + ? WHERE k = ?", (41, "a"))
        inside = tx.one("SELECT v FROM t WHERE k = 'a'")["v"]
        with psycopg.connect(pg_url) as other:  # not committed yet: another connection sees nothing
            seen.append(other.execute("SELECT count(*) FROM t").fetchone()[0])
        tx.after_commit(lambda: seen.append("committed"))
        return inside, tx.changes

    assert await db.write(fn) == (42, 2)
    assert seen == [0, "committed"]
    assert await _rows(db) == {"a": 42}


async def test_a_failing_function_leaves_nothing_and_runs_no_callback(db):
    ran: list[str] = []

    def fails_after_writing(tx):
        tx.execute("INSERT INTO t (k, v) VALUES ('b', 1)")
        tx.after_commit(lambda: ran.append("never"))
        raise ValueError("refused after a write")

    def check_violation(tx):
        tx.execute("INSERT INTO t (k, v) VALUES ('c', -1)")

    def interrupted(tx):
        tx.execute("INSERT INTO t (k, v) VALUES ('d', 1)")
        raise KeyboardInterrupt

    with pytest.raises(ValueError):
        await db.write(fails_after_writing)
    with pytest.raises(psycopg.errors.CheckViolation):
        await db.write(check_violation)
    with pytest.raises(TransactionAborted) as caught:
        await db.write(interrupted)
    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    with pytest.raises(TransactionControlRefused):
        await db.write(lambda tx: tx.execute("COMMIT"))
    assert ran == [] and await _rows(db) == {}
    assert await db.write(lambda tx: tx.execute("INSERT INTO t (k, v) VALUES ('e', 1)").rowcount) == 1


async def test_a_serialization_failure_runs_the_function_again_as_a_whole(db):
    await db.write(lambda tx: tx.execute("INSERT INTO t (k, v) VALUES ('n', 0)"))
    both_read = threading.Barrier(2, timeout=30)
    attempts = {"x": 0, "y": 0}
    callbacks: list[str] = []

    def increment(name: str):
        def fn(tx):
            attempts[name] += 1
            value = tx.one("SELECT v FROM t WHERE k = 'n'")["v"]
            if attempts[name] == 1:
                both_read.wait()  # both read 0 before either writes: one of them must not commit
            tx.execute("UPDATE t SET v = ? WHERE k = 'n'", (value + 1,))
            tx.after_commit(lambda: callbacks.append(name))
            return value + 1
        return fn

    retries_before = db.retries
    results = await asyncio.gather(db.write(increment("x")), db.write(increment("y")))
    assert sorted(results) == [1, 2], "the loser ran again on the winner's state"
    assert sorted(attempts.values()) == [1, 2] and db.retries == retries_before + 1
    assert sorted(callbacks) == ["x", "y"]  # once each: the failed attempt's callback never ran
    assert await _rows(db) == {"n": 2}


async def test_a_transaction_that_lost_a_race_runs_again_under_the_contended_lock(db):
    """Its next attempts hold the cluster-wide advisory lock (taken before the transaction starts),
    so the losers of races on a hot row run one at a time instead of failing each other again."""
    await db.write(lambda tx: tx.execute("INSERT INTO t (k, v) VALUES ('hot', 0)"))
    both_read = threading.Barrier(2, timeout=30)
    seen: dict[str, list[int]] = {"x": [], "y": []}
    lock = "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"

    def increment(name: str):
        def fn(tx):
            seen[name].append(tx.one(lock)["n"])  # advisory locks this attempt's connection holds
            value = tx.one("SELECT v FROM t WHERE k = 'hot'")["v"]
            if len(seen[name]) == 1:
                both_read.wait()
            tx.execute("UPDATE t SET v = ? WHERE k = 'hot'", (value + 1,))
        return fn

    await asyncio.gather(db.write(increment("x")), db.write(increment("y")))
    assert sorted(seen.values()) == [[0], [0, 1]], "first attempts run free; the retry holds the lock"
    assert await _rows(db) == {"hot": 2}
    with psycopg.connect(db.url) as conn:  # released after the retry committed
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


async def test_reads_are_read_only_and_a_lost_server_is_store_unavailable(pg_url):
    database = PgDatabase(pg_url, write_connections_max=1, read_connections_max=1)
    await database.start()
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await database.fetch_all("CREATE TABLE nope (a BIGINT)")
        await database.ping()
    finally:
        await database.close()
    with pytest.raises(StoreUnavailable):
        await database.write(lambda tx: None)


def test_statements_are_translated_from_the_store_dialect():
    assert to_postgresql("SELECT * FROM t WHERE a = ? AND b = :b AND c LIKE 'x:%' AND d = 'it''s ?'") == (
        "SELECT * FROM t WHERE a = %s AND b = %(b)s AND c LIKE 'x:%%' AND d = 'it''s ?'")
    assert to_postgresql("INSERT OR IGNORE INTO r (a) VALUES (?)") == "INSERT INTO r (a) VALUES (%s) ON CONFLICT DO NOTHING"
    assert to_postgresql("UPDATE m SET e = max(?, e - ?), f = max(f) + min(g)") == (
        "UPDATE m SET e = greatest(%s, e - %s), f = max(f) + min(g)")
    assert to_postgresql("SELECT instr(a, ':') FROM t WHERE a IS NOT b OR c IS ? OR d IS NOT NULL") == (
        "SELECT strpos(a, ':') FROM t WHERE a IS DISTINCT FROM b OR c IS NOT DISTINCT FROM %s OR d IS NOT NULL")
    assert to_postgresql("SELECT a FROM t WHERE (? IS NULL OR a < ?) AND (:k IS NOT NULL) AND b = ?2") == (
        "SELECT a FROM t WHERE (CAST(%s AS text) IS NULL OR a < %s) AND (CAST(%(k)s AS text) IS NOT NULL) AND b = %(_2)s")
