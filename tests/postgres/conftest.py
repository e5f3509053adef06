"""The PostgreSQL pass of the store: a fresh database per test on the session's throwaway server
(the `pg_server` fixture of tests/conftest.py, which the HTTP tests marked for both backends share)."""

from __future__ import annotations

import pytest

from tests.postgres.server import PostgresServer


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.create_database()
