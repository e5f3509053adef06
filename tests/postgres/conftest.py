"""The PostgreSQL pass: one throwaway server for the session (tests/postgres/server.py), a fresh
database per test. Without a PostgreSQL server installed locally these tests skip with one line;
CI installs Debian's postgresql and sets APSS_REQUIRE_POSTGRESQL=1, and then a missing server fails."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.postgres.server import PostgresServer, server_binaries

NO_SERVER = "no PostgreSQL server installed locally (apt-get install postgresql): the PostgreSQL pass is skipped"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("APSS_REQUIRE_POSTGRESQL") == "1":
            pytest.fail("APSS_REQUIRE_POSTGRESQL=1 but no PostgreSQL server binary is installed")
        pytest.skip(NO_SERVER)
    server = PostgresServer(binaries)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.create_database()
