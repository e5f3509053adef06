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
- The batch itself fails (COMMIT, disk full, I/O error, busy, a read-only file): every member
  gets StoreUnavailable (503 not_ready), and the writer fails closed: it rolls back if it can,
  closes its connection and takes the next batch on a fresh one (same pragmas). A function that
  meets such an error (SQLITE_FULL, IOERR, READONLY, ... : the database's state, not the
  function's fault) fails the batch the same way, even if SQLite left the transaction open. If no
  connection can be opened, each later batch fails at once with StoreUnavailable and the writer
  tries again with the next one: when space returns (or the file is writable again) writes
  succeed without a restart. `ping()` proves writability with a one-page write (healthz).
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
import bisect
import functools
import logging
import math
import queue
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import aiosqlite

from apss.errors import NotReady

__all__ = ["BATCH_SIZE_BUCKETS", "Database", "EventSink", "Row", "StoreBug", "StoreUnavailable", "TransactionAborted",
           "TransactionControlRefused", "Tx", "is_store_failure", "set_fault_hook"]

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

    __slots__ = ("_conn", "_after_commit", "_sink", "memo")
    # The one dialect hook: a statement that differs between the engines asks `tx.dialect` (or
    # `db.dialect`). Almost none does: store/pg_db.py rewrites the mechanical differences.
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, sink: EventSink | None = None) -> None:
        self._conn = conn
        self._after_commit: list[Callable[[], None]] = []
        self._sink = sink
        # What this transaction function already read or rendered, so it does it once (a
        # merchant's webhook endpoints, asked for by every event it emits). Gone with the Tx: a
        # replayed batch starts empty. Each entry's owner says how long it holds: dropped where its
        # rows are written (store/webhooks.py), or stamped with `changes` (services/views.py).
        self.memo: dict[str, Any] = {}

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
    __slots__ = ("fn", "future", "loop", "bare")

    def __init__(self, fn: Callable[[Tx], T], future: asyncio.Future[T], loop: asyncio.AbstractEventLoop,
                 bare: bool = False) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.bare = bare  # runs alone, outside any transaction, on the writer's connection (a checkpoint)


# Upper bounds of the committed batch sizes counted per bucket (/metrics shows them as a histogram).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

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


# Primary SQLite result codes that say the database cannot take writes now, whoever asks:
# BUSY, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_STORE_RESULT_CODES = frozenset({5, 7, 8, 10, 11, 13, 14, 15, 26})
_CAUSE_DEPTH_MAX = 8


def is_store_failure(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is SQLite saying the database itself cannot take the
    write (disk full, read-only, I/O error...), as opposed to a rule the function broke."""
    for _ in range(_CAUSE_DEPTH_MAX):
        if error is None:
            return False
        if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF in _STORE_RESULT_CODES:
            return True
        error = error.__cause__ or error.__context__
    return False


def open_connection(path: str, *, synchronous: str, busy_timeout_ms: int, read_only: bool = False) -> sqlite3.Connection:
    """A connection with our pragmas; autocommit mode: we issue BEGIN ourselves. `read_only`
    opens the file with SQLite's `mode=ro`, which refuses writes even to root (chmod does not)."""
    if read_only:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # journal_mode and foreign_keys must be set outside a transaction.
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal", f"WAL mode is required, got {mode}"
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # Deleted and overwritten content is zeroed, so freed pages keep no erased personal data.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


class Database:
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        write_batch_max: int = 256,
        write_queue_max: int = 10_000,
        read_connections_max: int = 4,
        busy_timeout_ms: int = 5000,
        page_count_max: int = 0,
        event_sink: EventSink | None = None,
    ) -> None:
        assert synchronous in ("FULL", "NORMAL")
        assert 1 <= write_batch_max <= write_queue_max
        assert page_count_max >= 0
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
        self._bare_next: _Job | None = None  # a bare job met while collecting a batch: it runs next, alone
        self._in_hand: list[_Job] = []  # the batch the writer runs: failed too if the writer dies
        self._stopping = False  # close() began: new writes are refused at once
        self._stop_deadline = math.inf  # monotonic: queued writes not begun by then fail instead
        self._unavailable: str | None = None  # set once the writer took its last write: why
        # What the writer's connection is opened with; a change takes effect at the next batch.
        self._page_count_max = page_count_max  # 0: SQLite's own limit
        self._read_only = False
        self._opened_with: tuple[int, bool] | None = None
        self._open_error: str | None = None  # why the last attempt to open the writer's connection failed
        self._statement_trace: Callable[[str], None] | None = None  # set_statement_trace (tests)
        # Observability (benchmarks, /metrics): written by the writer thread only, read as they are.
        self.batches_committed = 0
        self.batch_members_committed = 0  # transaction functions in those batches
        self.batch_size_counts = [0] * (len(BATCH_SIZE_BUCKETS) + 1)  # per bucket (the last: larger)
        self.retries = 0  # transactions run again after a serialization failure (PostgreSQL only: one writer never retries)
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
    def queue_depth(self) -> int:
        """Writes waiting for the writer (approximate: the queue moves while it is read)."""
        return self._queue.qsize()

    @property
    def writer_alive(self) -> bool:
        """The writer thread runs and takes writes: false once it died, gave up on its connection
        or stopped for shutdown (healthz answers 503 then)."""
        return (self._thread is not None and self._thread.is_alive() and self._unavailable is None
                and not self._stopping)

    def set_page_count_max(self, pages: int) -> None:
        """Cap the file at `pages` pages (0: SQLite's own limit) from the next batch on: beyond it
        SQLite answers SQLITE_FULL, as on a full disk (database.page_count_max; tests use it)."""
        assert pages >= 0
        self._page_count_max = pages

    def set_read_only(self, read_only: bool) -> None:
        """Open the writer's connection read-only (`mode=ro`) from the next batch on, or writable
        again: every write then fails with 503 not_ready, reads go on (tests and maintenance)."""
        self._read_only = read_only

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
        """Prove the database takes a write in time: BEGIN IMMEDIATE takes the write lock, and
        rewriting the header's user_version (unused by APSS) writes one page, which a read-only
        file or a full disk refuses."""
        def probe(tx: Tx) -> None:
            version = tx.one("PRAGMA user_version")[0]
            tx.execute(f"PRAGMA user_version = {int(version)}")
        try:
            await asyncio.wait_for(self.write(probe), timeout=timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"the writer did not answer within {timeout_s} s") from None

    async def checkpoint_truncate(self, *, attempts_max: int = 50) -> bool:
        """Copy the whole WAL into the database file and truncate the WAL to zero bytes, on the
        writer between two batches (after an erasure: no old page image is left in the WAL).
        True once a checkpoint completed (readers holding an old snapshot make it retry)."""
        assert attempts_max >= 1
        for _ in range(attempts_max):
            busy = await self._submit(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0],
                                      bare=True)
            if busy == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    async def set_statement_trace(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback(sql)` on the writer thread for each statement its connection runs, from
        the next batch on (None: stop); a reopened connection keeps it. Tests count with it the
        statements of a transaction (tests/sql_trace.py)."""
        def install(conn: sqlite3.Connection) -> None:
            self._statement_trace = callback
            conn.set_trace_callback(callback)
        await self._submit(install, bare=True)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a write transaction on the writer thread; return once it is committed."""
        return await self._submit(fn, bare=False)

    async def _submit(self, fn: Callable[[Any], T], *, bare: bool) -> T:
        assert self._thread is not None, "database not started"
        if self._stopping:
            raise StoreUnavailable("the database is shutting down; retry shortly")
        if self._unavailable is not None:
            raise StoreUnavailable(self._unavailable)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        try:
            self._queue.put_nowait(_Job(fn, future, loop, bare))
        except queue.Full:
            raise StoreUnavailable("the write queue is full; retry shortly") from None
        if self._unavailable is not None:  # the writer stopped between the check and the put: answer here
            self._fail_queued()
        return await future

    # -- the writer thread -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        settings = (self._page_count_max, self._read_only)
        conn = open_connection(self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms,
                               **({"read_only": True} if settings[1] else {}))
        if settings[0]:
            conn.execute(f"PRAGMA max_page_count = {int(settings[0])}")
        if self._statement_trace is not None:
            conn.set_trace_callback(self._statement_trace)
        self._opened_with = settings
        return conn

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
        """Take batches until close(); return why writes stop."""
        while True:
            batch = self._next_batch()
            if batch is None:
                return "the database is shutting down"
            if self._stopping and time.monotonic() > self._stop_deadline:
                self._fail(batch, "the database is shutting down: the write could not finish before the deadline")
                continue
            if self._conn is None or self._opened_with != (self._page_count_max, self._read_only):
                if not self._reopen():  # still cannot open: this batch fails, the next one tries again
                    self._fail(batch, f"the database cannot be opened for writing: {self._open_error}")
                    continue
            self._in_hand = batch
            if batch[0].bare:
                self._run_bare(batch[0])
                self._in_hand = []
                continue
            committed_or_answered = self._run_batch(batch)
            self._in_hand = []
            if not committed_or_answered:
                self._reopen()

    def _next_batch(self) -> list[_Job] | None:
        """Up to write_batch_max queued jobs; None once stopping and the queue is drained."""
        first, self._bare_next = (self._bare_next, None) if self._bare_next is not None else (self._take_first(), None)
        if first is None:
            return None
        batch = [first]
        while not first.bare and len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                continue
            if item.bare:
                self._bare_next = item
                break
            batch.append(item)
        return batch

    def _run_bare(self, job: _Job) -> None:
        """A job outside any transaction (a WAL checkpoint): its result or error to its caller."""
        try:
            conn = self._conn
            if conn is None:
                raise sqlite3.OperationalError("the writer has no connection")
            assert not conn.in_transaction
            outcome: Any = job.fn(conn)
        except Exception as exc:
            outcome = exc
        self._deliver([job], {0: outcome}, {})

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
                self._count_batch(len(batch))
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
            if is_store_failure(error):  # the database's state, not this function's: the batch fails
                raise error
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

    def _count_batch(self, size: int) -> None:
        self.batches_committed += 1
        self.batch_members_committed += size
        self.batch_size_counts[bisect.bisect_left(BATCH_SIZE_BUCKETS, size)] += 1

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
        COMMIT, an I/O error): fail closed, take the next batch on a fresh connection. If none can
        be opened the writer stays without one; the next batch tries again."""
        self._close_connection()
        try:
            self._conn = self._connect()
        except Exception as exc:
            if self._open_error is None:  # once per outage, not once per refused batch
                log.critical("the writer cannot open %s (%s); writes fail until it can", self.path, exc)
            self._open_error = str(exc) or type(exc).__name__
            return False
        if self._open_error is not None:
            log.warning("the writer reopened %s; writes are taken again", self.path)
            self._open_error = None
        return True

    def _fail(self, jobs: list[_Job], reason: str) -> None:
        """Answer each job with its own StoreUnavailable (one exception object per caller)."""
        self._deliver(jobs, {i: StoreUnavailable(reason) for i in range(len(jobs))}, {})

    def _fail_queued(self) -> None:
        """Answer everything still queued (the writer is gone or going): nobody else will."""
        jobs: list[_Job] = []
        if self._bare_next is not None:
            jobs.append(self._bare_next)
            self._bare_next = None
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
