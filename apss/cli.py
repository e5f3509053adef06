"""The `apss` command: `apss serve`, `apss migrate`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from apss.config import Config, load_config
from apss.errors import ConfigInvalid, LiveMerchantsInTestMode, SchemaTooNew

__all__ = ["main"]


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigInvalid as exc:
        print(f"apss: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _migrate(config: Config) -> None:
    from pathlib import Path

    from apss.store.migrate import apply_migrations

    Path(config.database.path).parent.mkdir(parents=True, exist_ok=True)
    try:
        before, after = apply_migrations(config.database.path)
    except SchemaTooNew as exc:
        print(f"apss: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"database {config.database.path}: schema version {before} -> {after}")


def _serve(config: Config) -> None:
    import uvicorn

    from apss.app import create_app

    _migrate(config)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per provider or callback request is noise
    try:
        app = create_app(config, announce=lambda line: print(line, flush=True))
    except LiveMerchantsInTestMode as exc:
        print(f"apss: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"APSS listening on http://{config.server.host}:{config.server.port} (public URL {config.public_url})", flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has stopped, and the process would die of it
    # (exit -15) after an orderly shutdown: the re-raised signal meets this no-op instead (exit 0).
    signal.signal(signal.SIGTERM, _stopped_already)
    # SIGTERM: uvicorn stops accepting and gives in-flight requests half the deadline; then the
    # app's shutdown gives the writer most of the rest to finish its queue (app.py).
    uvicorn.run(app, host=config.server.host, port=config.server.port, loop="uvloop", http="httptools",
                log_level=config.server.log_level, access_log=False,
                timeout_graceful_shutdown=config.server.shutdown_deadline_s * _REQUESTS_SHARE)
    print("APSS stopped", flush=True)


_REQUESTS_SHARE = 0.5  # of server.shutdown_deadline_s, for in-flight requests (the writer gets 0.4)


def _stopped_already(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's own handler is gone: the server has shut down in order."""


def _ledger_check(config: Config) -> None:
    import asyncio

    from apss.services.money.ledger import Ledger
    from apss.store.db import Database

    async def check() -> bool:
        db = Database(config.database.path, read_connections_max=1)
        await db.start()
        try:
            result = await Ledger(db=db, clock=None, config=config.finance).check()
        finally:
            await db.close()
        print(f"ledger: {result.transactions} transactions, {result.entries} entries: "
              f"{'every transaction balances and every balance equals its entries' if result.ok else result.problem}")
        return result.ok

    _migrate(config)
    if not asyncio.run(check()):
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    if not __debug__:
        print("apss: refusing to run with python -O: assertions guard the invariants", file=sys.stderr)
        raise SystemExit(2)
    parser = argparse.ArgumentParser(prog="apss", description="Automated Payment & Settlement System")
    parser.add_argument("--config", default=None, help="config file (default: $APSS_CONFIG or ./config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply migrations and start the server")
    commands.add_parser("migrate", help="apply migrations and exit")
    ledger = commands.add_parser("ledger", help="ledger tools")
    ledger.add_argument("action", choices=["check"], help="check: prove the ledger balances; exit 1 naming the first bad entry")
    args = parser.parse_args(argv)
    config = _load(args.config)
    if args.command == "migrate":
        _migrate(config)
    elif args.command == "ledger":
        _ledger_check(config)
    else:
        _serve(config)


if __name__ == "__main__":
    main()
