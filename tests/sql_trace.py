"""The statements the writer runs for each transaction function, counted through the real app
(for tests that keep a transaction's statement count from growing back)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from apss.store.db import Database, Tx

__all__ = ["traced_transactions"]


@contextmanager
def traced_transactions(db: Database) -> Iterator[dict[str, list[list[str]]]]:
    """While in the block: the SQL each transaction function given to `db.write` ran, one list per
    run (a replayed batch runs it again), under the function's qualified name (e.g.
    `PaymentEvents.handle_callback.<locals>.transaction`). The batch's own BEGIN and COMMIT, and
    other functions of the same batch, are not counted: the functions run one by one on the writer
    thread, which alone reads and sets `current`."""
    runs: dict[str, list[list[str]]] = {}
    current: list[list[str] | None] = [None]
    write = db.write

    async def traced_write(fn):
        def traced(tx: Tx):
            statements: list[str] = []
            runs.setdefault(fn.__qualname__, []).append(statements)
            current[0] = statements
            try:
                return fn(tx)
            finally:
                current[0] = None
        return await write(traced)

    def on_statement(sql: str) -> None:
        if current[0] is not None:
            current[0].append(sql)

    asyncio.run(db.set_statement_trace(on_statement))  # from the test's thread: its own loop waits for it
    db.write = traced_write
    try:
        yield runs
    finally:
        del db.write
        asyncio.run(db.set_statement_trace(None))
