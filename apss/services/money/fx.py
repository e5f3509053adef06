"""The FX rate table: admin-set rates (API or CSV import), kept as history, and the quote that
prices an order in the player's currency when the product has no price in it.

A rate `base/quote = r` means 1 base is worth r quote. Rates are global (not per merchant). For
a pair the stored rate with the latest `as_of` at or before now is in force; older rows stay as
history, and a row sent again for the same (base, quote, as_of) replaces the stored one, so a
re-sent request or re-imported file changes nothing.
"""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.clock import Clock, format_rfc3339, parse_rfc3339
from apss.domain.fx import Quote, format_rate, invert_rate, parse_rate
from apss.domain.money import is_iso_currency
from apss.errors import CurrencyNotSupported, InvalidRequest
from apss.store import fx as store
from apss.store.db import Database, Tx

__all__ = [
    "AS_OF_FUTURE_MS_MAX",
    "CSV_ROWS_MAX",
    "FxImportView",
    "FxRateIn",
    "FxRateList",
    "FxRateView",
    "FxRates",
    "FxRatesIn",
    "Quote",
    "RATES_PER_REQUEST_MAX",
    "quote_tx",
]

RATES_PER_REQUEST_MAX = 1000
CSV_ROWS_MAX = 10_000
AS_OF_FUTURE_MS_MAX = 5 * 60 * 1000  # clock skew allowed between the rate source and us
_CSV_HEADER = ["base", "quote", "rate", "as_of"]
# RFC 3339 date-time with a zone (Z or an offset), as in API.md's `_at` fields; fromisoformat
# alone would also take dates without a time or a zone, which we refuse rather than guess.
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")

CurrencyCode = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]


class FxRateIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    base: CurrencyCode
    quote: CurrencyCode
    rate: Annotated[str, Meta(min_length=1, max_length=32, description="1 base = rate quote; a decimal string such as '0.9215', never a number")]
    as_of: Annotated[str, Meta(max_length=40, description="RFC 3339 time the rate is valid from; default now")] | None = None


class FxRatesIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rates: Annotated[list[FxRateIn], Meta(min_length=1, max_length=RATES_PER_REQUEST_MAX)]


class FxRateView(msgspec.Struct, frozen=True, kw_only=True):
    base: str
    quote: str
    rate: str
    as_of: str
    source: Literal["api", "csv"]
    created_at: str


class FxRateList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[FxRateView]
    has_more: bool
    next_cursor: str | None


class FxImportView(msgspec.Struct, frozen=True, kw_only=True):
    rows: int  # rows in the file, all stored
    created: int  # rows that were new
    replaced: int  # rows that replaced a stored rate of the same pair and as_of
    pairs: int  # distinct pairs in the file


def _view(row) -> FxRateView:
    assert row["base"] != row["quote"] and row["source"] in ("api", "csv"), dict(row)
    assert format_rate(parse_rate(row["rate"])) == row["rate"], row["rate"]  # stored canonical
    return FxRateView(base=row["base"], quote=row["quote"], rate=row["rate"], as_of=format_rfc3339(row["as_of_ms"]),
                      source=row["source"], created_at=format_rfc3339(row["created_at_ms"]))


def _parse_as_of(text: str, *, now_ms: int) -> int:
    if _RFC3339_RE.match(text) is None:
        raise InvalidRequest(f"as_of must be an RFC 3339 time such as '2026-11-25T15:04:05Z'; got {text!r}.",
                             code="fx_as_of_invalid", param="as_of")
    try:
        as_of_ms = parse_rfc3339(text)
    except ValueError:
        raise InvalidRequest(f"as_of is not a valid time: {text!r}.", code="fx_as_of_invalid", param="as_of") from None
    if as_of_ms < 0:
        raise InvalidRequest("as_of must not be before 1970.", code="fx_as_of_invalid", param="as_of")
    if as_of_ms > now_ms + AS_OF_FUTURE_MS_MAX:
        raise InvalidRequest(f"as_of {text} is more than {AS_OF_FUTURE_MS_MAX // 60_000} minutes in the future.",
                             code="fx_as_of_in_future", param="as_of")
    return as_of_ms


def _check_row(*, base: str, quote: str, rate: str, as_of: str | None, now_ms: int, source: str) -> dict:
    """One validated row for the store. Errors name the field alone (`param="rate"`); callers
    prefix it with the row's place (`rates[2].rate`, `line 3`)."""
    for field, code in (("base", base), ("quote", quote)):
        if not is_iso_currency(code):
            raise CurrencyNotSupported(f"'{code}' is not a supported ISO 4217 currency.", param=field)
    if base == quote:
        raise InvalidRequest(f"A rate needs two different currencies; got {base}/{quote}.", code="fx_pair_invalid",
                             param="quote")
    as_of_ms = now_ms if as_of is None else _parse_as_of(as_of, now_ms=now_ms)
    row = {"base": base, "quote": quote, "rate": format_rate(parse_rate(rate)), "as_of_ms": as_of_ms,
           "source": source, "created_at_ms": now_ms}
    assert row["as_of_ms"] <= now_ms + AS_OF_FUTURE_MS_MAX
    return row


def _check_unique(rows: list[dict], places: list[str]) -> None:
    assert len(rows) == len(places)
    seen: dict[tuple[str, str, int], str] = {}
    for row, place in zip(rows, places):
        key = (row["base"], row["quote"], row["as_of_ms"])
        if key in seen:
            raise InvalidRequest(f"{place} repeats the rate {key[0]}/{key[1]} as of {format_rfc3339(key[2])}"
                                 f" given at {seen[key]}.", code="fx_rate_duplicate", param=place)
        seen[key] = place


def _read_csv(data: bytes) -> list[tuple[int, list[str]]]:
    """The data rows of a CSV file with their line numbers (the header is line 1)."""
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of "base"
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The file must be UTF-8 text: {exc}.", code="fx_csv_invalid") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader, None)
        if header is None or [field.strip() for field in header] != _CSV_HEADER:
            raise InvalidRequest(f"The first line must be the header '{','.join(_CSV_HEADER)}'.",
                                 code="fx_csv_header_invalid", param="line 1")
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue  # blank lines (a trailing newline, spacing) carry no rate
            if len(rows) == CSV_ROWS_MAX:
                raise InvalidRequest(f"A file may hold at most {CSV_ROWS_MAX} rates; split it.",
                                     code="fx_csv_too_large", param=f"line {reader.line_num}")
            rows.append((reader.line_num, [field.strip() for field in fields]))
    except csv.Error as exc:
        raise InvalidRequest(f"line {reader.line_num}: {exc}.", code="fx_csv_invalid", param=f"line {reader.line_num}") from None
    if not rows:
        raise InvalidRequest("The file holds no rates.", code="fx_csv_empty", param="line 2")
    assert len(rows) <= CSV_ROWS_MAX
    return rows


def _rows_from_csv(lines: list[tuple[int, list[str]]], *, now_ms: int) -> list[dict]:
    rows = []
    for line, fields in lines:
        place = f"line {line}"
        if len(fields) != len(_CSV_HEADER):
            raise InvalidRequest(f"{place}: expected {len(_CSV_HEADER)} fields ({','.join(_CSV_HEADER)}), got {len(fields)}.",
                                 code="fx_csv_invalid", param=place)
        base, quote, rate, as_of = fields
        if not as_of:
            raise InvalidRequest(f"{place}: as_of is required in a file.", code="fx_as_of_invalid", param=place)
        try:
            rows.append(_check_row(base=base, quote=quote, rate=rate, as_of=as_of, now_ms=now_ms, source="csv"))
        except InvalidRequest as exc:
            raise type(exc)(f"{place}, {exc.param}: {exc.message}", code=exc.code, param=place) from None
    _check_unique(rows, [f"line {line}" for line, _ in lines])
    return rows


def _store(tx: Tx, rows: list[dict]) -> int:
    """Insert or replace `rows`; returns how many replaced a stored rate."""
    replaced = sum(store.rate_exists_tx(tx, base=r["base"], quote=r["quote"], as_of_ms=r["as_of_ms"]) for r in rows)
    store.insert_rates(tx, rows)
    assert 0 <= replaced <= len(rows)
    return replaced


class FxRates:
    def __init__(self, *, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def set_rates(self, rates: list[FxRateIn]) -> list[FxRateView]:
        """Store `rates` in one transaction, all or none. A missing as_of means now."""
        assert 1 <= len(rates) <= RATES_PER_REQUEST_MAX
        now_ms = self._clock.now_ms()
        rows = []
        for index, rate in enumerate(rates):
            try:
                rows.append(_check_row(base=rate.base, quote=rate.quote, rate=rate.rate, as_of=rate.as_of,
                                       now_ms=now_ms, source="api"))
            except InvalidRequest as exc:
                raise type(exc)(exc.message, code=exc.code, param=f"rates[{index}].{exc.param}") from None
        _check_unique(rows, [f"rates[{index}]" for index in range(len(rows))])
        await self._db.write(lambda tx: _store(tx, rows))
        return [_view(row) for row in rows]

    async def import_csv(self, data: bytes) -> FxImportView:
        """Import a CSV file `base,quote,rate,as_of` (as_of RFC 3339, required), all or nothing:
        the first bad row refuses the whole file, naming its line (`param: "line 3"`)."""
        lines = _read_csv(data)
        rows = _rows_from_csv(lines, now_ms=self._clock.now_ms())
        replaced = await self._db.write(lambda tx: _store(tx, rows))
        pairs = len({(row["base"], row["quote"]) for row in rows})
        return FxImportView(rows=len(rows), created=len(rows) - replaced, replaced=replaced, pairs=pairs)

    async def list(self) -> list[FxRateView]:
        """The latest stored rate of every pair, ordered by pair."""
        return [_view(row) for row in await store.list_latest(self._db)]

    async def history(self, *, base: str, quote: str, limit: int, cursor: str | None) -> tuple[list[FxRateView], bool, str | None]:
        """One pair's rates, newest first; returns (page, has_more, next_cursor)."""
        assert 1 <= limit <= 100
        before_ms = None
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 16:
                raise InvalidRequest("cursor must be the next_cursor of the previous page.", code="cursor_invalid", param="cursor")
            before_ms = int(cursor)
        rows = await store.history(self._db, base=base, quote=quote, limit=limit + 1, before_ms=before_ms)
        page, has_more = rows[:limit], len(rows) > limit
        return [_view(row) for row in page], has_more, str(page[-1]["as_of_ms"]) if has_more else None


def quote_tx(tx: Tx, *, base: str, quote: str, now_ms: int, age_max_ms: int) -> Quote | None:
    """The rate to convert `base` -> `quote` at `now_ms`, or None when no usable rate is stored.

    The stored `base/quote` rate in force (latest as_of at or before now) is used if it is at most
    `age_max_ms` old. Otherwise the opposite pair `quote/base` is tried under the same age rule,
    and 1 / its rate is used, rounded half-even to 12 significant digits (`invert_rate`), with
    `inverse=True` and the stored rate's as_of. A stated pair always wins over an inverted one:
    the inverse only fills a gap. Runs inside the caller's transaction (e.g. order creation), so
    the rate read is the one the order is priced with."""
    assert base != quote and is_iso_currency(base) and is_iso_currency(quote), (base, quote)
    assert age_max_ms >= 0 and now_ms >= 0
    for stored_base, stored_quote in ((base, quote), (quote, base)):
        row = store.latest_rate_tx(tx, base=stored_base, quote=stored_quote, as_of_max_ms=now_ms)
        if row is None or now_ms - row["as_of_ms"] > age_max_ms:
            continue
        rate: Decimal = parse_rate(row["rate"])
        inverse = stored_base != base
        found = Quote(base=base, quote=quote, rate=invert_rate(rate) if inverse else rate, as_of_ms=row["as_of_ms"],
                      inverse=inverse)
        assert found.as_of_ms <= now_ms
        return found
    return None
