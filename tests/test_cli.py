"""The command line as a person meets it: every command's --help, a busy port, where the config
comes from, and a ledger check that reads the database without migrating it."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from apss.store.migrate import apply_migrations
from tests.test_config import clean_env, run


@pytest.mark.parametrize(("args", "words"), [
    (["run.py", "--help"], ["start the server", "--config"]),
    (["-m", "apss", "--help"], ["serve", "migrate", "ledger"]),
    (["-m", "apss", "serve", "--help"], ["start the server", "--config"]),
    (["-m", "apss", "migrate", "--help"], ["Apply", "migrations"]),
    (["-m", "apss", "ledger", "--help"], ["check"]),
])
def test_every_command_describes_itself(args, words):
    result = run(args, clean_env())
    assert result.returncode == 0, result.stderr
    for word in words:
        assert word in result.stdout, (word, result.stdout)


def test_a_busy_port_is_one_clear_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(APSS_DATABASE_PATH=str(tmp_path / "apss.sqlite"), APSS_SEED_DEMO="false",
                        APSS_CONFIG=str(tmp_path / "absent.toml"), APSS_SERVER_PORT=str(port),
                        APSS_ADMIN_TOKEN="adm_0123456789abcdef")
        result = run(["run.py"], env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], result.stderr
    assert "listening" not in result.stdout


def test_without_a_config_file_the_server_says_where_its_data_goes(tmp_path):
    env = clean_env(APSS_DATABASE_PATH=str(tmp_path / "apss.sqlite"), APSS_CONFIG=str(tmp_path / "absent.toml"))
    result = run(["-m", "apss", "migrate"], env)
    assert result.returncode == 0, result.stderr
    assert "built-in defaults" in result.stdout and str(tmp_path / "apss.sqlite") in result.stdout
    assert str(tmp_path / "absent.toml") in result.stdout, "names the file it looked for"


def test_a_config_given_on_the_command_line_wins(tmp_path):
    given = tmp_path / "given.toml"
    given.write_text(f'[database]\npath = "{tmp_path / "given.sqlite"}"\n')
    env = clean_env(APSS_CONFIG=str(tmp_path / "absent.toml"))
    result = run(["-m", "apss", "migrate", "--config", str(given)], env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "given.sqlite").exists()
    assert "built-in defaults" not in result.stdout


def test_ledger_check_reads_without_migrating(tmp_path):
    missing = tmp_path / "missing.sqlite"
    env = clean_env(APSS_DATABASE_PATH=str(missing), APSS_CONFIG=str(tmp_path / "absent.toml"))
    result = run(["-m", "apss", "ledger", "check"], env)
    assert result.returncode == 2 and not missing.exists(), (result.stdout, result.stderr)
    assert "no database" in result.stderr

    behind = tmp_path / "behind.sqlite"
    apply_migrations(str(behind))
    with sqlite3.connect(behind) as conn:
        versions_before = conn.execute("SELECT count(*) FROM schema_version").fetchone()[0]
        conn.execute("DELETE FROM schema_version WHERE version = (SELECT max(version) FROM schema_version)")
    result = run(["-m", "apss", "ledger", "check"], clean_env(APSS_DATABASE_PATH=str(behind),
                                                              APSS_CONFIG=str(tmp_path / "absent.toml")))
    with sqlite3.connect(behind) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == versions_before - 1, "not migrated"
    assert result.returncode == 2 and "apss migrate" in result.stderr, (result.stdout, result.stderr)

    fresh = tmp_path / "fresh.sqlite"
    apply_migrations(str(fresh))
    result = run(["-m", "apss", "ledger", "check"], clean_env(APSS_DATABASE_PATH=str(fresh),
                                                              APSS_CONFIG=str(tmp_path / "absent.toml")))
    assert result.returncode == 0 and "every transaction balances" in result.stdout, (result.stdout, result.stderr)
