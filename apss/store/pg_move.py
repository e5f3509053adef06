"""Moving a SQLite database to PostgreSQL (`apss migrate-to-postgres --from sqlite PATH --to URL`):
every row of every table, copied once, checked before it is committed.

The rules:
- The source is opened read-only (`mode=ro`, `query_only`) and read in one read transaction:
  every table and every count comes from one snapshot, so even a file a server still writes to
  gives a consistent copy (of the moment the copy began; what the server writes later is not in
  it: stop it first). It must be an APSS database at the newest migration this APSS knows (else
  MoveRefused: `apss migrate` it first; it is never migrated from here, being read-only).
- The target must hold no row in any APSS table (a database `apss migrate` made is fine; one a
  server has started on is not: it has its admin token and maybe a demo merchant). The caller
  migrates it to the newest schema with store/migrate.py (the same files) before `copy`.
- The whole copy is ONE PostgreSQL transaction, which first locks every APSS table (EXCLUSIVE:
  no other writer until it ends) and checks again that they are empty. Tables go parents first
  (the foreign keys' order, read from the source); each table's rows go by `COPY ... FROM STDIN`
  (psycopg's `cursor.copy()`, the values typed as the target's columns: INTEGER -> bigint, TEXT
  -> text, BLOB -> bytea), read from SQLite `batch_rows` at a time, at most `batch_rows` rows per
  COPY command. PostgreSQL checks a row's foreign keys at the end of its command, so a table
  whose foreign key points at itself (settlements.carried_into names a later settlement) goes in
  one command, whatever its size.
- Rows keep their ids; every identity column's sequence (the rowid tables' `seq`, see
  store/pg_schema.py) is then set to the column's maximum, so the next INSERT gets the next id.
- Before COMMIT: every table's `count(*)` on the target equals the source's, and `verify` (the
  caller's ledger check, run on the same open transaction through `TxReader`) passes. Anything
  else rolls the whole copy back: the target is then as empty as it was (its schema migrated),
  and running the command again is the restart. A target holding rows is therefore always a
  complete, checked copy; a half-copied one never exists.

The files beside database.path (`.keys`, `.privacy`, `.erasures`) are not in the database: the
caller names them (`key_files`), and the server on the target must use the same ones.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apss.store.migrate import known_migrations

__all__ = ["MoveFailed", "MoveRefused", "MoveResult", "SourceInfo", "TxReader", "copy", "inspect_source",
           "key_files", "refuse_nonempty"]

BATCH_ROWS = 50_000
_KEY_SUFFIXES = (".keys", ".privacy", ".erasures")
_SKIPPED = ("schema_version",)  # the target's own migrations wrote it; the versions are compared instead


class MoveRefused(Exception):
    """One line for the user: the move cannot start (nothing was written to the target)."""


class MoveFailed(Exception):
    """The copy ran and was rolled back (a count differs, the ledger check failed, PostgreSQL refused a row)."""


@dataclass(frozen=True)
class SourceInfo:
    path: str
    version: int
    tables: list[str]  # parents first


@dataclass
class MoveResult:
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    sequences: list[str] = field(default_factory=list)  # table.column of each identity set past its rows
    verified: str = ""  # what `verify` said


def _ident(name: str) -> str:
    assert name.replace("_", "").isalnum(), name  # table and column names come from the schema
    return f'"{name}"'


def _open_source(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise MoveRefused(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _tables(conn: sqlite3.Connection) -> list[str]:
    """The APSS tables, parents first (a foreign key's table before the tables pointing at it)."""
    names = sorted(r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"))
    parents = {t: {r[2] for r in conn.execute(f"PRAGMA foreign_key_list({_ident(t)})")} - {t} for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and parents[t] <= set(ordered)]
        if not ready:
            raise MoveRefused(f"the foreign keys between {sorted(set(names) - set(ordered))} form a cycle")
        ordered += ready
    return ordered


def _self_referencing(conn: sqlite3.Connection, table: str) -> bool:
    return any(r[2] == table for r in conn.execute(f"PRAGMA foreign_key_list({_ident(table)})"))


def inspect_source(path: str) -> SourceInfo:
    """What `copy` will read, or MoveRefused: no file, not SQLite, not APSS, not the newest schema."""
    latest = known_migrations()[-1][0]
    conn = _open_source(path)
    try:
        try:
            has_version = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:  # "file is not a database"
            raise MoveRefused(f"{path} is not a SQLite database ({exc})") from None
        if not has_version:
            raise MoveRefused(f"{path} is not an APSS database (it has no schema_version table)")
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if version < latest:
            raise MoveRefused(f"{path} has schema version {version}, this APSS {latest}: run `apss migrate` on it "
                              f"first (APSS_DATABASE_PATH={path} apss migrate), then move it")
        if version > latest:
            raise MoveRefused(f"{path} has schema version {version}, but this APSS knows only up to {latest}: "
                              "move it with the APSS that wrote it")
        return SourceInfo(path=path, version=version, tables=_tables(conn))
    finally:
        conn.close()


def key_files(path: str) -> dict[str, Path | None]:
    """`.keys`, `.privacy`, `.erasures` beside the source: each suffix -> the file, or None when absent."""
    return {suffix: (Path(f"{path}{suffix}") if Path(f"{path}{suffix}").is_file() else None)
            for suffix in _KEY_SUFFIXES}


def _target_tables(conn: Any) -> dict[str, dict[str, str]]:
    """Each table of the target's schema -> {column: its PostgreSQL type (int8, text, bytea, ...)}."""
    tables: dict[str, dict[str, str]] = {}
    for table, column, type_name in conn.execute(
            "SELECT table_name, column_name, udt_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"):
        tables.setdefault(table, {})[column] = type_name
    return tables


def _holding_rows(conn: Any, tables: list[str]) -> list[str]:
    present = _target_tables(conn)
    return [t for t in tables if t in present and t not in _SKIPPED
            and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {_ident(t)})").fetchone()[0]]


def refuse_nonempty(path: str, url: str) -> None:
    """MoveRefused when an APSS table (one of the source at `path`) of the target at `url` holds a
    row (checked before the target is migrated)."""
    import psycopg  # the `postgres` extra

    source = inspect_source(path)
    with psycopg.connect(url, autocommit=True) as conn:
        full = _holding_rows(conn, source.tables)
    if full:
        raise MoveRefused(f"the target database is not empty ({', '.join(full[:3])}{', ...' if len(full) > 3 else ''} "
                          "hold rows): move into a new, empty database")


class TxReader:
    """The readers' interface of a database (`fetch_all`, `fetch_one`, `dialect`) on the copy's
    own open transaction: a check run through it (the ledger check) reads the rows about to be
    committed. The store's statements go through pg_db's translation, as on the server."""

    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch_all(self, sql: str, params: tuple | dict = ()) -> list:
        from apss.store.pg_db import _params, _row_factory, to_postgresql

        text = to_postgresql(sql)
        return self._conn.cursor(row_factory=_row_factory).execute(text, _params(text, params)).fetchall()

    async def fetch_one(self, sql: str, params: tuple | dict = ()) -> Any:
        rows = await self.fetch_all(sql, params)
        assert len(rows) <= 1, "fetch_one on a query that returned several rows"
        return rows[0] if rows else None


def copy(path: str, url: str, *, verify: Callable[[TxReader], tuple[bool, str]],
         batch_rows: int = BATCH_ROWS, method: str = "copy",
         progress: Callable[[str], None] | None = None) -> MoveResult:
    """Copy every row of the SQLite database at `path` into the (migrated, empty) PostgreSQL
    database at `url` in one transaction, and commit only if the counts agree and `verify`
    returns (True, what it found). `method="insert"` uses executemany instead of COPY
    (bench/pg_move.py's baseline)."""
    import psycopg  # the `postgres` extra

    assert method in ("copy", "insert") and batch_rows >= 1
    say = progress or (lambda line: None)
    started = time.monotonic()
    result = MoveResult()
    source = inspect_source(path)
    src = _open_source(source.path)
    try:
        src.execute("BEGIN")  # one snapshot for every count and every row
        counts = {t: src.execute(f"SELECT count(*) FROM {_ident(t)}").fetchone()[0] for t in source.tables}
        with psycopg.connect(url, autocommit=False) as conn:
            target = _target_tables(conn)
            tables = [t for t in source.tables if t not in _SKIPPED]
            _same_schema(src, target, tables)
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version != source.version:
                raise MoveRefused(f"the target has schema version {version}, the source {source.version}")
            conn.execute(f"LOCK TABLE {', '.join(_ident(t) for t in tables)} IN EXCLUSIVE MODE")
            full = _holding_rows(conn, tables)
            if full:
                raise MoveRefused(f"the target database is not empty ({', '.join(full[:3])} hold rows)")
            for i, table in enumerate(tables, 1):
                if counts[table]:
                    columns = list(target[table])
                    per_command = counts[table] if _self_referencing(src, table) else batch_rows
                    written = _copy_table(src, conn, table, columns, [target[table][c] for c in columns],
                                          total=counts[table], batch_rows=batch_rows, command_rows=per_command,
                                          method=method)
                    say(f"{i}/{len(tables)} {table}: {written} rows")
            result.sequences = _reset_identities(conn)
            copied = {t: conn.execute(f"SELECT count(*) FROM {_ident(t)}").fetchone()[0] for t in tables}
            differ = [f"{t} {counts[t]} -> {copied[t]}" for t in tables if copied[t] != counts[t]]
            if differ:
                conn.rollback()
                raise MoveFailed(f"row counts differ ({', '.join(differ[:5])}): nothing was committed")
            ok, said = verify(TxReader(conn))
            if not ok:
                conn.rollback()
                raise MoveFailed(f"the ledger check failed on the copy ({said}): nothing was committed")
            conn.commit()
        result.tables, result.counts, result.verified = len(tables), copied, said
        result.rows = sum(copied.values())
        result.seconds = time.monotonic() - started
        return result
    finally:
        src.close()  # ends the read transaction


def _same_schema(src: sqlite3.Connection, target: dict[str, dict[str, str]], tables: list[str]) -> None:
    for table in tables:
        columns = {r[1] for r in src.execute(f"PRAGMA table_info({_ident(table)})")}
        if table not in target:
            raise MoveRefused(f"the target has no table {table}")
        if columns != set(target[table]):
            raise MoveRefused(f"table {table} has other columns on the target: "
                              f"{sorted(columns ^ set(target[table]))}")


def _copy_table(src: sqlite3.Connection, conn: Any, table: str, columns: list[str], types: list[str], *,
                total: int, batch_rows: int, command_rows: int, method: str) -> int:
    """The `total` rows of `table` (the snapshot's count), read `batch_rows` at a time from SQLite,
    at most `command_rows` per COPY command (or one executemany per batch, `method="insert"`)."""
    names = ", ".join(_ident(c) for c in columns)
    rows = src.execute(f"SELECT {names} FROM {_ident(table)}")
    written = 0
    with conn.cursor() as cursor:
        while written < total:
            if method == "insert":
                batch = rows.fetchmany(batch_rows)
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(f"INSERT INTO {_ident(table)} ({names}) VALUES ({marks})", batch)
                written += len(batch)
                continue
            left = min(command_rows, total - written)
            with cursor.copy(f"COPY {_ident(table)} ({names}) FROM STDIN") as out:
                out.set_types(types)
                while left:
                    batch = rows.fetchmany(min(batch_rows, left))
                    assert batch, f"{table}: fewer rows than its count in the same snapshot"
                    for row in batch:
                        out.write_row(row)
                    left -= len(batch)
                    written += len(batch)
    return written


def _reset_identities(conn: Any) -> list[str]:
    """Every identity column's sequence at its column's maximum (untouched on an empty table: the
    next id stays 1)."""
    reset = []
    for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY table_name").fetchall():
        if conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), max({_ident(column)})) FROM {_ident(table)}"
                        f" HAVING max({_ident(column)}) IS NOT NULL", (table, column)).fetchone():
            reset.append(f"{table}.{column}")
    return reset
