"""The database: one writer thread with group commit, and a small pool of async readers.

Every write is `await db.write(fn)`: `fn(tx)` is plain synchronous code (no await, no network)
that runs on the writer thread. Transaction functions queued at the same moment run one after
another inside one `BEGIN IMMEDIATE ... COMMIT`: one fsync for the batch (group commit).

Failure semantics (DESIGN.md):
- `fn` raises before writing anything (checks come first): only its caller gets the error, the
  batch goes on. No savepoint is needed, which keeps the common path fast.
- `fn` raises after writing: the batch is rolled back and replayed without it (the other
  members run again on the same state); only its caller gets the error.
- The batch itself fails (COMMIT, disk full, I/O error): every member gets StoreUnavailable.
- No future resolves and no `after_commit` callback runs before COMMIT returned.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aiosqlite

from apss.errors import NotReady

__all__ = ["Database", "EventSink", "StoreUnavailable", "Tx"]

log = logging.getLogger("apss.store")
T = TypeVar("T")


class StoreUnavailable(NotReady):
    """The database cannot take the write now: 503 `not_ready` (API.md), retry shortly."""


# Records an event about an object inside the transaction that changed it (the merchant webhook
# outbox): (tx, merchant_id, event type, object kind, object id). Given by app.py.
EventSink = Callable[["Tx", str, str, str, str], None]


class Tx:
    """One transaction function's handle on the writer connection."""

    __slots__ = ("_conn", "_after_commit", "_sink")

    def __init__(self, conn: sqlite3.Connection, sink: EventSink | None = None) -> None:
        self._conn = conn
        self._after_commit: list[Callable[[], None]] = []
        self._sink = sink

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    @property
    def changes(self) -> int:
        """Rows changed so far on this connection: tells whether a failed function wrote."""
        return self._conn.total_changes

    def emit(self, *, merchant_id: str, type: str, kind: str, object_id: str) -> None:
        """Record an event (e.g. `order.paid` about order `ord_...`) in this transaction: it is
        written to the outbox with the change, and delivered only after COMMIT."""
        if self._sink is not None:
            self._sink(self, merchant_id, type, kind, object_id)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop once this transaction is durable (cache updates,
        waking delivery jobs). Never runs if the transaction does not commit."""
        self._after_commit.append(callback)


class _Job(Generic[T]):
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Tx], T], future: asyncio.Future[T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


_STOP = object()


def open_connection(path: str, *, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection with our pragmas; autocommit mode: we issue BEGIN ourselves."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # journal_mode and foreign_keys must be set outside a transaction.
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal", f"WAL mode is required, got {mode}"
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


class Database:
    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        write_batch_max: int = 256,
        write_queue_max: int = 10_000,
        read_connections_max: int = 4,
        busy_timeout_ms: int = 5000,
        event_sink: EventSink | None = None,
    ) -> None:
        assert synchronous in ("FULL", "NORMAL")
        assert 1 <= write_batch_max <= write_queue_max
        self.path = path
        self._synchronous = synchronous
        self._batch_max = write_batch_max
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=write_queue_max)
        self._readers_max = read_connections_max
        self._readers: asyncio.Queue[aiosqlite.Connection] | None = None
        self._reader_list: list[aiosqlite.Connection] = []
        self._thread: threading.Thread | None = None
        self.batches_committed = 0  # observability: group-commit efficiency in benchmarks
        self.event_sink = event_sink  # the merchant webhook outbox (app.py); tests may run without

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._thread is None, "started twice"
        conn = open_connection(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)
        self._thread = threading.Thread(target=self._run, args=(conn,), name="apss-writer", daemon=True)
        self._thread.start()
        self._readers = asyncio.Queue()
        for _ in range(self._readers_max):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            await reader.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            await reader.execute("PRAGMA query_only=1")
            self._reader_list.append(reader)
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for reader in self._reader_list:
            await reader.close()
        self._reader_list.clear()

    # -- reads -----------------------------------------------------------------------------
    async def fetch_all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run one query on a reader connection (WAL: readers never wait for the writer)."""
        assert self._readers is not None, "database not started"
        reader = await self._readers.get()
        try:
            rows = await reader.execute_fetchall(sql, params)
        finally:
            self._readers.put_nowait(reader)
        return list(rows)

    async def fetch_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        rows = await self.fetch_all(sql, params)
        assert len(rows) <= 1, "fetch_one on a query that returned several rows"
        return rows[0] if rows else None

    # -- writes ----------------------------------------------------------------------------
    async def ping(self, *, timeout_s: float = 5.0) -> None:
        """Prove the database takes a write (BEGIN IMMEDIATE takes the write lock) in time."""
        try:
            await asyncio.wait_for(self.write(lambda tx: tx.execute("SELECT 1")), timeout=timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"the writer did not answer within {timeout_s} s") from None

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a write transaction on the writer thread; return once it is committed."""
        assert self._thread is not None, "database not started"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        try:
            self._queue.put_nowait(_Job(fn, future, loop))
        except queue.Full:
            raise StoreUnavailable("the write queue is full; retry shortly") from None
        return await future

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < self._batch_max:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._queue.put(_STOP)  # finish this batch, then stop
                        break
                    batch.append(item)
                try:
                    self._run_batch(conn, batch)
                except Exception as exc:  # never let the writer die with callers waiting on it
                    log.exception("write batch of %d failed unexpectedly", len(batch))
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    error = StoreUnavailable(f"the writer failed: {type(exc).__name__}")
                    self._deliver(batch, {i: error for i in range(len(batch))}, {})
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        failed: dict[int, BaseException] = {}
        while True:
            try:
                outcome = self._attempt(conn, batch, failed)
            except sqlite3.Error as exc:  # the batch itself failed: everyone hears of it
                log.error("write batch of %d failed: %s", len(batch), exc)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                error = StoreUnavailable(f"the database could not commit: {exc}")
                self._deliver(batch, {i: error for i in range(len(batch))}, {})
                return
            if outcome is not None:
                results, callbacks = outcome
                self.batches_committed += 1
                self._deliver(batch, {**failed, **results}, callbacks)
                return
            # A member failed after writing: `failed` grew; replay the batch without it.

    def _attempt(
        self, conn: sqlite3.Connection, batch: list[_Job], failed: dict[int, BaseException]
    ) -> tuple[dict[int, Any], dict[int, list[Callable[[], None]]]] | None:
        conn.execute("BEGIN IMMEDIATE")
        results: dict[int, Any] = {}
        callbacks: dict[int, list[Callable[[], None]]] = {}
        for index, job in enumerate(batch):
            if index in failed or job.future.cancelled():
                continue
            tx = Tx(conn, self.event_sink)
            changes_before = conn.total_changes
            try:
                results[index] = job.fn(tx)
                callbacks[index] = tx._after_commit
            except Exception as exc:
                if not conn.in_transaction:
                    raise sqlite3.OperationalError(f"transaction aborted by SQLite: {exc}") from exc
                failed[index] = exc
                if conn.total_changes != changes_before:
                    conn.execute("ROLLBACK")
                    return None
        conn.execute("COMMIT")
        return results, callbacks

    @staticmethod
    def _deliver(batch: list[_Job], outcomes: dict[int, Any], callbacks: dict[int, list[Callable[[], None]]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, list]]] = {}
        for index, job in enumerate(batch):
            if index in outcomes:
                by_loop.setdefault(job.loop, []).append((job, outcomes[index], callbacks.get(index, [])))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop closed while we wrote (shutdown)
                pass


def _resolve(items: list[tuple[_Job, Any, list[Callable[[], None]]]]) -> None:
    for job, outcome, callbacks in items:
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a cache hook must not lose the caller's result
                log.exception("after_commit callback failed")
        if job.future.done():
            continue
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
