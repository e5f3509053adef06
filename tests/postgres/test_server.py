"""`apss serve` on PostgreSQL: the server runs there (no SQLite file appears beside the database
asked for), and what copies a SQLite file (backups, restore) is refused with one clear line. The
HTTP behaviour on PostgreSQL is the `both_backends` tests' (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import psycopg

from tests.conftest import ADMIN_TOKEN, free_port, start_run_py

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {"APSS_DATABASE_URL": url, "APSS_DATABASE_PATH": str(tmp_path / "apss.sqlite"),
            "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", **extra}


def _apss(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apss", *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, cwd=tmp_path)


def test_apss_serve_on_postgresql_keeps_its_data_there(pg_url, tmp_path):
    port = free_port()
    process = start_run_py(port=port, log=tmp_path / "serve.log", env=_env(tmp_path, pg_url))
    try:
        made = httpx.post(f"http://127.0.0.1:{port}/v1/merchants", json={"name": "On PG"},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        assert made.status_code == 201, made.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    with psycopg.connect(pg_url) as conn:  # read back from the database itself, not through APSS
        assert conn.execute("SELECT name FROM merchants WHERE id = %s", (made.json()["id"],)).fetchone() == ("On PG",)
    assert not (tmp_path / "apss.sqlite").exists(), "no SQLite file beside the database asked for"
    assert (tmp_path / "apss.sqlite.keys").exists(), "the data key lives beside database.path"
    checked = _apss(tmp_path, "ledger", "check", env=_env(tmp_path, pg_url))
    assert checked.returncode == 0 and "every transaction balances" in checked.stdout, checked.stderr


def test_backups_are_refused_on_postgresql_with_one_line(pg_url, tmp_path):
    for args in (("backup", str(tmp_path / "copy.sqlite")), ("restore", str(tmp_path / "copy.sqlite"))):
        done = _apss(tmp_path, *args, env=_env(tmp_path, pg_url))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "pg_dump" in done.stderr and "Traceback" not in done.stderr
    scheduled = _apss(tmp_path, "serve", "--port", str(free_port()),
                      env=_env(tmp_path, pg_url, APSS_BACKUP_DIR=str(tmp_path / "backups")))
    assert scheduled.returncode == 2 and "config key backup.dir" in scheduled.stderr, scheduled.stderr
    assert "pg_dump" in scheduled.stderr and not (tmp_path / "backups").exists()
