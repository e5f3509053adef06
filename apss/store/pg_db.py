"""The database on PostgreSQL: the interface of store/db.py's Database (write, fetch_all,
fetch_one, ping, close...) over psycopg 3, for several APSS instances on one database.

Writes. `await db.write(fn)` runs `fn(tx)` on a thread of a small pool of writer connections, in a
SERIALIZABLE transaction of its own (no group commit: PostgreSQL runs transactions side by side,
and SERIALIZABLE makes them behave as if one ran after the other). What callers rely on holds as
on SQLite: `fn` sees its own writes; its future resolves after COMMIT returned; `after_commit`
callbacks run on the event loop only once it committed. A serialization failure or a deadlock
(SQLSTATE 40001, 40P01), raised by a statement of `fn` or by COMMIT, rolls the transaction back
and runs `fn` again from the start on a fresh Tx, as a whole: transaction functions are plain code
over the database's state, replayable by design (the SQLite writer replays them too). `fn` raising
anything else rolls back and its caller gets the error (a BaseException: TransactionAborted);
a connection that fails (server gone, failover) is StoreUnavailable (503 not_ready).

Reads. `fetch_all`/`fetch_one` run on a psycopg-pool pool of async connections in autocommit and
read-only mode: each statement sees the last committed state, like SQLite's WAL readers.

Notices. `listen(channel, on_connect, on_notice)` keeps one dedicated async connection in
autocommit that LISTENs on `channel` (store/caches.py: the caches' invalidations), reconnecting
with a backoff when it is lost. `on_connect` runs after every LISTEN took effect, the first
included (what was sent while no LISTEN was in place is lost: the caller reloads), then
`on_notice(payload)` for each notice, one at a time, in commit order. The connection is probed
every `probe_s` and sends TCP keepalives, so a dead peer is noticed, not waited on forever.

SQL. The store's statements are written once, in the subset both engines read; `to_postgresql`
rewrites what differs mechanically: placeholders (`?` and `:name` become `%s` and `%(name)s`, a
literal `%` is doubled), `INSERT OR IGNORE` (ON CONFLICT DO NOTHING), the scalar `max(a, b)` and
`min(a, b)` (greatest, least), `instr` (strpos), and `a IS b` / `a IS NOT b` between values
(IS [NOT] DISTINCT FROM). What cannot be rewritten so asks `tx.dialect`
(or `db.dialect`): "sqlite" or "postgresql".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from apss.store.db import (
    BATCH_SIZE_BUCKETS,
    EventSink,
    StoreUnavailable,
    TransactionAborted,
    Tx,
    _Job,
    _refuse_transaction_control,
    _resolve,
)

__all__ = ["PgDatabase", "PgRow", "to_postgresql"]

log = logging.getLogger("apss.store")
T = TypeVar("T")

_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_CAUSE_DEPTH_MAX = 8
# The advisory lock the transactions that lost a serialization race take to run one at a time
# (an arbitrary 64-bit key: b'apss' + b'cont' as ASCII).
_CONTENDED_LOCK = 0x6170737363_6f6e74


# -- SQL ----------------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?\d+|:[A-Za-z_]\w*|[A-Za-z_]\w*|\s+|.", re.DOTALL)
_SCALAR = {"max": "greatest", "min": "least"}
_INSERT_OR_IGNORE_RE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\b", re.IGNORECASE)
_WRITES = ("INSERT", "UPDATE", "DELETE")
_IS_KEEPS = frozenset({"null", "not", "true", "false", "distinct"})


def _top_level_comma(tokens: list[str], open_index: int) -> bool:
    """Whether the parenthesis at tokens[open_index] holds a comma at its own depth."""
    depth = 0
    for token in tokens[open_index:]:
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth == 0:
                return False
        elif token == "," and depth == 1:
            return True
    return False


@functools.lru_cache(maxsize=4096)  # statements are constant strings: translated once each
def to_postgresql(sql: str) -> str:
    """A statement of the store (SQLite's dialect, in the subset both engines read) for psycopg."""
    sql, ignore = _INSERT_OR_IGNORE_RE.subn("INSERT", sql, count=1)
    tokens = _TOKEN_RE.findall(sql)
    out: list[str] = []
    for i, token in enumerate(tokens):
        lower = token.lower()
        if token == "?" or token[0] == "?" or (token[0] == ":" and len(token) > 1 and (not out or out[-1] != ":")):
            out.append(_placeholder(token, _tested_for_null(tokens, i)))
        elif token.startswith("'"):
            out.append(token.replace("%", "%%"))
        elif token == "%":
            out.append("%%")
        elif lower in _SCALAR and _next(tokens, i) == "(" and _top_level_comma(tokens, tokens.index("(", i)):
            out.append(_SCALAR[lower])
        elif lower == "instr" and _next(tokens, i) == "(":
            out.append("strpos")
        elif lower == "is" and _next(tokens, i).lower() not in _IS_KEEPS:
            out.append("IS NOT DISTINCT FROM")  # SQLite's `a IS b`: equal, NULLs included
        elif lower == "not" and _last_word(out).lower() == "is" and _next(tokens, i).lower() not in _IS_KEEPS:
            out[_last_word_index(out)] = "IS DISTINCT FROM"
            if out[-1].isspace():
                out.pop()
        else:
            out.append(token)
    text = "".join(out)
    if ignore:
        head, sep, returning = text.partition(" RETURNING ")
        text = f"{head} ON CONFLICT DO NOTHING{sep}{returning}"
    return text


def _placeholder(token: str, typed: bool) -> str:
    """`?`, SQLite's numbered `?NNN` (a named parameter, see _params) or `:name`, for psycopg. A
    parameter only tested for NULL (`? IS NULL OR ...`) has no type PostgreSQL can infer: text it is."""
    name = "%s" if token == "?" else f"%(_{token[1:]})s" if token[0] == "?" else f"%({token[1:]})s"
    return f"CAST({name} AS text)" if typed else name


def _tested_for_null(tokens: list[str], i: int) -> bool:
    words = [t.lower() for t in tokens[i + 1:i + 8] if not t.isspace()][:3]
    return words[:2] == ["is", "null"] or words == ["is", "not", "null"]


def _last_word_index(out: list[str]) -> int:
    return next(j for j in range(len(out) - 1, -1, -1) if not out[j].isspace())


def _last_word(out: list[str]) -> str:
    return out[_last_word_index(out)] if any(not t.isspace() for t in out) else ""


def _next(tokens: list[str], i: int) -> str:
    return next((t for t in tokens[i + 1:] if not t.isspace()), "")


# -- rows ---------------------------------------------------------------------------------------------
class PgRow:
    """A row read like sqlite3.Row: by column name or index, `keys()`, iteration over the values.
    `sum()` of integers is numeric in PostgreSQL: an integral Decimal comes back as int, as SQLite's."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names[key]]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PgRow) and self._values == other._values and self._names == other._names

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._names, self._values))!r})"


def _value(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _row_factory(cursor: Any) -> Callable[[tuple], PgRow]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(names, tuple(_value(v) for v in values))


@functools.lru_cache(maxsize=4096)
def _numbered(text: str) -> bool:
    return "%(_" in text


def _params(text: str, params: tuple | dict | list) -> tuple | dict:
    """The parameters of the translated statement `text`: `?NNN`'s values by name (`_NNN`); a bool
    as 1 or 0, as SQLite stores one (the columns that hold one are integers)."""
    if isinstance(params, dict):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    values = tuple(int(v) if isinstance(v, bool) else v for v in params)
    return {f"_{i}": v for i, v in enumerate(values, 1)} if _numbered(text) else values


# -- the transaction handle ---------------------------------------------------------------------------
class PgTx(Tx):
    """One transaction function's handle on its writer connection (the API of store/db.py's Tx)."""

    __slots__ = ("_changed",)
    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection, sink: EventSink | None = None) -> None:
        super().__init__(conn, sink)  # type: ignore[arg-type]
        self._changed = 0

    def _run(self, sql: str, params: tuple | dict) -> psycopg.Cursor:
        _refuse_transaction_control(sql)
        text = to_postgresql(sql)
        cursor = self._conn.execute(text, _params(text, params))
        if sql.lstrip()[:6].upper() in _WRITES:
            self._changed += max(cursor.rowcount, 0)
        return cursor

    def execute(self, sql: str, params: tuple | dict = ()) -> psycopg.Cursor:  # type: ignore[override]
        return self._run(sql, params)

    def executemany(self, sql: str, rows: list) -> psycopg.Cursor:  # type: ignore[override]
        _refuse_transaction_control(sql)
        cursor = self._conn.cursor()
        text = to_postgresql(sql)
        cursor.executemany(text, [_params(text, r) for r in rows])
        self._changed += max(cursor.rowcount, 0)
        return cursor

    def one(self, sql: str, params: tuple | dict = ()) -> PgRow | None:  # type: ignore[override]
        return self._run(sql, params).fetchone()

    def all(self, sql: str, params: tuple | dict = ()) -> list[PgRow]:  # type: ignore[override]
        return self._run(sql, params).fetchall()

    @property
    def changes(self) -> int:
        """Rows this transaction function changed so far."""
        return self._changed


def _retryable(error: BaseException | None) -> bool:
    for _ in range(_CAUSE_DEPTH_MAX):
        if error is None:
            return False
        if isinstance(error, _RETRYABLE):
            return True
        error = error.__cause__ or error.__context__
    return False


def _unavailable(error: BaseException) -> bool:
    """The server cannot take the transaction (gone, shutting down, a standby): not the function's fault."""
    return isinstance(error, (psycopg.OperationalError, psycopg_pool.PoolTimeout, pg_errors.ReadOnlySqlTransaction))


# -- the database -------------------------------------------------------------------------------------
class PgDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, *, write_connections_max: int = 8, read_connections_max: int = 4,
                 attempts_max: int = 64, event_sink: EventSink | None = None) -> None:
        assert write_connections_max >= 1 and read_connections_max >= 1 and attempts_max >= 1
        self.url = url
        self._writers_max = write_connections_max
        self._readers_max = read_connections_max
        self._attempts_max = attempts_max
        self._writers: psycopg_pool.ConnectionPool | None = None
        self._readers: psycopg_pool.AsyncConnectionPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._in_flight = 0
        # Observability, as store/db.py's: every committed transaction is a "batch" of one.
        self.batches_committed = 0
        self.batch_members_committed = 0
        self.batch_size_counts = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self.retries = 0  # transactions run again after a serialization failure or deadlock
        self.event_sink = event_sink
        self._listener: asyncio.Task | None = None
        self.listen_connects = 0  # LISTENs that took effect (the first, then one per reconnect)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._writers is None, "started twice"

        def writer(conn: psycopg.Connection) -> None:
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            conn.row_factory = _row_factory

        async def reader(conn: psycopg.AsyncConnection) -> None:
            await conn.set_autocommit(True)
            await conn.execute("SET default_transaction_read_only = on")
            conn.row_factory = _row_factory

        self._writers = psycopg_pool.ConnectionPool(self.url, min_size=1, max_size=self._writers_max,
                                                    configure=writer, open=False, timeout=10.0)
        await asyncio.to_thread(self._writers.open, True, 10.0)
        self._readers = psycopg_pool.AsyncConnectionPool(self.url, min_size=1, max_size=self._readers_max,
                                                         configure=reader, open=False, timeout=10.0)
        await self._readers.open(wait=True, timeout=10.0)
        self._executor = ThreadPoolExecutor(max_workers=self._writers_max, thread_name_prefix="apss-pg-writer")

    @property
    def queue_depth(self) -> int:
        """Writes submitted and not finished (approximate)."""
        return self._in_flight

    @property
    def writer_alive(self) -> bool:
        return self._executor is not None and not self._stopping

    async def close(self, *, deadline_s: float = 10.0) -> None:
        """Refuse new writes, let the running ones finish within `deadline_s`, close the pools."""
        self._stopping = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._executor is not None:
            end = time.monotonic() + deadline_s
            while self._in_flight and time.monotonic() < end:
                await asyncio.sleep(0.01)
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._readers is not None:
            await self._readers.close()
        if self._writers is not None:
            await asyncio.to_thread(self._writers.close)

    # -- reads -----------------------------------------------------------------------------
    async def fetch_all(self, sql: str, params: tuple | dict = ()) -> list[PgRow]:
        assert self._readers is not None, "database not started"
        try:
            async with self._readers.connection() as conn:
                text = to_postgresql(sql)
                cursor = await conn.execute(text, _params(text, params))
                return await cursor.fetchall()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(f"the database cannot be read: {type(exc).__name__}") from exc

    async def fetch_one(self, sql: str, params: tuple | dict = ()) -> PgRow | None:
        rows = await self.fetch_all(sql, params)
        assert len(rows) <= 1, "fetch_one on a query that returned several rows"
        return rows[0] if rows else None

    # -- notices ---------------------------------------------------------------------------
    def listen(self, channel: str, *, on_connect: Callable[[], Awaitable[None]],
               on_notice: Callable[[str], Awaitable[None]], probe_s: float = 5.0) -> None:
        """LISTEN on `channel` on a connection of its own until close() (see the module's docstring)."""
        assert self._listener is None, "one listener per database"
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", channel), channel  # an identifier, not a parameter
        self._listener = asyncio.create_task(self._listen(channel, on_connect, on_notice, probe_s),
                                             name=f"apss-listen-{channel}")

    async def _listen(self, channel: str, on_connect: Callable[[], Awaitable[None]],
                      on_notice: Callable[[str], Awaitable[None]], probe_s: float) -> None:
        pause_s = 0.1
        while not self._stopping:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=f"apss-listen-{channel}",
                    keepalives=1, keepalives_idle=max(1, int(probe_s)), keepalives_interval=1, keepalives_count=3,
                    connect_timeout=10)
                async with conn:
                    await conn.execute(f"LISTEN {channel}")
                    self.listen_connects += 1
                    await on_connect()
                    pause_s = 0.1
                    while not self._stopping:
                        async for notice in conn.notifies(timeout=probe_s):
                            await on_notice(notice.payload)
                        await conn.execute("SELECT 1")  # a lost connection raises here at the latest
            except (psycopg.OperationalError, OSError) as exc:
                if self._stopping:
                    return
                log.warning("the LISTEN connection on %s was lost (%s); reconnecting in %.1f s",
                            channel, type(exc).__name__, pause_s)
            except Exception:  # a bug in a callback: logged, and the connection made again
                log.exception("the listener on %s failed; reconnecting in %.1f s", channel, pause_s)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 5.0)

    # -- writes ----------------------------------------------------------------------------
    async def ping(self, *, timeout_s: float = 5.0) -> None:
        """Prove the database takes a write: a transaction id is assigned on a writable primary only."""
        try:
            await asyncio.wait_for(self.write(lambda tx: tx.one("SELECT pg_current_xact_id()")), timeout=timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"the database did not answer within {timeout_s} s") from None

    async def checkpoint_truncate(self, *, attempts_max: int = 50) -> bool:
        """SQLite's WAL checkpoint after an erasure; PostgreSQL reclaims old row versions by VACUUM."""
        return True

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a SERIALIZABLE transaction of its own; return once it is committed."""
        if self._executor is None:
            raise AssertionError("database not started")
        if self._stopping:
            raise StoreUnavailable("the database is shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, loop.create_future(), loop)
        with self._lock:
            self._in_flight += 1
        try:
            self._executor.submit(self._run_job, job)
        except RuntimeError:  # the executor shut down between the check and the submit
            with self._lock:
                self._in_flight -= 1
            raise StoreUnavailable("the database is shutting down; retry shortly") from None
        return await job.future

    # -- the writer threads ----------------------------------------------------------------
    def _run_job(self, job: _Job) -> None:
        try:
            outcome, callbacks = (None, []) if job.future.cancelled() else self._transaction(job.fn)
        except BaseException as exc:  # a bug of this module: the caller hears of it, nothing waits forever
            log.exception("the PostgreSQL writer failed")
            outcome, callbacks = StoreUnavailable(f"the writer failed: {type(exc).__name__}"), []
        finally:
            with self._lock:
                self._in_flight -= 1
        try:
            job.loop.call_soon_threadsafe(_resolve, [(job, outcome, callbacks)])
        except RuntimeError:  # the loop closed while we wrote (shutdown)
            pass

    def _transaction(self, fn: Callable[[Tx], Any]) -> tuple[Any, list[Callable[[], None]]]:
        """(fn's result or error, its after-commit callbacks): one SERIALIZABLE transaction,
        retried as a whole on a serialization failure or a deadlock.

        The first attempt runs side by side with every other transaction. One that lost a race
        runs its next attempts under the cluster-wide "contended" advisory lock, taken before its
        transaction starts (a SERIALIZABLE transaction's snapshot is taken by its first statement,
        so a lock waited for inside it would not help): the transactions that lost races then run
        one at a time, on every instance, and each meets only the first attempts of newer ones.
        Without it, N transactions on one hot row (a flash sale's stock) keep failing each other
        and one of them can lose `attempts_max` times in a row."""
        assert self._writers is not None
        outcome = self._attempt(fn, None)
        if outcome is not None:
            return outcome
        try:
            with self._writers.connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (_CONTENDED_LOCK,))
                conn.commit()
                try:
                    for attempt in range(2, self._attempts_max + 1):
                        outcome = self._attempt(fn, conn)
                        if outcome is not None:
                            return outcome
                        time.sleep(random.uniform(0, min(0.01, 0.0005 * 2 ** min(attempt, 5))))
                finally:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (_CONTENDED_LOCK,))
                        conn.commit()
                    except psycopg.Error:  # the connection broke: the server released the lock with it
                        pass
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:  # no connection, or the lock not taken
            log.error("a PostgreSQL write failed: %s", type(exc).__name__)
            return StoreUnavailable(f"the database could not take the write: {type(exc).__name__}"), []
        return StoreUnavailable(f"the write met {self._attempts_max} serialization failures in a row; retry shortly"), []

    def _attempt(self, fn: Callable[[Tx], Any],
                 held: psycopg.Connection | None) -> tuple[Any, list[Callable[[], None]]] | None:
        """One run of `fn` in a transaction of its own (on `held`, or a connection of the pool):
        its outcome, or None after a serialization failure or deadlock (run it again)."""
        assert self._writers is not None
        try:
            with contextlib.nullcontext(held) if held is not None else self._writers.connection() as conn:
                tx = PgTx(conn, self.event_sink)
                result, error = _call(fn, tx)
                if error is None:
                    conn.commit()
                    self._count()
                    return result, tx._after_commit
                conn.rollback()
                if _retryable(error):
                    raise error
                if _unavailable(error):
                    return StoreUnavailable(f"the database could not take the write: {type(error).__name__}"), []
                return error, []
        except _RETRYABLE:
            if held is not None:
                held.rollback()
            with self._lock:
                self.retries += 1
            return None
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.error("a PostgreSQL write failed: %s", type(exc).__name__)
            return StoreUnavailable(f"the database could not commit: {type(exc).__name__}"), []

    def _count(self) -> None:
        with self._lock:
            self.batches_committed += 1
            self.batch_members_committed += 1
            self.batch_size_counts[0] += 1


def _call(fn: Callable[[Tx], Any], tx: PgTx) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, error); a BaseException becomes TransactionAborted (see db.py)."""
    try:
        return fn(tx), None
    except Exception as exc:
        return None, exc
    except BaseException as exc:
        aborted = TransactionAborted(f"the transaction function raised {type(exc).__name__}: {exc}")
        aborted.__cause__ = exc
        return None, aborted
