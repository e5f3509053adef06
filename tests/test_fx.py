"""The FX rate table: exact conversion with explicit half-even rounding (pure), and the admin API
(set, list, history, CSV import all-or-nothing, auth) on a real database (a SQLite file, and a
PostgreSQL one: `both_backends`) through a small app of its own, plus the in-transaction quote (inverse pair, age limit, future-dated rates)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from apss.api.errors import exception_handlers
from apss.api.fx import FxController
from apss.clock import TestClock, format_rfc3339, parse_rfc3339
from apss.domain.fx import Quote, convert, format_rate, invert_rate, parse_rate
from apss.domain.money import CURRENCY_EXPONENTS
from apss.errors import AuthenticationFailed, InvalidRequest
from apss.services.money.fx import CSV_ROWS_MAX, FxRates, quote_tx
from apss.store.db import Database
from apss.store.migrate import apply_migrations
from apss.store.pg_db import PgDatabase
from tests.conftest import some_services as Services

pytestmark = pytest.mark.both_backends  # the admin API's tests; the pure ones take no backend
PROPERTY = settings(max_examples=200, deadline=None)
ADMIN = "adm_fx_test_token_0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CSV = {**AUTH, "Content-Type": "text/csv"}
NOW_MS = parse_rfc3339("2026-11-25T15:04:05Z")
HOUR_MS = 3_600_000

# -- pure: parsing and converting ------------------------------------------------------------------


def test_convert_examples():
    assert convert(1999, from_currency="USD", to_currency="JPY", rate=Decimal("151.37")) == 3026  # 3025.8863
    exact = Decimal(1000) / Decimal(10) ** 0 * Decimal("0.00203") * Decimal(10) ** 3  # JPY -> KWD
    assert exact == Decimal("2030.00000")
    assert convert(1000, from_currency="JPY", to_currency="KWD", rate=Decimal("0.00203")) == 2030
    assert convert(1005, from_currency="USD", to_currency="EUR", rate=Decimal("0.5")) == 502  # 502.5 half-even
    assert convert(1015, from_currency="USD", to_currency="EUR", rate=Decimal("0.5")) == 508  # 507.5 half-even
    assert convert(1, from_currency="KWD", to_currency="JPY", rate=Decimal("492.6")) == 0  # 0.4926
    assert convert(0, from_currency="USD", to_currency="JPY", rate=Decimal("151.37")) == 0


@pytest.mark.parametrize("text", ["0.9215", "151.37", "1", "0.000000000001", "123456789.5", "1.50"])
def test_parse_rate_accepts_plain_positive_decimals(text):
    rate = parse_rate(text)
    assert rate == Decimal(text) and rate > 0
    assert parse_rate(format_rate(rate)) == rate


@pytest.mark.parametrize("text", ["0", "0.000", "-1.2", "+1.2", "1e-3", "1E3", "NaN", "Infinity", "", " 1.2", "1.2 ",
                                  ".5", "1.", "01.5", "1,5", "0.0000000000001", "1234567890", "0x10", "١٫٥"])
def test_parse_rate_refuses_the_rest(text):
    with pytest.raises(InvalidRequest) as caught:
        parse_rate(text)
    assert caught.value.code == "fx_rate_invalid"


def test_format_rate_is_plain_and_canonical():
    assert format_rate(Decimal("1.50")) == "1.5"
    assert format_rate(Decimal("100")) == "100"
    assert format_rate(Decimal("0.000000000001")) == "0.000000000001"


def test_invert_rate_rounds_to_12_significant_digits_half_even():
    assert invert_rate(Decimal("151.37")) == Decimal("0.00660632886305")  # 0.006606328863050...
    assert invert_rate(Decimal("0.5")) == Decimal(2)
    assert invert_rate(Decimal("3")) == Decimal("0.333333333333")
    assert len(invert_rate(Decimal("7")).as_tuple().digits) == 12


currencies = st.sampled_from(["JPY", "KRW", "USD", "EUR", "GBP", "KWD", "BHD"])
amounts = st.integers(min_value=0, max_value=10**12)
rates = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("100000"), places=6, allow_nan=False,
                    allow_infinity=False).filter(lambda d: d > 0)


@PROPERTY
@given(amount=amounts, step=st.integers(min_value=0, max_value=10**6), source=currencies, target=currencies, rate=rates)
def test_convert_is_monotonic_in_the_amount(amount, step, source, target, rate):
    lower = convert(amount, from_currency=source, to_currency=target, rate=rate)
    higher = convert(amount + step, from_currency=source, to_currency=target, rate=rate)
    assert type(lower) is int and type(higher) is int
    assert lower <= higher


@PROPERTY
@given(amount=st.integers(min_value=-(10**15), max_value=10**15), source=st.sampled_from(["USD", "EUR", "GBP", "CAD"]),
       target=st.sampled_from(["USD", "EUR", "GBP", "CAD"]))
def test_convert_at_rate_one_between_two_decimal_currencies_is_the_identity(amount, source, target):
    assert convert(amount, from_currency=source, to_currency=target, rate=Decimal(1)) == amount


@PROPERTY
@given(amount=amounts, source=currencies, target=currencies, rate=rates)
def test_convert_equals_the_exact_value_rounded_half_even(amount, source, target, rate):
    exact = (Decimal(amount) * rate * Decimal(10) ** (CURRENCY_EXPONENTS[target] - CURRENCY_EXPONENTS[source]))
    expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    result = convert(amount, from_currency=source, to_currency=target, rate=rate)
    assert type(result) is int and result == expected
    assert abs(Decimal(result) - exact) <= Decimal("0.5")


# -- the admin API on a real database ---------------------------------------------------------------


class _Admin:
    """The merchants service as admin_guard sees it: one valid admin token."""

    def check_admin(self, token: str, *, address: str) -> None:
        if token != ADMIN:
            raise AuthenticationFailed("Invalid admin token provided.")


class _Harness:
    def __init__(self, *, client: AsyncTestClient, db: Database, clock: TestClock) -> None:
        self.client = client
        self.db = db
        self.clock = clock

    async def quote(self, base: str, quote: str, *, age_max_ms: int = 24 * HOUR_MS) -> Quote | None:
        now_ms = self.clock.now_ms()
        return await self.db.write(lambda tx: quote_tx(tx, base=base, quote=quote, now_ms=now_ms, age_max_ms=age_max_ms))

    async def stored(self) -> int:
        return (await self.db.fetch_one("SELECT count(*) AS n FROM fx_rates"))["n"]


@asynccontextmanager
async def _harness(target: str) -> AsyncIterator[_Harness]:
    apply_migrations(target)
    db = PgDatabase(target) if target.startswith("postgresql") else Database(target)
    await db.start()
    clock = TestClock(NOW_MS)
    svc = Services(fx=FxRates(db=db, clock=clock), merchants=_Admin())
    app = Litestar(route_handlers=[FxController], dependencies={"svc": Provide(lambda: svc, sync_to_thread=False)},
                   exception_handlers=exception_handlers, logging_config=None)
    try:
        async with AsyncTestClient(app) as client:
            yield _Harness(client=client, db=db, clock=clock)
    finally:
        await db.close()


@pytest.fixture
def fx_database(tmp_path, backend, database_env) -> str:
    """The harness's database on the test's backend: a SQLite file, or a new PostgreSQL database's URL."""
    return database_env(backend).get("APSS_DATABASE_URL", str(tmp_path / "fx.sqlite"))


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.anyio
async def test_set_list_and_history(fx_database):
    async with _harness(fx_database) as h:
        put = await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [
            {"base": "USD", "quote": "EUR", "rate": "0.9215"},
            {"base": "USD", "quote": "JPY", "rate": "151.370", "as_of": "2026-11-25T14:00:00Z"},
        ]})
        assert put.status_code == 200, put.text
        assert put.json()["data"] == [
            {"base": "USD", "quote": "EUR", "rate": "0.9215", "as_of": "2026-11-25T15:04:05Z", "source": "api",
             "created_at": "2026-11-25T15:04:05Z"},
            {"base": "USD", "quote": "JPY", "rate": "151.37", "as_of": "2026-11-25T14:00:00Z", "source": "api",
             "created_at": "2026-11-25T15:04:05Z"},
        ]
        h.clock.advance(seconds=60)
        await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [{"base": "USD", "quote": "EUR", "rate": "0.93"}]})
        listed = (await h.client.get("/v1/admin/fx_rates", headers=AUTH)).json()
        assert listed["has_more"] is False and listed["next_cursor"] is None
        assert [(r["base"], r["quote"], r["rate"], r["as_of"]) for r in listed["data"]] == [
            ("USD", "EUR", "0.93", "2026-11-25T15:05:05Z"), ("USD", "JPY", "151.37", "2026-11-25T14:00:00Z")]
        first = (await h.client.get("/v1/admin/fx_rates/USD/EUR", headers=AUTH, params={"limit": 1})).json()
        assert [r["rate"] for r in first["data"]] == ["0.93"] and first["has_more"] is True
        rest = (await h.client.get("/v1/admin/fx_rates/USD/EUR", headers=AUTH,
                                   params={"limit": 1, "cursor": first["next_cursor"]})).json()
        assert [r["rate"] for r in rest["data"]] == ["0.9215"] and rest["has_more"] is False
        assert (await h.quote("USD", "EUR")).rate == Decimal("0.93")


@pytest.mark.anyio
async def test_set_rates_refuses_bad_input_and_stores_nothing(fx_database):
    async with _harness(fx_database) as h:
        async def refused(rates: list[dict]) -> dict:
            return _error(await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": rates}), 400)

        good = {"base": "USD", "quote": "EUR", "rate": "0.9"}
        error = await refused([good, {"base": "USD", "quote": "JPY", "rate": "1e2"}])
        assert (error["code"], error["param"]) == ("fx_rate_invalid", "rates[1].rate")
        error = await refused([good, {"base": "USD", "quote": "JPY", "rate": 151.37}])  # a JSON float
        assert error["code"] == "parameter_invalid"
        error = await refused([{"base": "USD", "quote": "EUR", "rate": "0"}])
        assert (error["code"], error["param"]) == ("fx_rate_invalid", "rates[0].rate")
        error = await refused([{"base": "USD", "quote": "XXX", "rate": "1.1"}])
        assert (error["code"], error["param"]) == ("currency_not_supported", "rates[0].quote")
        error = await refused([{"base": "USD", "quote": "USD", "rate": "1"}])
        assert error["code"] == "fx_pair_invalid"
        error = await refused([{**good, "as_of": "2026-11-25T15:09:06Z"}])  # 5 min 1 s ahead
        assert (error["code"], error["param"]) == ("fx_as_of_in_future", "rates[0].as_of")
        error = await refused([{**good, "as_of": "2026-11-25"}])
        assert (error["code"], error["param"]) == ("fx_as_of_invalid", "rates[0].as_of")
        error = await refused([good, good])
        assert (error["code"], error["param"]) == ("fx_rate_duplicate", "rates[1]")
        assert (await refused([]))["code"] == "parameter_invalid"
        assert (await refused([{**good, "extra": 1}]))["code"] == "parameter_invalid"
        assert await h.stored() == 0
        ok = await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [{**good, "as_of": "2026-11-25T15:09:05Z"}]})
        assert ok.status_code == 200, ok.text  # exactly 5 minutes ahead is allowed (clock skew)


@pytest.mark.anyio
async def test_admin_token_is_required(fx_database):
    async with _harness(fx_database) as h:
        body = {"rates": [{"base": "USD", "quote": "EUR", "rate": "0.9"}]}
        attempts = [
            await h.client.get("/v1/admin/fx_rates"),
            await h.client.put("/v1/admin/fx_rates", json=body),
            await h.client.put("/v1/admin/fx_rates", json=body, headers={"Authorization": "Bearer sk_test_not_admin"}),
            await h.client.post("/v1/admin/fx_rates/import", content=b"base,quote,rate,as_of\n",
                                headers={"Content-Type": "text/csv"}),
            await h.client.get("/v1/admin/fx_rates/USD/EUR"),
        ]
        for response in attempts:
            assert _error(response, 401)["type"] == "authentication_error"
        assert await h.stored() == 0


@pytest.mark.anyio
async def test_csv_import_good_file(fx_database):
    data = ("\ufeffbase,quote,rate,as_of\r\n"
            "USD,EUR,0.9215,2026-11-25T15:04:05Z\r\n"
            "USD,EUR,0.9200,2026-11-24T15:04:05Z\r\n"
            "\r\n"
            " USD , JPY , 151.37 , 2026-11-25T12:00:00+00:00 \r\n"
            "EUR,KWD,0.3301,2026-11-25T15:00:00.250Z\r\n").encode()
    async with _harness(fx_database) as h:
        response = await h.client.post("/v1/admin/fx_rates/import", content=data, headers=CSV)
        assert response.status_code == 200, response.text
        assert response.json() == {"rows": 4, "created": 4, "replaced": 0, "pairs": 3}
        again = await h.client.post("/v1/admin/fx_rates/import", content=data, headers=CSV)
        assert again.json() == {"rows": 4, "created": 0, "replaced": 4, "pairs": 3}  # re-import changes nothing
        assert await h.stored() == 4
        listed = (await h.client.get("/v1/admin/fx_rates", headers=AUTH)).json()["data"]
        assert [(r["base"], r["quote"], r["rate"], r["as_of"], r["source"]) for r in listed] == [
            ("EUR", "KWD", "0.3301", "2026-11-25T15:00:00Z", "csv"),
            ("USD", "EUR", "0.9215", "2026-11-25T15:04:05Z", "csv"),
            ("USD", "JPY", "151.37", "2026-11-25T12:00:00Z", "csv"),
        ]
        assert (await h.client.post("/v1/admin/fx_rates/import", content=data,
                                    headers={**AUTH, "Content-Type": "application/json"})).status_code == 415


@pytest.mark.anyio
@pytest.mark.parametrize(("third_line", "code"), [
    ("USD,JPY,-151.37,2026-11-25T12:00:00Z", "fx_rate_invalid"),
    ("USD,JPY,1.5e2,2026-11-25T12:00:00Z", "fx_rate_invalid"),
    ("USD,XYZ,1.5,2026-11-25T12:00:00Z", "currency_not_supported"),
    ("USD,JPY,151.37,", "fx_as_of_invalid"),
    ("USD,JPY,151.37,2026-11-25 12:00", "fx_as_of_invalid"),
    ("USD,JPY,151.37,2026-11-26T12:00:00Z", "fx_as_of_in_future"),
    ("USD,JPY,151.37", "fx_csv_invalid"),
    ("USD,EUR,0.95,2026-11-25T15:04:05Z", "fx_rate_duplicate"),
])
async def test_csv_import_bad_row_names_its_line_and_stores_nothing(fx_database, third_line, code):
    data = f"base,quote,rate,as_of\nUSD,EUR,0.9215,2026-11-25T15:04:05Z\n{third_line}\nUSD,GBP,0.79,2026-11-25T15:04:05Z\n"
    async with _harness(fx_database) as h:
        error = _error(await h.client.post("/v1/admin/fx_rates/import", content=data.encode(), headers=CSV), 400)
        assert (error["code"], error["param"]) == (code, "line 3")
        assert "line 3" in error["message"]
        assert await h.stored() == 0


@pytest.mark.anyio
async def test_csv_import_refuses_bad_files(fx_database):
    async with _harness(fx_database) as h:
        async def refused(data: bytes) -> dict:
            return _error(await h.client.post("/v1/admin/fx_rates/import", content=data, headers=CSV), 400)

        assert (await refused(b""))["param"] == "line 1"
        assert (await refused(b"quote,base,rate,as_of\nUSD,EUR,1,2026-11-25T15:04:05Z\n"))["code"] == "fx_csv_header_invalid"
        assert (await refused(b"base,quote,rate,as_of\n\n"))["code"] == "fx_csv_empty"
        assert (await refused(b"base,quote,rate,as_of\nUSD,EUR,\xff,2026-11-25T15:04:05Z\n"))["code"] == "fx_csv_invalid"
        row = "USD,EUR,0.9,{}\n"
        times = [format_rfc3339(NOW_MS - seconds * 1000) for seconds in range(CSV_ROWS_MAX + 1)]
        too_many = ("base,quote,rate,as_of\n" + "".join(row.format(t) for t in times)).encode()
        error = await refused(too_many)
        assert (error["code"], error["param"]) == ("fx_csv_too_large", f"line {CSV_ROWS_MAX + 2}")
        assert await h.stored() == 0
        just_enough = ("base,quote,rate,as_of\n" + "".join(row.format(t) for t in times[:CSV_ROWS_MAX])).encode()
        response = await h.client.post("/v1/admin/fx_rates/import", content=just_enough, headers=CSV)
        assert response.json()["rows"] == CSV_ROWS_MAX


# -- quoting inside a transaction -------------------------------------------------------------------


@pytest.mark.anyio
async def test_quote_uses_the_inverse_pair_when_the_pair_is_missing(fx_database):
    async with _harness(fx_database) as h:
        await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [
            {"base": "USD", "quote": "JPY", "rate": "151.37", "as_of": "2026-11-25T15:00:00Z"}]})
        direct = await h.quote("USD", "JPY")
        assert direct == Quote(base="USD", quote="JPY", rate=Decimal("151.37"), as_of_ms=NOW_MS - 245_000, inverse=False)
        inverse = await h.quote("JPY", "USD")
        assert inverse == Quote(base="JPY", quote="USD", rate=Decimal("0.00660632886305"), as_of_ms=NOW_MS - 245_000,
                                inverse=True)
        assert convert(10_000, from_currency="JPY", to_currency="USD", rate=inverse.rate) == 6606  # 66.0632886305 USD
        assert inverse.record() == {"base": "JPY", "quote": "USD", "rate": "0.00660632886305",
                                    "as_of_ms": NOW_MS - 245_000, "inverse": True}
        assert await h.quote("USD", "EUR") is None
        # A stated pair wins over an inverted one.
        await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [{"base": "JPY", "quote": "USD", "rate": "0.0066"}]})
        stated = await h.quote("JPY", "USD")
        assert (stated.rate, stated.inverse, stated.as_of_ms) == (Decimal("0.0066"), False, NOW_MS)


@pytest.mark.anyio
async def test_quote_age_limit_and_future_dated_rates(fx_database):
    async with _harness(fx_database) as h:
        await h.client.put("/v1/admin/fx_rates", headers=AUTH, json={"rates": [
            {"base": "USD", "quote": "EUR", "rate": "0.90", "as_of": "2026-11-25T13:04:05Z"},  # 2 h old
            {"base": "USD", "quote": "EUR", "rate": "0.95", "as_of": "2026-11-25T15:08:05Z"},  # 4 min ahead
        ]})
        assert (await h.quote("USD", "EUR", age_max_ms=2 * HOUR_MS)).rate == Decimal("0.9")  # exactly at the limit
        assert await h.quote("USD", "EUR", age_max_ms=2 * HOUR_MS - 1) is None
        assert await h.quote("EUR", "USD", age_max_ms=HOUR_MS) is None  # the inverse obeys the same limit
        h.clock.advance(seconds=240)  # the future-dated rate comes into force at its as_of, not before
        found = await h.quote("USD", "EUR", age_max_ms=0)
        assert (found.rate, found.as_of_ms) == (Decimal("0.95"), NOW_MS + 240_000)
        h.clock.advance(seconds=24 * 3600 + 1)
        assert await h.quote("USD", "EUR") is None
