"""Dashboard sessions live in the database, hashed: a session survives a restart of the server
(`python run.py` twice on one data directory), an expired one is refused and deleted, the
database holds no cookie token, and the overview opens on the merchant looked at last (the
demo store on a fresh install)."""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, free_port, start_run_py

_COOKIE = "apss_admin"


def _start(tmp_path: Path, port: int, name: str):
    env = {"APSS_DATABASE_PATH": str(tmp_path / "apss.sqlite"), "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_CLOCK_MODE": "test",
           "APSS_SERVER_LOG_LEVEL": "warning"}
    return start_run_py(port=port, log=tmp_path / f"{name}.log", env=env)


def _stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def _login(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
    page = client.get("/admin/login")
    csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
    assert client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN}).status_code == 200
    assert client.cookies.get(_COOKIE)
    return client


def _rows(db_path: Path) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT token_sha256, merchant_id, expires_at_ms FROM admin_sessions").fetchall()


def _holds(db_path: Path, needle: str) -> bool:
    """Whether any text cell of any table holds `needle` (a raw scan of the whole database)."""
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM \"{table}\""):
                if any(isinstance(cell, str) and needle in cell for cell in row):
                    return True
    return False


def test_a_session_survives_a_restart_and_an_expired_one_is_refused(tmp_path):
    port, db_path = free_port(), tmp_path / "apss.sqlite"
    base = f"http://127.0.0.1:{port}"
    process = _start(tmp_path, port, "first")
    try:
        admin = _login(base)
        overview = admin.get("/admin")
        assert "Demo Studio" in re.search(r"<h1 id=merchant-name>([^<]*)</h1>", overview.text).group(1), "fresh install: the demo store"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
            other = api.post("/v1/merchants", json={"name": "Second Studio"}).json()["id"]
        assert admin.get("/admin/orders", params={"merchant": other}).status_code == 200
        token = admin.cookies.get(_COOKIE)
    finally:
        _stop(process)

    [(digest, remembered, _)] = _rows(db_path)
    assert digest == hashlib.sha256(token.encode()).hexdigest() and remembered == other
    assert not _holds(db_path, token), "the database holds only the token's hash"

    process = _start(tmp_path, port, "second")
    try:
        again = admin.get("/admin")
        assert again.url.path == "/admin", "the cookie still works after the restart"
        assert "Second Studio" in re.search(r"<h1 id=merchant-name>([^<]*)</h1>", again.text).group(1), "opens on the last merchant"
        csrf = re.search(r"name=csrf value='([^']+)'", again.text).group(1)
        assert csrf != token and not _holds(db_path, csrf), "the form token is not stored either"

        # Idle for longer than the session's lifetime (8 h) on the test clock: refused, then deleted.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120) as api:
            assert api.post("/v1/admin/clock/advance", json={"seconds": 9 * 3600}).status_code == 200
        expired = admin.get("/admin")
        assert expired.url.path == "/admin/login", "an expired session is refused"
        assert admin.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 403
        assert _rows(db_path) == [], "and cleaned up"
    finally:
        admin.close()
        _stop(process)


def test_a_forged_or_malformed_cookie_is_refused(server):
    for value in ("x" * 43, "not a token", hashlib.sha256(b"x").hexdigest(), "a" * 500):
        with httpx.Client(base_url=server.base_url, cookies={_COOKIE: value}) as client:
            answer = client.get("/admin")
            assert answer.status_code == 303 and answer.headers["location"] == "/admin/login", value
