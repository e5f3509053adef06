"""Settlement in chunks, on a real SQLite file: a 10,000-payment period settles in transactions of
at most database.chunk_rows_max ledger transactions; a run cut off mid-way (the process died)
goes on where it stopped at the next run, and what it makes equals the single-pass settlement to
the line and the unit; a batch being built is seen by neither the API nor payout.

The period is seeded straight through the ledger service (10,000 captures and 300 refunds in two
currencies and two channels, many sharing a millisecond), copied, and settled both ways."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from apss.clock import TestClock, parse_rfc3339
from apss.config import FinanceConfig
from apss.crypto import Keyring
from apss.domain.ledger import capture_entries, reversal_entries
from apss.domain.settlement import Line, build_batch
from apss.services.idempotency import Idempotency
from apss.services.merchants.keys import Merchants
from apss.services.money.ledger import Ledger
from apss.services.money.settlement import ScheduleIn, Settlements
from apss.store import settlement as store
from apss.store.db import Database
from apss.store.migrate import apply_migrations

pytestmark = pytest.mark.anyio
START = "2030-03-04T10:00:00Z"
SETTLED_AT = "2030-03-05T00:30:00Z"  # after the first daily cut-off (00:00 UTC)
PAYMENTS, REFUNDS, CHUNK_ROWS_MAX = 10_000, 300, 1000


class _Crash(Exception):
    """The process dying in the middle of a chunk: that chunk's transaction never commits."""


def _services(path: str, clock: TestClock, *, chunk_rows_max: int) -> tuple[Database, Settlements, Ledger]:
    db = Database(path)
    ledger = Ledger(db=db, clock=clock, config=FinanceConfig())
    idempotency = Idempotency(render_error=lambda error: (500, b"{}"), clock_now_ms=clock.now_ms)
    return db, Settlements(db=db, clock=clock, ledger=ledger, idempotency=idempotency, chunk_rows_max=chunk_rows_max), ledger


def _seed_posts(ledger: Ledger, clock: TestClock, merchant_id: str, first: int, count: int):
    def fn(tx) -> None:
        for n in range(first, first + count):
            currency, channel = ("USD", "sandbox") if n % 3 else ("EUR", "stripe")
            gross = 500 + n % 977
            ledger.post(tx, merchant_id=merchant_id, kind="payment_captured", reference=f"pay_{n:05d}",
                        entries=capture_entries(merchant_id=merchant_id, channel=channel, gross=gross, fee=30 + n % 7,
                                                currency=currency, commission_bps=3000, splits=[]))
            if n % (PAYMENTS // REFUNDS) == 0:
                ledger.post(tx, merchant_id=merchant_id, kind="refund", reference=f"re_{n:05d}",
                            entries=reversal_entries(merchant_id=merchant_id, channel=channel, gross=gross,
                                                     refunded_before=0, amount=gross // 2, currency=currency,
                                                     commission_bps=3000, splits=[]))
            if n % 7 == 0:  # several transactions share each millisecond: the cursor is (time, id)
                clock.advance(seconds=0.001)
    return fn


async def _seeded_period(tmp_path) -> tuple[str, str]:
    """A database with one daily-settled merchant and a period of PAYMENTS captures; its path and merchant."""
    path = str(tmp_path / "seeded.sqlite")
    apply_migrations(path)
    clock = TestClock(parse_rfc3339(START))
    db, settlements, ledger = _services(path, clock, chunk_rows_max=CHUNK_ROWS_MAX)
    await db.start()
    try:
        merchants = Merchants(db=db, clock=clock, keyring=Keyring({"k1": os.urandom(32)}, primary="k1"), live_mode_allowed=True)
        merchant_id = (await merchants.create(name="Big Studio", mode="test")).id
        await settlements.set_schedule(merchant_id, ScheduleIn(cycle="daily", reserve_bps=500, reserve_hold_days=7,
                                                               minimum_payout={"EUR": 100}))
        clock.advance(seconds=1)
        for first in range(0, PAYMENTS, 1000):
            await db.write(_seed_posts(ledger, clock, merchant_id, first, 1000))
    finally:
        await db.close()
    checkpoint = sqlite3.connect(path)
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()
    return path, merchant_id


def _copy(path: str, name: str) -> str:
    target = os.path.join(os.path.dirname(path), name)
    shutil.copy(path, target)
    return target


def _settled(path: str, merchant_id: str) -> dict[str, tuple[dict, list[tuple]]]:
    """Per currency: the batch (without its id and creation time) and its lines (the batch's own
    id as a reference replaced by 'self'), read with a raw connection."""
    raw = sqlite3.connect(path)
    raw.row_factory = sqlite3.Row
    try:
        found = {}
        for row in raw.execute("SELECT * FROM settlements WHERE merchant_id = ? ORDER BY currency", (merchant_id,)):
            batch = {k: row[k] for k in row.keys() if k not in ("id", "created_at_ms")}
            lines = [tuple("self" if value == row["id"] else value for value in tuple(line)[1:])
                     for line in raw.execute("SELECT * FROM settlement_lines WHERE settlement_id = ? ORDER BY line",
                                             (row["id"],))]
            found[row["currency"]] = (batch, lines)
        return found
    finally:
        raw.close()


async def _run(path: str, *, chunk_rows_max: int, crash_in_chunk: int | None = None) -> tuple[int, Database, Settlements]:
    """Run the settlement job once on a fresh process's services; (transactions committed, db, service)."""
    clock = TestClock(parse_rfc3339(SETTLED_AT))
    db, settlements, _ = _services(path, clock, chunk_rows_max=chunk_rows_max)
    await db.start()
    if crash_in_chunk is not None:
        real, calls = settlements._settle_chunk, []

        def crashing(tx, **arguments):
            made = real(tx, **arguments)  # the chunk wrote its rows...
            calls.append(made)
            if len(calls) == crash_in_chunk:
                raise _Crash("killed mid-chunk")  # ...and never commits them
            return made

        settlements._settle_chunk = crashing
    before = db.batches_committed
    try:
        await settlements.run_due()
    except _Crash:
        pass
    return db.batches_committed - before, db, settlements


async def test_a_big_period_settles_in_chunks_resumes_after_a_crash_and_equals_one_pass(tmp_path):
    seeded, merchant_id = await _seeded_period(tmp_path)
    chunked, single = _copy(seeded, "chunked.sqlite"), _copy(seeded, "single.sqlite")

    # The first run dies in its 5th chunk: 4 chunks committed, nothing of them visible.
    committed_first, db, settlements = await _run(chunked, chunk_rows_max=CHUNK_ROWS_MAX, crash_in_chunk=5)
    try:
        lines = await db.fetch_one("SELECT count(*) AS n FROM settlement_lines l JOIN settlements s"
                                   " ON s.id = l.settlement_id WHERE s.complete = 0")
        assert lines["n"] == 4 * CHUNK_ROWS_MAX, "4 chunks committed; the 5th left nothing"
        assert await settlements.list(merchant_id=merchant_id, after_id=None, limit=100) == ([], False)
        building = await db.fetch_all("SELECT id, status FROM settlements WHERE complete = 0")
        assert {row["status"] for row in building} == {"pending"} and len(building) == 2
        for row in building:  # neither the API nor payout sees a batch being built
            assert await store.fetch_settlement(db, settlement_id=row["id"]) is None
            with pytest.raises(Exception, match="No such settlement"):
                await settlements.mark_paid(settlement_id=row["id"], payout_reference="too-early")
        schedule = await store.fetch_schedule(db, merchant_id=merchant_id)
        assert schedule["settling_cutoff_at_ms"] == parse_rfc3339("2030-03-05T00:00:00Z")
        assert schedule["last_cutoff_at_ms"] < schedule["settling_cutoff_at_ms"], "the markers wait for the last chunk"
    finally:
        await db.close()

    # The next run (a new process) goes on where the first stopped.
    committed_second, db, settlements = await _run(chunked, chunk_rows_max=CHUNK_ROWS_MAX)
    try:
        assert committed_first + committed_second >= (PAYMENTS + REFUNDS) // CHUNK_ROWS_MAX
        batches, has_more = await settlements.list(merchant_id=merchant_id, after_id=None, limit=100)
        assert {b.currency for b in batches} == {"USD", "EUR"} and not has_more
        pending = next(b for b in batches if b.status == "pending")
        await settlements.mark_paid(settlement_id=pending.id, payout_reference="wire-1")
        assert (await Ledger(db=db, clock=None, config=FinanceConfig()).check()).ok
    finally:
        await db.close()

    committed_single, db, _ = await _run(single, chunk_rows_max=1_000_000)
    await db.close()
    assert committed_single == 1, "one chunk holds the whole period: one transaction"

    chunked_result, single_result = _settled(chunked, merchant_id), _settled(single, merchant_id)
    assert set(chunked_result) == {"USD", "EUR"}
    for currency, (batch, lines) in single_result.items():
        chunked_batch, chunked_lines = chunked_result[currency]
        paid = {"status", "payout_reference", "paid_at_ms"}  # only the chunked copy was paid out since
        assert {k: v for k, v in chunked_batch.items() if k not in paid} == {k: v for k, v in batch.items() if k not in paid}
        assert chunked_lines == lines, currency
        assert batch["complete"] == 1 and len(lines) > (PAYMENTS // 3 if currency == "EUR" else PAYMENTS // 2)
        # And both equal the pure rules applied to the whole period at once.
        activity = [Line(kind=l[1], reference=l[2], order_id=l[3], channel=l[4], amount=l[5], fee=l[6], commission=l[7],
                         partner_shares=l[8], net=l[9], occurred_at_ms=l[10]) for l in lines if l[1] != "reserve_hold"]
        whole = build_batch(settlement_id="self", activity=activity, released=[], carried=[], reserve_bps=500,
                            minimum_payout=100 if currency == "EUR" else 0, at_ms=batch["cutoff_at_ms"])
        assert whole.status == batch["status"]
        assert (whole.gross, whole.refunds, whole.fees, whole.commission, whole.reserve_held, whole.net_payable) == (
            batch["gross"], batch["refunds"], batch["fees"], batch["commission"], batch["reserve_held"],
            batch["net_payable"])
        assert [(l.kind, l.channel, l.net) for l in whole.lines] == [(l[1], l[4], l[9]) for l in lines]


# -- the manual run (POST /v1/settlements/run) -------------------------------------------------------
MANUAL_PAYMENTS, MANUAL_CHUNK = 2_000, 300


async def _manual_period(tmp_path) -> tuple[str, str]:
    path = str(tmp_path / "manual.sqlite")
    apply_migrations(path)
    clock = TestClock(parse_rfc3339(START))
    db, settlements, ledger = _services(path, clock, chunk_rows_max=MANUAL_CHUNK)
    await db.start()
    try:
        merchants = Merchants(db=db, clock=clock, keyring=Keyring({"k1": os.urandom(32)}, primary="k1"), live_mode_allowed=True)
        merchant_id = (await merchants.create(name="Manual Studio", mode="test")).id
        await settlements.set_schedule(merchant_id, ScheduleIn(cycle="manual"))
        clock.advance(seconds=1)
        await db.write(_seed_posts(ledger, clock, merchant_id, 0, MANUAL_PAYMENTS))
    finally:
        await db.close()
    return path, merchant_id


async def _manual_services(path: str, *, chunk_rows_max: int) -> tuple[Database, Settlements]:
    db, settlements, _ = _services(path, TestClock(parse_rfc3339(SETTLED_AT)), chunk_rows_max=chunk_rows_max)
    await db.start()
    return db, settlements


async def test_a_manual_run_settles_in_chunks_once_per_key_and_is_finished_after_a_crash(tmp_path):
    from apss.errors import IdempotencyKeyInUse
    from apss.services.idempotency import IdempotencyRequest

    seeded, merchant_id = await _manual_period(tmp_path)
    chunked, single = _copy(seeded, "manual_chunked.sqlite"), _copy(seeded, "manual_single.sqlite")
    key = IdempotencyRequest(key="run-1", request_hash="0" * 64)

    # The request dies in its 3rd chunk: 2 chunks committed, the key still running.
    db, settlements = await _manual_services(chunked, chunk_rows_max=MANUAL_CHUNK)
    real, calls = settlements._settle_chunk, []

    def crashing(tx, **arguments):
        made = real(tx, **arguments)
        calls.append(made)
        if len(calls) == 3:
            raise _Crash("killed mid-chunk")
        return made

    settlements._settle_chunk = crashing
    with pytest.raises(_Crash):
        await settlements.settle_now(merchant_id=merchant_id, idem=key)
    lines = await db.fetch_one("SELECT count(*) AS n FROM settlement_lines l JOIN settlements s"
                               " ON s.id = l.settlement_id WHERE s.complete = 0")
    assert lines["n"] == 2 * MANUAL_CHUNK, "the first chunk held the key, the second went on, the third left nothing"
    held = await db.fetch_one("SELECT state FROM idempotency_keys WHERE key = ?", (key.key,))
    assert held["state"] == "running"
    settlements._settle_chunk = real
    with pytest.raises(IdempotencyKeyInUse):  # a retry while it is cut: never a second run
        await settlements.settle_now(merchant_id=merchant_id, idem=key)
    assert await settlements.list(merchant_id=merchant_id, after_id=None, limit=100) == ([], False)

    # Finished (at start, or by the completer): the rest of the chunks, then the key's answer.
    before = db.batches_committed
    finished = await settlements.resume(merchant_id=merchant_id, idem_key=key.key)
    assert db.batches_committed - before >= MANUAL_PAYMENTS // MANUAL_CHUNK - 2
    replay = await settlements.settle_now(merchant_id=merchant_id, idem=key)
    assert replay.replayed and (replay.status, replay.body) == (finished.status, finished.body)
    made = {batch["currency"] for batch in json.loads(finished.body)["data"]}
    assert made == {"USD", "EUR"}
    await db.close()

    # The same period in one pass, without a key: the same batches to the line.
    db, settlements = await _manual_services(single, chunk_rows_max=1_000_000)
    before = db.batches_committed
    await settlements.settle_now(merchant_id=merchant_id, idem=None)
    assert db.batches_committed - before == 2, "one chunk, one answer"
    await db.close()
    assert _settled(chunked, merchant_id) == _settled(single, merchant_id)
