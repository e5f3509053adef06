"""The `apss` command: `apss serve`, `apss migrate`, `apss ledger check`, `apss backup PATH`,
`apss restore PATH`, `apss migrate-to-postgres --from sqlite PATH --to URL` (and `python run.py`,
which is `apss serve`).

The config file is found in this order: `--config PATH`, `$APSS_CONFIG`, `./config.toml`; without
one the built-in defaults apply, and the command says so and where the data goes."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

from apss.config import Config, load_config
from apss.errors import ConfigInvalid, LiveMerchantsInTestMode, SchemaTooNew

__all__ = ["main"]


def _load(path: str | None, *, overrides: dict[str, str] | None = None) -> Config:
    source = Path(path or os.environ.get("APSS_CONFIG") or "config.toml")
    try:
        config = load_config(source, environ={**os.environ, **(overrides or {})})
    except ConfigInvalid as exc:
        _fail(str(exc))
    if not source.exists():
        print(f"apss: no config file at {source}: using the built-in defaults (and APSS_* variables); "
              f"data in {Path(config.database.path).resolve()}", flush=True)
    return config


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2: what a person (or a supervisor) must fix first."""
    print(f"apss: {message}", file=sys.stderr)
    raise SystemExit(2)


def _migrate(config: Config) -> None:
    from apss.store.migrate import apply_migrations

    if not config.database.postgresql:
        Path(config.database.path).parent.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, name: str) -> None:  # one line per migration applied, on stderr
        print(f"apss: migration {done}/{total} {name} applied", file=sys.stderr, flush=True)

    try:
        before, after = apply_migrations(config.database.target, progress=progress)
    except SchemaTooNew as exc:
        _fail(str(exc))
    except Exception as exc:  # PostgreSQL unreachable, refused, ...
        _psycopg_fail(config, exc)
    print(f"database {config.database.display}: schema version {before} -> {after}", flush=True)


def _psycopg_fail(config: Config, exc: Exception) -> NoReturn:
    """psycopg's first line, without the URL (which may hold a password); anything else is a bug."""
    if not config.database.postgresql or type(exc).__module__.split(".")[0] != "psycopg":
        raise exc
    _fail(f"database {config.database.display}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _refuse_on_postgresql(config: Config, command: str) -> None:
    if config.database.postgresql:
        _fail(f"apss {command} copies a SQLite file (its online backup API); database.url selects PostgreSQL: "
              "back it up with PostgreSQL's own tools (pg_dump, pg_basebackup, or the provider's snapshots)")


def _serve(config: Config, *, print_secrets: bool) -> None:
    import uvicorn

    from apss.api.observability import configure_logging
    from apss.app import create_app

    listener = _listen(config.server.host, config.server.port)  # a busy port fails before anything else
    _migrate(config)
    configure_logging(log_format=config.log.format, level=config.server.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per provider or callback request is noise
    # The once-only secrets (a generated admin token, the demo merchant's key) go to a person at a
    # terminal, never into a file or a log collector, unless asked for with --print-secrets.
    show_secrets = print_secrets or sys.stdout.isatty()
    try:
        app = create_app(config, announce=lambda line: print(line, flush=True), announce_secrets=show_secrets)
    except (LiveMerchantsInTestMode, ConfigInvalid) as exc:
        _fail(str(exc))
    print(f"APSS listening on http://{config.server.host}:{config.server.port} (public URL {config.public_url})", flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has stopped, and the process would die of it
    # (exit -15) after an orderly shutdown: the re-raised signal meets this no-op instead (exit 0).
    signal.signal(signal.SIGTERM, _stopped_already)
    # SIGTERM: uvicorn stops accepting and gives in-flight requests half the deadline; then the
    # app's shutdown gives the writer most of the rest to finish its queue (app.py).
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.server.host, port=config.server.port, loop="uvloop", http="httptools",
        log_level=config.server.log_level, access_log=False, log_config=None,  # uvicorn logs through ours
        timeout_graceful_shutdown=config.server.shutdown_deadline_s * _REQUESTS_SHARE))
    server.run(sockets=[listener])
    print("APSS stopped", flush=True)


_REQUESTS_SHARE = 0.5  # of server.shutdown_deadline_s, for in-flight requests (the writer gets 0.4)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket first: a port in use is one clear line and exit 2, before any
    "listening" line or migration; uvicorn then serves on this very socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            _fail(f"port {port} on {host} is in use by another program: stop it, or set server.port (APSS_SERVER_PORT)")
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _stopped_already(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's own handler is gone: the server has shut down in order."""


def _ledger_check(config: Config) -> None:
    import asyncio

    from apss.services.money.ledger import Ledger
    from apss.store.db import Database

    async def check() -> bool:
        if config.database.postgresql:
            from apss.store.pg_db import PgDatabase  # the `postgres` extra

            db = PgDatabase(config.database.url, write_connections_max=1, read_connections_max=1)
        else:
            db = Database(config.database.path, read_connections_max=1)
        await db.start()
        try:
            result = await Ledger(db=db, clock=None, config=config.finance).check(
                progress=lambda step: print(f"apss: ledger check {step}", file=sys.stderr, flush=True))
        finally:
            await db.close()
        print(f"ledger: {result.transactions} transactions, {result.entries} entries: "
              f"{'every transaction balances and every balance equals its entries' if result.ok else result.problem}")
        return result.ok

    from apss.store.migrate import schema_versions

    try:  # a check reads; it never creates or migrates the database it is asked about
        current, latest = schema_versions(config.database.target)
    except FileNotFoundError:
        _fail(f"no database at {config.database.path}: nothing to check")
    except Exception as exc:  # PostgreSQL unreachable, refused, ...
        _psycopg_fail(config, exc)
    if current != latest:
        _fail(f"database {config.database.display} has schema version {current}, this APSS {latest}: "
              f"run `apss migrate` first (or use the APSS that wrote it)")
    if not asyncio.run(check()):
        raise SystemExit(1)


def _counts(checked) -> str:
    return ", ".join(f"{n} {table}" for table, n in checked.counts.items())


def _backup(config: Config, target: str, key_target: str | None) -> None:
    import asyncio

    from apss.services.backups.backups import (
        BackupRefused,
        copy_key,
        key_file,
        take_backup,
    )

    _refuse_on_postgresql(config, "backup")
    try:  # SQLite's online backup API: safe while a server writes to the file (WAL)
        checked = asyncio.run(take_backup(source=config.database.path, target=target, config=config))
        written = copy_key(config, backup=target, key_target=key_target) if key_target is not None else []
    except BackupRefused as exc:
        _fail(str(exc))
    print(f"backup {target}: integrity ok, ledger balances ({checked.ledger_transactions} transactions); {_counts(checked)}")
    keys = key_file(config)
    if written:
        print(f"keys written to {', '.join(written)} (mode 0600): keep them apart from the backup")
    elif keys is not None:
        print(f"the data key ({keys}) is not in the backup: back it up separately (--with-key PATH), "
              "without it the backup's sealed secrets and personal data cannot be opened")


def _restore(config: Config, source: str, key_source: str | None) -> None:
    import asyncio

    from apss.services.backups.backups import BackupRefused, restore

    _refuse_on_postgresql(config, "restore")
    try:
        checked = asyncio.run(restore(backup=source, config=config, key_source=key_source))
    except BackupRefused as exc:
        _fail(str(exc))
    print(f"restored {source} to {config.database.path}: integrity ok, ledger balances "
          f"({checked.ledger_transactions} transactions); {_counts(checked)}")


def _move_to_postgres(config: Config, source: list[str], url: str) -> None:
    """Copy a SQLite database into an empty PostgreSQL one (store/pg_move.py says the rules):
    refusals are one line and exit 2, a copy that fails its counts or the ledger check is rolled
    back and exits 1, a checked and committed copy prints its summary and exits 0."""
    import asyncio

    from apss.config import DatabaseConfig
    from apss.services.money.ledger import Ledger
    from apss.store import pg_move
    from apss.store.migrate import apply_migrations, is_postgresql, require_psycopg

    kind, path = source
    if kind != "sqlite":
        _fail(f"--from {kind}: only a SQLite database can be moved (--from sqlite PATH)")
    if not is_postgresql(url):
        _fail("--to: a PostgreSQL URL (postgresql://user:password@host:5432/dbname)")
    display = DatabaseConfig(url=url).display  # never the user, password or parameters
    try:
        require_psycopg()
    except ConfigInvalid as exc:
        _fail(str(exc))
    import psycopg

    def say(line: str) -> None:
        print(f"apss: {line}", file=sys.stderr, flush=True)

    try:
        pg_move.inspect_source(path)
        pg_move.refuse_nonempty(path, url)
        _warn_key_files(config, path, say)
        apply_migrations(url, progress=lambda done, total, name: say(f"target migration {done}/{total} {name} applied"))
    except (pg_move.MoveRefused, SchemaTooNew) as exc:
        _fail(str(exc))
    except psycopg.Error as exc:
        _fail(f"database {display}: {_first_line(exc)}")

    def ledger_check(reader: pg_move.TxReader) -> tuple[bool, str]:  # `apss ledger check`'s, on the copy
        result = asyncio.run(Ledger(db=reader, clock=None, config=config.finance).check())
        return result.ok, (f"{result.transactions} transactions, {result.entries} entries: every transaction "
                           "balances and every balance equals its entries" if result.ok else result.problem)

    try:
        moved = pg_move.copy(path, url, verify=ledger_check, progress=lambda line: say(f"copy {line}"))
    except pg_move.MoveRefused as exc:
        _fail(str(exc))
    except pg_move.MoveFailed as exc:
        print(f"apss: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except psycopg.Error as exc:  # a row PostgreSQL refused, the server gone: the transaction is rolled back
        print(f"apss: the copy to {display} failed, nothing was committed: {_first_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"moved {path} to {display}: {moved.tables} tables, {moved.rows} rows in {moved.seconds:.1f} s; "
          f"row counts equal on both sides; {len(moved.sequences)} identity sequences moved past the copied ids; "
          f"ledger: {moved.verified}")


def _first_line(exc: Exception) -> str:
    """psycopg's primary message (its DETAIL and CONTEXT lines may quote a row's values: left out)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _warn_key_files(config: Config, path: str, say) -> None:
    """The data key and the personal-data keys are not in the database: the server on PostgreSQL
    needs the very same ones (from config, or the files beside its database.path)."""
    from apss.store.pg_move import key_files

    found = key_files(path)
    expected = {".keys": not config.security.data_key, ".privacy": not config.privacy.keys}
    for suffix, wanted in expected.items():
        if wanted and found[suffix] is None:
            say(f"warning: no {path}{suffix} beside the source: the server on PostgreSQL needs the {suffix} file "
                "the source was written with (a backup's is where --with-key put it), or it cannot open the "
                "sealed secrets and personal data")
    kept = [str(f) for f in found.values() if f is not None]
    if kept:
        say(f"keep {', '.join(kept)}: they are not in the database; the server on PostgreSQL reads them beside its "
            "database.path")


def main(argv: list[str] | None = None) -> None:
    if not __debug__:
        print("apss: refusing to run with python -O: assertions guard the invariants", file=sys.stderr)
        raise SystemExit(2)
    config_help = "config file (default: $APSS_CONFIG, then ./config.toml, then the built-in defaults)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH", help=config_help)
    parser = argparse.ArgumentParser(prog="apss", description="APSS, the Automated Payment & Settlement System for "
                                     "virtual goods.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{serve,migrate,ledger,backup,restore,migrate-to-postgres}")
    serve = commands.add_parser("serve", parents=[common], help="apply migrations and start the server",
                                description="Apply migrations and start the server (what `python run.py` does). "
                                            "SIGTERM stops it in order within server.shutdown_deadline_s.")
    serve.add_argument("--host", help="listen on this address (server.host)")
    serve.add_argument("--port", type=int, help="listen on this port (server.port)")
    serve.add_argument("--print-secrets", action="store_true",
                       help="print a generated admin token and the demo merchant's key even when the output is not "
                            "a terminal (they are printed once, at the first start)")
    commands.add_parser("migrate", parents=[common], help="apply migrations and exit",
                        description="Apply the database migrations and exit; prints the schema version before and after.")
    ledger = commands.add_parser("ledger", parents=[common], help="ledger tools",
                                 description="Ledger tools. check: prove that every ledger transaction balances and "
                                             "every balance equals its entries (exit 1 naming the first bad entry); "
                                             "reads the database, never migrates it.")
    ledger.add_argument("action", choices=["check"], help="check: prove the ledger balances")
    backup = commands.add_parser("backup", parents=[common], help="copy the database (also while it serves) and check the copy",
                                 description="Copy the database with SQLite's online backup API (safe while a server "
                                             "writes), then check the copy: integrity_check, foreign keys and the ledger "
                                             "check. The data key is not copied unless --with-key names where.")
    backup.add_argument("path", help="the new backup file (never overwritten)")
    backup.add_argument("--with-key", metavar="KEY_PATH", help="also write the data key here (not in the backup's folder)")
    restore = commands.add_parser("restore", parents=[common], help="put a checked backup in place of the database",
                                  description="Check the backup (integrity, foreign keys, ledger, that the data key "
                                              "opens it), then put it in place of database.path. Refused while a server "
                                              "runs on that file.")
    restore.add_argument("path", help="the backup file")
    restore.add_argument("--with-key", metavar="KEY_PATH", help="the data key the backup was taken with")
    move = commands.add_parser(
        "migrate-to-postgres", parents=[common], help="copy a SQLite database into an empty PostgreSQL database",
        description="Copy every row of a SQLite database (read-only) into an empty PostgreSQL database, migrated "
                    "first, in one transaction: committed only once the row counts agree and the ledger check passes "
                    "on the copy; prints tables, rows and seconds. The key files beside the SQLite file are not "
                    "copied: the server on PostgreSQL must use the same ones.")
    move.add_argument("--from", dest="source", nargs=2, metavar=("sqlite", "PATH"), required=True,
                      help="the SQLite database to copy (stop its server first, or copy a backup)")
    move.add_argument("--to", dest="url", metavar="URL", required=True,
                      help="the PostgreSQL database (postgresql://user:password@host:5432/dbname), empty")
    args = parser.parse_args(argv)
    overrides = {}
    if args.command == "serve":  # flags win over the environment and the file
        if args.host is not None:
            overrides["APSS_SERVER_HOST"] = args.host
        if args.port is not None:
            overrides["APSS_SERVER_PORT"] = str(args.port)
    config = _load(getattr(args, "config", None), overrides=overrides)
    if args.command == "migrate":
        _migrate(config)
    elif args.command == "ledger":
        _ledger_check(config)
    elif args.command == "backup":
        _backup(config, args.path, args.with_key)
    elif args.command == "restore":
        _restore(config, args.path, args.with_key)
    elif args.command == "migrate-to-postgres":
        _move_to_postgres(config, args.source, args.url)
    else:
        _serve(config, print_secrets=args.print_secrets)


if __name__ == "__main__":
    main()
