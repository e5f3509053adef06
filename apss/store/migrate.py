"""Numbered, forward-only SQL migrations (migrations/NNNN_name.sql), applied in order inside one
transaction, statement by statement (`executescript` would commit an open transaction).

The same files migrate a PostgreSQL database (`apply_migrations` given a postgresql:// URL): each
statement goes through store/pg_schema.py's translator; the whole run is one transaction under an
advisory lock, so instances starting at once migrate one after the other (the later ones find
nothing to do)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from apss.errors import ConfigInvalid, SchemaTooNew

__all__ = ["MIGRATIONS_DIR", "apply_migrations", "is_postgresql", "known_migrations", "schema_versions",
           "split_statements"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"  # apss/migrations, shipped in the wheel
_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT"
_MIGRATE_LOCK = 0x41505353  # 'APSS': the advisory lock key migrations take on PostgreSQL


def is_postgresql(target: str) -> bool:
    """Whether a database target (a file path or database.url) is a PostgreSQL URL."""
    return target.startswith(("postgresql://", "postgres://"))


def _too_new(target: str, current: int, latest: int) -> SchemaTooNew:
    where = "the PostgreSQL database" if is_postgresql(target) else f"database {target}"
    return SchemaTooNew(f"{where} has schema version {current}, but this APSS knows only up to "
                        f"{latest}: upgrade APSS (or restore a backup) before starting it")


def known_migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _NAME_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    assert versions == list(range(1, len(versions) + 1)), f"migrations must be numbered 1..n: {versions}"
    return found


def split_statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    assert not current.strip() or current.strip().startswith("--"), "unterminated SQL statement"
    return statements


def apply_migrations(path: str, directory: Path = MIGRATIONS_DIR, *,
                     progress: Callable[[int, int, str], None] | None = None) -> tuple[int, int]:
    """Bring the database at `path` to the newest schema. Returns (version before, after).
    `progress(done, total, file name)` hears of each migration applied (all commit together at
    the end). Raises SchemaTooNew when the database was written by a newer APSS. `path` may be a
    postgresql:// URL."""
    if is_postgresql(path):
        return _apply_postgresql(path, directory, progress)
    migrations = known_migrations(directory)
    latest = migrations[-1][0] if migrations else 0
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # A migration may remove personal data (0028: IPs copied into risk decisions): the bytes
        # it frees are zeroed, and the checkpoint below leaves no old page in the WAL.
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SCHEMA_VERSION_DDL)
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > latest:
            conn.execute("ROLLBACK")
            raise _too_new(path, current, latest)
        pending = [(version, file) for version, file in migrations if version > current]
        for done, (version, file) in enumerate(pending, 1):
            for statement in split_statements(file.read_text()):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            if progress is not None:
                progress(done, len(pending), file.name)
        conn.execute("COMMIT")
        if pending:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return current, max(current, latest)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def require_psycopg() -> None:
    """PostgreSQL needs psycopg, the `postgres` extra: without it, one line saying how to get it."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ConfigInvalid("config key database.url: PostgreSQL needs the `postgres` extra (python3 -m pip install "
                            "'apss[postgres]', or -e '.[postgres]' in a checkout)") from None


def _apply_postgresql(url: str, directory: Path,
                      progress: Callable[[int, int, str], None] | None) -> tuple[int, int]:
    require_psycopg()
    import psycopg  # the `postgres` extra: only a PostgreSQL setup needs it

    from apss.store.pg_schema import translate_migration, translate_statement

    migrations = known_migrations(directory)
    latest = migrations[-1][0] if migrations else 0
    with psycopg.connect(url, autocommit=False) as conn:  # one transaction: DDL is transactional here
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(translate_statement(_SCHEMA_VERSION_DDL))
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current > latest:
            raise _too_new(url, current, latest)
        pending = [(version, file) for version, file in migrations if version > current]
        for done, (version, file) in enumerate(pending, 1):
            for statement in translate_migration(version, split_statements(file.read_text())):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            if progress is not None:
                progress(done, len(pending), file.name)
        conn.commit()
    return current, max(current, latest)


def schema_versions(path: str, directory: Path = MIGRATIONS_DIR) -> tuple[int, int]:
    """(the database's schema version, the newest this APSS knows), read only: nothing is created
    or migrated (`apss ledger check`). A file that does not exist is FileNotFoundError; `path` may
    be a PostgreSQL URL."""
    migrations = known_migrations(directory)
    latest = migrations[-1][0] if migrations else 0
    if is_postgresql(path):
        require_psycopg()
        import psycopg  # the `postgres` extra: only a PostgreSQL setup needs it

        with psycopg.connect(path, autocommit=True) as conn:
            has_table = conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is not None
            current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0 if has_table else 0
        return current, latest
    if not Path(path).exists():
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0 if has_table else 0
        return current, latest
    finally:
        conn.close()
