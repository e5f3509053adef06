"""Shared fixtures: a real APSS server (uvicorn, real SQLite file, real HTTP) on a free port,
driven by a TestClock that tests move by hand. One server is shared by the tests that do not
need their own; every test makes its own merchant, so they cannot see each other's data.

Both backends: a test marked `both_backends` runs twice, as `[sqlite]` and as `[postgresql]`
(the `backend` fixture; `server` and `merchant` follow it; a test that starts its own server
gives it `database_env(backend)`); `sqlite_only` keeps one test of a marked file on SQLite alone
(its PostgreSQL half too slow or saying nothing new: the reason beside the mark). The tests' own
checks read the database straight with `server.raw(sql, params)` (or `raw_read(path or URL, ...)`
for a database of their own): sqlite3 on the file, psycopg on the URL, the same SQL, never APSS's
API. TEST_ALL_BACKENDS=1 runs every test that uses the shared server on both, marked or not (a
survey of what does not run on PostgreSQL yet). The PostgreSQL pass runs on one throwaway server
for the session (tests/postgres/server.py); without a PostgreSQL server installed locally its
tests skip with one line, and with REQUIRE_POSTGRESQL=1 (CI) a missing server fails."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from apss.app import create_app
from apss.clock import TestClock
from apss.config import load_config
from apss.services.container import Services
from apss.store.migrate import MIGRATIONS_DIR, apply_migrations
from tests.postgres.server import PostgresServer, server_binaries

ADMIN_TOKEN = "adm_test_token_0123456789abcdef_0123456789"  # 32+ characters: no warning


# -- secrets and personal data never in logs: what the tests planted, searched at session end ----------
# Values the tests planted (keys they were given, emails and IPs they sent); any secret-looking
# token is a leak too, planted or not. run.py's once-only lines ("shown once") are its purpose.
PLANTED: set[str] = {ADMIN_TOKEN}
SUBPROCESS_OUTPUTS: list[Path] = []  # run.py outputs the tests read (start_run_py)
_SECRET_RE = re.compile(r"\b(?:sk_(?:test|live)_[A-Za-z0-9_-]{16,}|whsec_[A-Za-z0-9_-]{16,}|adm_[A-Za-z0-9_-]{16,})")
_ONCE_ONLY = "(shown once"


def plant(*values: object) -> None:
    """Remember secret or personal values a test sends or receives: the session fails if a log has one."""
    PLANTED.update(str(v) for v in values if isinstance(v, str) and len(v) >= 6)


def leaks_in(lines: list[str], planted: set[str]) -> list[str]:
    """The lines holding a planted value or a secret-looking token (each cut to 200 characters)."""
    found = []
    plain = sorted(v for v in planted if not _SECRET_RE.fullmatch(v))
    for line in lines:
        if _ONCE_ONLY in line:
            continue
        if _SECRET_RE.search(line) or any(value in line for value in plain):
            found.append(line[:200])
    return found


class _LogSink(logging.Handler):
    """Every log record of the session, as text (message and traceback)."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.extend(self.format(record).splitlines())
        except Exception:  # a record that cannot be formatted is logging's own problem
            self.lines.append(f"{record.name} unformattable record {record.msg!r}")


_SINK = _LogSink()


def pytest_configure(config) -> None:
    logging.getLogger().addHandler(_SINK)
    logging.getLogger("apss").setLevel(logging.INFO)  # info lines are searched too


def pytest_sessionfinish(session, exitstatus) -> None:
    lines = list(_SINK.lines)
    for output in SUBPROCESS_OUTPUTS:
        if output.exists():
            lines += output.read_text(errors="replace").splitlines()
    leaked = leaks_in(lines, PLANTED)
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "secrets or personal data in the logs:\n  " + "\n  ".join(leaked[:20])
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_at(directory: Path, version: int) -> Path:
    """A SQLite file in `directory` migrated up to `version` only (the later migrations not applied
    yet): the starting point of a test of an upgrade."""
    before = directory / f"migrations-{version}"
    before.mkdir()
    for path in MIGRATIONS_DIR.glob("00*.sql"):
        if int(path.name[:4]) <= version:
            shutil.copy(path, before / path.name)
    db = directory / f"at-{version}.sqlite"
    assert apply_migrations(str(db), before)[1] == version
    return db


class RawRow(tuple):
    """A row of `raw_read`: a tuple (it compares equal to one) whose columns can also be
    read by name, `row["kind"]` (plain columns and aliases: both engines name those alike)."""

    def __new__(cls, values, columns: tuple[str, ...]) -> RawRow:
        row = super().__new__(cls, values)
        row.columns = columns
        return row

    @classmethod
    def all(cls, cursor) -> list[RawRow]:
        columns = tuple(column[0] for column in cursor.description or ())
        return [cls(row, columns) for row in cursor.fetchall()]

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(self.columns.index(key))
        return super().__getitem__(key)


def raw_read(database: str | Path, sql: str, params: tuple | dict = ()) -> list[RawRow]:
    """Rows read straight from a database, not through APSS: an independent source for a test's
    checks, on either backend. `database` is a SQLite file's path or a PostgreSQL URL. `sql` is
    written for SQLite (`?` placeholders, in the subset both engines read, as the store's is); on
    PostgreSQL it goes through the store's translation (apss.store.pg_db.to_postgresql) to psycopg on
    a connection of its own, in autocommit (the last committed state). SQLite's file is opened
    read-only."""
    if str(database).startswith(("postgresql://", "postgres://")):
        import psycopg

        from apss.store.pg_db import to_postgresql

        with psycopg.connect(str(database), autocommit=True) as conn:
            return RawRow.all(conn.execute(to_postgresql(sql), params))
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return RawRow.all(conn.execute(sql, params))


class RunningServer:
    def __init__(self, *, db_path: Path, clock: TestClock, env: dict[str, str] | None = None,
                 announce_secrets: bool = True) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.clock = clock
        self.db_path = db_path
        environ = {
            "APSS_DATABASE_PATH": str(db_path), "APSS_SERVER_PORT": str(self.port), "APSS_ADMIN_TOKEN": ADMIN_TOKEN,
            "APSS_SEED_DEMO": "false", "APSS_SCHEDULER_TICK_MS": "20", "APSS_SERVER_LOG_LEVEL": "warning",
            # Many tests try wrong admin tokens from 127.0.0.1 on a clock that rarely moves: the
            # guessing throttle has its own test (tests/test_hostile_input.py).
            "APSS_ADMIN_AUTH_FAILURES_MAX": "1000000",
            **(env or {}),
        }
        self.config = load_config("/nonexistent-config.toml", environ=environ)
        self.announced: list[str] = []
        self.app = create_app(self.config, clock=clock, announce=self.announced.append,
                              announce_secrets=announce_secrets)
        # Keep-alive longer than any pause in a test: with uvicorn's 5 s, a pooled connection the
        # server has just closed makes httpx fail a POST with "Server disconnected" (a client race).
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     loop="asyncio", access_log=False, timeout_keep_alive=120))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def services(self):
        return self.app.state.services

    def start(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def wait_job(self, name: str) -> None:
        """Wait (real time) for a run of job `name` that started at or after the clock's now (move
        the clock past the job's interval first: jobs are due by the clock)."""
        now_ms = self.clock.now_ms()
        wait_for(lambda: self.services.scheduler.completed_as_of_ms(name) >= now_ms)

    def raw(self, sql: str, params: tuple | dict = ()) -> list[RawRow]:
        """Rows read straight from this server's database (`raw_read`)."""
        database = self.config.database
        return raw_read(database.url if database.postgresql else self.db_path, sql, params)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def new_merchant(self, name: str = "Test Studio", mode: str = "test") -> Merchant:
        with self.admin() as client:
            response = client.post("/v1/merchants", json={"name": name, "mode": mode})
        assert response.status_code == 201, response.text
        body = response.json()
        plant(body["secret_key"])
        return Merchant(self, body["id"], body["secret_key"])


class Merchant:
    def __init__(self, server: RunningServer, merchant_id: str, key: str) -> None:
        self.server = server
        self.id = merchant_id
        self.key = key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url, headers=self.headers, timeout=30)

    def async_client(self, **kwargs) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=kwargs.pop("max_connections", 100))
        return httpx.AsyncClient(base_url=self.server.base_url, headers=self.headers, timeout=60, limits=limits, **kwargs)

    def product(self, client: httpx.Client, **fields) -> dict:
        body = {"sku": f"sku_{time.monotonic_ns()}", "name": "Thing", "category": "item", "prices": {"USD": 500}, **fields}
        response = client.post("/v1/products", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def order(self, client: httpx.Client, product_id: str, *, player_id: str = "player-1", quantity: int = 1,
              currency: str = "USD", **fields) -> httpx.Response:
        plant(fields.get("email"), fields.get("ip"))
        return client.post("/v1/orders", json={"player_id": player_id, "currency": currency,
                                               "items": [{"product_id": product_id, "quantity": quantity}], **fields})


# -- the one error shape (API.md), checked the same way everywhere ------------------------------------
STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
                422: "idempotency_error", 429: "rate_limit_error"}


def assert_shape(response: httpx.Response) -> dict:
    """The one error shape: exactly `error`, holding exactly type/code/message and maybe param."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) in ({"type", "code", "message"}, {"type", "code", "message", "param"}), error
    assert all(isinstance(error[k], str) and error[k] for k in error), error
    assert error["type"] == STATUS_TYPES.get(response.status_code, error["type"]), (response.status_code, error)
    return error


def assert_error(response: httpx.Response, status: int, error_type: str, code: str, param: object = ...) -> dict:
    assert response.status_code == status, response.text
    error = assert_shape(response)
    assert (error["type"], error["code"]) == (error_type, code), error
    if param is not ...:
        assert error.get("param") == param, error
    return error


_sku_counter = itertools.count()


def unique_sku(stem: str = "sku") -> str:
    return f"{stem}_{next(_sku_counter)}"


def assert_ledger_ok(server) -> None:
    """The ledger check through the admin API: every transaction balances, every balance equals
    its entries (after every money test)."""
    with server.admin() as admin:
        check = admin.get("/v1/admin/ledger/check").json()
    assert check["ok"] is True, check


def fee_debits(merchant, channel: str) -> list[int]:
    """The channel fees booked for `merchant` (debits of its `fees_expense:<channel>` account), in
    the order they were booked: a raw read of the ledger, not APSS's API."""
    rows = merchant.server.raw("SELECT e.debit FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id"
                               " WHERE t.merchant_id = ? AND e.account = ? ORDER BY t.created_at_ms, t.id",
                               (merchant.id, f"fees_expense:{channel}:{merchant.id}"))
    return [r["debit"] for r in rows]


def wait_for(predicate, *, timeout_s: float = 10.0, interval_s: float = 0.02):
    """Poll until `predicate()` returns something truthy (real time; never a timed assertion of speed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last value: {value!r}")
        time.sleep(interval_s)


# -- the backends -------------------------------------------------------------------------------------
BACKENDS = ("sqlite", "postgresql")
NO_POSTGRESQL = "no PostgreSQL server installed locally (apt-get install postgresql): the PostgreSQL pass is skipped"


def pytest_generate_tests(metafunc) -> None:
    definition = metafunc.definition
    marked = (definition.get_closest_marker("both_backends") and not definition.get_closest_marker("sqlite_only")) \
        or os.environ.get("TEST_ALL_BACKENDS") == "1"
    if marked and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("REQUIRE_POSTGRESQL") == "1":
            pytest.fail("REQUIRE_POSTGRESQL=1 but no PostgreSQL server binary is installed")
        pytest.skip(NO_POSTGRESQL)
    running = PostgresServer(binaries)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def backend(request) -> str:
    """"sqlite", or the backend a `both_backends` test runs on."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def database_env(request) -> Callable[[str], dict[str, str]]:
    """The environment of a server on a new database of `backend`: none on SQLite (the server's
    db_path is its file), APSS_DATABASE_URL of a new PostgreSQL database (db_path still holds the
    key files beside it)."""

    def env(backend: str) -> dict[str, str]:
        if backend == "sqlite":
            return {}
        return {"APSS_DATABASE_URL": request.getfixturevalue("pg_server").create_database()}

    return env


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory) -> Iterator[RunningServer]:
    running = RunningServer(db_path=tmp_path_factory.mktemp("shared") / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgresql_server(tmp_path_factory, database_env) -> Iterator[RunningServer]:
    running = RunningServer(db_path=tmp_path_factory.mktemp("shared-pg") / "apss.sqlite", clock=TestClock(),
                            env=database_env("postgresql")).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server(backend: str, request) -> RunningServer:
    """The session's shared server on the test's backend."""
    return request.getfixturevalue(f"{backend}_server")


@pytest.fixture
def merchant(server: RunningServer) -> Merchant:
    return server.new_merchant()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def some_services(**given: Any) -> Services:
    """A Services holding only what a test's controllers call (the rest is absent: reading it
    raises AttributeError): controllers are mounted on their own, without the whole app."""
    services = object.__new__(Services)
    for name, service in given.items():
        object.__setattr__(services, name, service)
    return services


def start_run_py(*, port: int, log: Path, env: dict[str, str], timeout_s: float = 30,
                 args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python run.py [args]` as a process of its own (its output in `log`: a file, not a pipe, since
    a full pipe would block the server's logging; not a terminal either, so the once-only secrets
    are printed only with `--print-secrets`), returned once /healthz answers 200."""
    SUBPROCESS_OUTPUTS.append(log)
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "run.py", *args], cwd=Path(__file__).resolve().parents[1],
                                   env={**os.environ, **env, "APSS_SERVER_PORT": str(port)}, stdout=sink, stderr=sink)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout_s=timeout_s)
    return process
