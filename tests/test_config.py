"""Configuration: TOML plus APSS_<SECTION>_<KEY> overrides, one-line errors naming the key, and the
real command line (run.py, python -m apss) exiting 2 on bad config or a too-new database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from apss.config import Config, load_config
from apss.errors import ConfigInvalid
from apss.store.migrate import apply_migrations, known_migrations

REPO_ROOT = Path(__file__).resolve().parents[1]
LATEST = known_migrations()[-1][0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(tmp_path: Path, toml: str | None = None, **env: str) -> Config:
    path = tmp_path / "config.toml"
    if toml is not None:
        write(path, toml)
    return load_config(path, environ=env)


def config_error(tmp_path: Path, toml: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigInvalid) as caught:
        load(tmp_path, toml, **env)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# -- load_config ---------------------------------------------------------------------------------------

def test_defaults_without_a_file(tmp_path):
    config = load(tmp_path)
    assert config == Config()
    assert (config.server.host, config.server.port, config.database.path) == ("127.0.0.1", 8000, "data/apss.sqlite")
    assert config.server.request_body_bytes_max == 1_048_576
    assert config.public_url == "http://127.0.0.1:8000"


def test_toml_values_and_env_overrides(tmp_path):
    toml = '[server]\nport = 9000\nhost = "0.0.0.0"\n[database]\npath = "from-toml.sqlite"\n[seed]\ndemo = true\n'
    config = load(tmp_path, toml)
    assert (config.server.port, config.server.host, config.database.path, config.seed.demo) == (
        9000, "0.0.0.0", "from-toml.sqlite", True)
    config = load(tmp_path, toml, APSS_SERVER_PORT="9100", APSS_DATABASE_PATH="/tmp/env.sqlite",
                  APSS_ADMIN_TOKEN="adm_0123456789abcdef", APSS_SEED_DEMO="false",
                  APSS_DATABASE_BUSY_TIMEOUT_MS="1234", APSS_SANDBOX_CALLBACK_TIMEOUT_S="2.5",
                  APSS_SERVER_PUBLIC_URL="https://pay.example.com/", APSS_SANDBOX_CALLBACK_TRANSPORT="asgi")
    assert config.server.port == 9100 and isinstance(config.server.port, int)
    assert config.server.host == "0.0.0.0"  # untouched by the env
    assert config.database.path == "/tmp/env.sqlite"
    assert config.admin.token == "adm_0123456789abcdef"
    assert config.seed.demo is False
    assert config.database.busy_timeout_ms == 1234
    assert config.sandbox.callback_timeout_s == 2.5
    assert config.sandbox.callback_transport == "asgi"
    assert config.public_url == "https://pay.example.com"


def test_apss_config_names_the_file(tmp_path):
    path = write(tmp_path / "other.toml", "[server]\nport = 7001\n")
    assert load_config(None, environ={"APSS_CONFIG": str(path)}).server.port == 7001
    # Other environment variables are not APSS's business.
    assert load_config(None, environ={"APSS_CONFIG": str(path), "PATH": "/bin", "APSSX": "1"}).server.port == 7001


@pytest.mark.parametrize(("toml", "key"), [
    ("[server]\nbogus = 1\n", "server.bogus"),
    ("[database]\npaht = 'x'\n", "database.paht"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("toplevel = 1\n", "toplevel"),
])
def test_unknown_key_in_toml_names_it(tmp_path, toml, key):
    message = config_error(tmp_path, toml)
    assert f"config key {key}:" in message, message


@pytest.mark.parametrize(("env", "named"), [
    ({"APSS_SERVER_BOGUS": "1"}, "server.bogus"),
    ({"APSS_NOPE_X": "1"}, "APSS_NOPE_X"),
    ({"APSS_SERVER": "1"}, "APSS_SERVER"),
    ({"APSS_DATABASE_PAHT": "x"}, "database.paht"),
])
def test_unknown_key_in_env_names_it(tmp_path, env, named):
    message = config_error(tmp_path, None, **env)
    assert named in message, message


@pytest.mark.parametrize(("toml", "env", "key"), [
    (None, {"APSS_SERVER_PORT": "abc"}, "server.port"),
    ("[server]\nport = 'abc'\n", {}, "server.port"),
    ("[server]\nport = 70000\n", {}, "server.port"),
    (None, {"APSS_SERVER_PORT": "-1"}, "server.port"),
    (None, {"APSS_SEED_DEMO": "maybe"}, "seed.demo"),
    (None, {"APSS_DATABASE_SYNCHRONOUS": "OFF"}, "database.synchronous"),
    (None, {"APSS_SANDBOX_CALLBACK_TIMEOUT_S": "soon"}, "sandbox.callback_timeout_s"),
    ("[orders]\nreservation_ttl_s = 5\n", {}, "orders.reservation_ttl_s"),
    ("[server]\nlog_level = 'loud'\n", {}, "server.log_level"),
    ("server = 5\n", {}, "server"),
    (None, {"APSS_ADMIN_TOKEN": "short"}, "admin.token"),
    ("[database]\nwrite_batch_max = 100\nwrite_queue_max = 10\n", {}, "database.write_batch_max"),
    (None, {"APSS_SERVER_PUBLIC_URL": "pay.example.com"}, "server.public_url"),
])
def test_bad_value_names_the_key(tmp_path, toml, env, key):
    message = config_error(tmp_path, toml, **env)
    assert f"config key {key}:" in message, message


def test_invalid_toml_names_the_file(tmp_path):
    message = config_error(tmp_path, "[server\nport = 1\n")
    assert str(tmp_path / "config.toml") in message and "not valid TOML" in message


def test_api_base_hosts_allowed_are_bare_hosts(tmp_path):
    config = load(tmp_path, '[channels]\napi_base_hosts_allowed = ["stripe-standin.internal", "[::1]", "10.0.0.5"]\n')
    assert config.channels.api_base_hosts_allowed == ("stripe-standin.internal", "[::1]", "10.0.0.5")
    assert config.webhooks.allow_private_targets is False, "private webhook targets are opt-in"
    for entry in ("stripe-standin.internal:8443", "https://stripe-standin.internal", ""):
        message = config_error(tmp_path, f'[channels]\napi_base_hosts_allowed = ["{entry}"]\n')
        assert "channels.api_base_hosts_allowed[0]" in message, (entry, message)


# -- the real command line --------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APSS_")}
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


def assert_exit_2_with_one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_run_py_with_bad_env_value_exits_2(tmp_path):
    env = clean_env(APSS_SERVER_PORT="abc", APSS_DATABASE_PATH=str(tmp_path / "apss.sqlite"), APSS_SEED_DEMO="false",
                    APSS_CONFIG=str(tmp_path / "absent.toml"))
    assert_exit_2_with_one_line(run(["run.py"], env), "server.port")
    assert not (tmp_path / "apss.sqlite").exists()


def test_run_py_with_unknown_env_key_exits_2(tmp_path):
    env = clean_env(APSS_SERVER_PROT="8000", APSS_CONFIG=str(tmp_path / "absent.toml"))
    assert_exit_2_with_one_line(run(["run.py"], env), "server.prot")


def test_run_py_with_bad_config_file_exits_2(tmp_path):
    config = write(tmp_path / "bad.toml", f'[database]\npath = "{tmp_path / "apss.sqlite"}"\nsynchronous = "OFF"\n')
    env = clean_env(APSS_CONFIG=str(config), APSS_SEED_DEMO="false")
    assert_exit_2_with_one_line(run(["run.py"], env), "database.synchronous")
    unknown = write(tmp_path / "unknown.toml", "[server]\ncolour = 'blue'\n")
    assert_exit_2_with_one_line(run(["run.py"], clean_env(APSS_CONFIG=str(unknown))), "server.colour")
    assert_exit_2_with_one_line(run(["-m", "apss", "migrate"], clean_env(APSS_CONFIG=str(unknown))), "server.colour")


def test_migrate_on_a_fresh_database_prints_the_schema_version(tmp_path):
    db = tmp_path / "sub" / "apss.sqlite"
    env = clean_env(APSS_DATABASE_PATH=str(db), APSS_SEED_DEMO="false", APSS_CONFIG=str(tmp_path / "absent.toml"))
    first = run(["-m", "apss", "migrate"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"database {db}: schema version 0 -> {LATEST}"
    again = run(["-m", "apss", "migrate"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == f"database {db}: schema version {LATEST} -> {LATEST}"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT max(version), count(*) FROM schema_version").fetchone() == (LATEST, LATEST)


def test_database_newer_than_the_code_refuses_to_start(tmp_path):
    db = tmp_path / "apss.sqlite"
    assert apply_migrations(str(db)) == (0, LATEST)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    env = clean_env(APSS_DATABASE_PATH=str(db), APSS_SEED_DEMO="false", APSS_CONFIG=str(tmp_path / "absent.toml"),
                    APSS_SERVER_PORT="0", APSS_ADMIN_TOKEN="adm_0123456789abcdef")
    line = assert_exit_2_with_one_line(run(["run.py"], env), f"schema version {LATEST + 1}",
                                       f"knows only up to {LATEST}")
    assert "upgrade APSS" in line
    assert_exit_2_with_one_line(run(["-m", "apss", "migrate"], env), f"schema version {LATEST + 1}")
    # Nothing was changed in the newer database.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (LATEST + 1,)
