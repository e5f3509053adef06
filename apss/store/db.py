"""The database: one writer thread with group commit, and a small pool of async readers.

Every write is `await db.write(fn)`: `fn(tx)` is plain synchronous code (no await, no network)
that runs on the writer thread. Transaction functions queued at the same moment run one after
another inside one `BEGIN IMMEDIATE ... COMMIT`: one fsync for the batch (group commit).

Failure semantics (DESIGN.md), what each caller sees:
- `fn` raises before writing anything (checks come first): only its caller gets the error, the
  batch goes on. No savepoint is needed, which keeps the common path fast.
- `fn` raises after writing: the batch is rolled back and replayed without it (the other
  members run again on the same state); only its caller gets the error.
- `fn` raises a BaseException (KeyboardInterrupt, SystemExit, ...): the same, and its caller gets
  TransactionAborted (its `__cause__` the original): re-raised on the event loop it would stop
  the server, and it must not kill the writer either.
- `fn` issues BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT or RELEASE through the Tx: refused with
  TransactionControlRefused before it runs (a StoreBug: 500). If the transaction ended anyway
  (around the Tx, or SQLite aborted it), the batch fails as a whole: half a batch never commits.
- The batch itself fails (COMMIT, disk full, I/O error, busy): every member gets StoreUnavailable
  (503 not_ready), and the writer fails closed: it rolls back if it can, closes its connection
  and takes the next batch on a fresh one (same pragmas). If none can be opened it stops taking
  writes: every write then fails at once with StoreUnavailable, and `writer_alive` is false.
- The writer thread dies (a bug of its own): the batch in hand, everything queued and every later
  write fail with StoreUnavailable at once; nothing waits forever. healthz answers 503.
- No future resolves and no `after_commit` callback runs before COMMIT returned.

Shutdown (`close(deadline_s=...)`): writes submitted after it began fail at once with
StoreUnavailable ('shutting down'); the writer finishes what was queued while the deadline lasts,
fails the rest the same way, and closes. It never blocks the event loop, even on a full queue.

Long work (settling a period) runs as several writes of at most `database.chunk_rows_max` rows
each, so no other write waits behind one huge transaction (services/money/settlement.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import aiosqlite

from apss.errors import NotReady

__all__ = ["Database", "EventSink", "Row", "StoreBug", "StoreUnavailable", "TransactionAborted", "TransactionControlRefused", "Tx",
           "set_fault_hook"]

log = logging.getLogger("apss.store")
T = TypeVar("T")
# A row as the code above the store sees it: columns by name, nothing sqlite3-specific
# (store functions return sqlite3.Row, which reads the same way).
Row = Mapping[str, Any]


class StoreUnavailable(NotReady):
    """The database cannot take the write now: 503 `not_ready` (API.md), retry shortly."""


class StoreBug(RuntimeError):
    """A transaction function broke a rule of the writer: a programming error, answered 500."""


class TransactionControlRefused(StoreBug):
    """A transaction function issued COMMIT, BEGIN, ROLLBACK, SAVEPOINT...: only the writer ends
    the batch's transaction (ending it would commit the other members' half-done work)."""


class TransactionAborted(StoreBug):
    """A transaction function raised a BaseException (KeyboardInterrupt, SystemExit, ...): its
    caller gets this instead, with the original as `__cause__`, since re-raising those on the event
    loop would stop the server."""


# Records an event about an object inside the transaction that changed it (the merchant webhook
# outbox): (tx, merchant_id, event type, object kind, object id). Given by app.py.
EventSink = Callable[["Tx", str, str, str, str], None]


# Statements that would end (or nest inside) the batch's transaction: the writer's alone.
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_LEADING_NOISE_RE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)
_KEYWORD_RE = re.compile(r"[A-Za-z]+")


@functools.lru_cache(maxsize=4096)  # statements are constant strings: the check costs a lookup
def _controls_transaction(sql: str) -> bool:
    """Whether the first keyword (after blanks and comments) of `sql` is transaction control."""
    rest = sql[_LEADING_NOISE_RE.match(sql).end():]
    keyword = _KEYWORD_RE.match(rest)
    return keyword is not None and keyword.group(0).upper() in _TRANSACTION_CONTROL


def _refuse_transaction_control(sql: str) -> None:
    if _controls_transaction(sql):
        raise TransactionControlRefused(f"a transaction function may not run {sql.strip()[:40]!r}: the writer "
                                        "alone begins and ends the batch's transaction")


class Tx:
    """One transaction function's handle on the writer connection."""

    __slots__ = ("_conn", "_after_commit", "_sink")

    def __init__(self, conn: sqlite3.Connection, sink: EventSink | None = None) -> None:
        self._conn = conn
        self._after_commit: list[Callable[[], None]] = []
        self._sink = sink

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        _refuse_transaction_control(sql)
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple]) -> sqlite3.Cursor:
        _refuse_transaction_control(sql)
        return self._conn.executemany(sql, rows)

    def one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        _refuse_transaction_control(sql)
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        _refuse_transaction_control(sql)
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


# Fault injection for the simulator (tests/sim): None in production, and then it costs one global
# read per batch. When set, the writer calls it once before and once after each batch's COMMIT as
# `hook(database, batch_size, committed)`; an exception it raises fails the batch as a COMMIT error
# would (before: nothing of the batch is durable; after: it is durable but no caller hears of it),
# which is how the simulator stands in for kill -9 at a chosen write.
FaultHook = Callable[["Database", int, bool], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    """Install (or with None remove) the writer's fault hook: tests only."""
    global _fault_hook
    _fault_hook = hook


class _Job(Generic[T]):
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Tx], T], future: asyncio.Future[T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


_STOP = object()  # wakes an idle writer for close()
_IDLE_POLL_S = 1.0  # an idle writer re-reads the stop flag this often
_JOIN_GRACE_S = 2.0  # after the deadline, time for the writer to fail the rest and close


class _BatchTransactionEnded(sqlite3.OperationalError):
    """The batch's transaction ended before COMMIT: the batch fails as a whole."""


def _call(fn: Callable[[Tx], Any], tx: Tx, results: dict[int, Any], index: int) -> BaseException | None:
    """Run one transaction function; its result goes to `results`, its error is returned.
    A BaseException (KeyboardInterrupt, SystemExit, ...) is caught too: one function must not
    kill the writer, and its caller gets TransactionAborted instead of it."""
    try:
        results[index] = fn(tx)
    except Exception as exc:
        return exc
    except BaseException as exc:
        log.error("transaction function raised %s; the writer goes on", type(exc).__name__)
        aborted = TransactionAborted(f"the transaction function raised {type(exc).__name__}: {exc}")
        aborted.__cause__ = exc
        return aborted
    return None


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
        self._conn: sqlite3.Connection | None = None  # the writer's; touched by the writer thread only
        self._in_hand: list[_Job] = []  # the batch the writer runs: failed too if the writer dies
        self._stopping = False  # close() began: new writes are refused at once
        self._stop_deadline = math.inf  # monotonic: queued writes not begun by then fail instead
        self._unavailable: str | None = None  # set once the writer took its last write: why
        self.batches_committed = 0  # observability: group-commit efficiency in benchmarks
        self.event_sink = event_sink  # the merchant webhook outbox (app.py); tests may run without

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._thread is None, "started twice"
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._run, name="apss-writer", daemon=True)
        self._thread.start()
        self._readers = asyncio.Queue()
        for _ in range(self._readers_max):
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            await reader.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            await reader.execute("PRAGMA query_only=1")
            self._reader_list.append(reader)
            self._readers.put_nowait(reader)

    @property
    def writer_alive(self) -> bool:
        """The writer thread runs and takes writes: false once it died, gave up on its connection
        or stopped for shutdown (healthz answers 503 then)."""
        return (self._thread is not None and self._thread.is_alive() and self._unavailable is None
                and not self._stopping)

    async def close(self, *, deadline_s: float = 10.0) -> None:
        """Refuse new writes at once, let the writer finish the ones it accepted while `deadline_s`
        lasts, fail the rest with StoreUnavailable ('shutting down'), close the connections.
        Never blocks the event loop (a full queue cannot make it wait)."""
        assert deadline_s >= 0
        if self._thread is not None:
            self._stop_deadline = time.monotonic() + deadline_s
            self._stopping = True
            try:
                self._queue.put_nowait(_STOP)  # wake an idle writer
            except queue.Full:
                pass  # a busy writer sees `_stopping` when it next looks at the queue
            await asyncio.to_thread(self._thread.join, deadline_s + _JOIN_GRACE_S)
            if self._thread.is_alive():  # a transaction function still runs: its batch never commits
                log.error("the writer did not stop within %.1f s; its unfinished batch is abandoned", deadline_s)
            self._fail_queued()
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
        if self._stopping:
            raise StoreUnavailable("the database is shutting down; retry shortly")
        if self._unavailable is not None:
            raise StoreUnavailable(self._unavailable)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        try:
            self._queue.put_nowait(_Job(fn, future, loop))
        except queue.Full:
            raise StoreUnavailable("the write queue is full; retry shortly") from None
        if self._unavailable is not None:  # the writer stopped between the check and the put: answer here
            self._fail_queued()
        return await future

    # -- the writer thread -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return open_connection(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)

    def _run(self) -> None:
        reason = "the database is shutting down"
        try:
            reason = self._serve()
        except BaseException as exc:  # a bug of the writer itself: fail closed, leave no caller waiting
            log.critical("the writer thread died; every write fails until APSS restarts", exc_info=True)
            reason = f"the writer stopped after an unexpected {type(exc).__name__}; APSS needs a restart"
        finally:
            self._unavailable = reason  # before draining: a write put after this drains the queue itself
            self._close_connection()
            self._fail(self._in_hand, reason)  # outcomes already delivered stay (a future resolves once)
            self._in_hand = []
            self._fail_queued()

    def _serve(self) -> str:
        """Take batches until close() (or until no connection can be opened); return why writes stop."""
        while True:
            batch = self._next_batch()
            if batch is None:
                return "the database is shutting down"
            if self._stopping and time.monotonic() > self._stop_deadline:
                self._fail(batch, "the database is shutting down: the write could not finish before the deadline")
                continue
            self._in_hand = batch
            committed_or_answered = self._run_batch(batch)
            self._in_hand = []
            if not committed_or_answered and not self._reopen():
                return "the database connection failed and could not be reopened; APSS needs a restart"

    def _next_batch(self) -> list[_Job] | None:
        """Up to write_batch_max queued jobs; None once stopping and the queue is drained."""
        first = self._take_first()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                batch.append(item)
        return batch

    def _take_first(self) -> _Job | None:
        while True:
            try:
                # The timeout re-reads `_stopping` even if close() found the queue full (no _STOP put).
                item = self._queue.get_nowait() if self._stopping else self._queue.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if self._stopping:
                    return None
                continue
            if item is not _STOP:
                return item

    def _run_batch(self, batch: list[_Job]) -> bool:
        """Run one batch (replayed without the members that failed after writing) and deliver every
        outcome. False when the batch itself failed: every member got StoreUnavailable."""
        failed: dict[int, BaseException] = {}
        while True:
            try:
                outcome = self._attempt(batch, failed)
            except Exception as exc:  # COMMIT, I/O, disk full, busy, an ended transaction: everyone hears of it
                log.error("write batch of %d failed: %s", len(batch), exc)
                self._rollback_quietly()
                self._fail(batch, f"the database could not commit: {exc}")
                return False
            if outcome is not None:
                results, callbacks = outcome
                self.batches_committed += 1
                self._deliver(batch, {**failed, **results}, callbacks)
                return True
            # A member failed after writing: `failed` grew; replay the batch without it.

    def _attempt(
        self, batch: list[_Job], failed: dict[int, BaseException]
    ) -> tuple[dict[int, Any], dict[int, list[Callable[[], None]]]] | None:
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("the writer has no connection")
        conn.execute("BEGIN IMMEDIATE")
        results: dict[int, Any] = {}
        callbacks: dict[int, list[Callable[[], None]]] = {}
        for index, job in enumerate(batch):
            if index in failed or job.future.cancelled():
                continue
            tx = Tx(conn, self.event_sink)
            changes_before = conn.total_changes
            error = _call(job.fn, tx, results, index)
            if not conn.in_transaction:
                # Ended around the Tx, or aborted by SQLite: what ran is no longer one transaction,
                # and what runs next would autocommit alone. Never commit half a batch.
                raise _BatchTransactionEnded(f"the batch's transaction ended inside a function ({error!r})")
            if error is None:
                callbacks[index] = tx._after_commit
                continue
            failed[index] = error
            if conn.total_changes != changes_before:
                conn.execute("ROLLBACK")
                return None
        hook = _fault_hook
        if hook is not None:
            hook(self, len(batch), False)
        conn.execute("COMMIT")
        if hook is not None:
            hook(self, len(batch), True)
        return results, callbacks

    def _rollback_quietly(self) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the connection is closed and replaced next anyway
            log.warning("rollback after a failed batch failed too: %s", exc)

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the writer connection failed: %s", exc)
            self._conn = None

    def _reopen(self) -> bool:
        """After a failed batch the connection may be broken in ways SQLite does not say (a failed
        COMMIT, an I/O error): fail closed, take the next batch on a fresh connection."""
        self._close_connection()
        try:
            self._conn = self._connect()
        except Exception:
            log.critical("the writer could not reopen %s; it takes no more writes", self.path, exc_info=True)
            return False
        return True

    def _fail(self, jobs: list[_Job], reason: str) -> None:
        """Answer each job with its own StoreUnavailable (one exception object per caller)."""
        self._deliver(jobs, {i: StoreUnavailable(reason) for i in range(len(jobs))}, {})

    def _fail_queued(self) -> None:
        """Answer everything still queued (the writer is gone or going): nobody else will."""
        jobs: list[_Job] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                jobs.append(item)
        self._fail(jobs, self._unavailable or "the database is shutting down")

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
