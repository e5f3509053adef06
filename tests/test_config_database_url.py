"""database.url: sqlite:/// names the SQLite file (database.path follows it), postgresql:// selects
PostgreSQL; anything else is one line naming the key, and never repeats the URL (a password)."""

from __future__ import annotations

import pytest

from apss.config import load_config
from apss.errors import ConfigInvalid


def test_empty_url_keeps_sqlite_at_database_path():
    config = load_config("/nonexistent/config.toml", environ={"APSS_DATABASE_PATH": "/tmp/x.sqlite"})
    assert (config.database.postgresql, config.database.path) == (False, "/tmp/x.sqlite")


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///data/other.sqlite", "data/other.sqlite"),
    ("sqlite:////var/lib/apss/apss.sqlite", "/var/lib/apss/apss.sqlite"),
    ("sqlite:///with%20space.sqlite", "with space.sqlite"),
])
def test_sqlite_url_sets_the_path(tmp_path, url, path):
    (tmp_path / "c.toml").write_text(f'[database]\nurl = "{url}"\n')
    config = load_config(tmp_path / "c.toml", environ={})
    assert (config.database.postgresql, config.database.path) == (False, path)


def test_sqlite_url_and_the_same_path_agree():
    config = load_config("/nonexistent", environ={"APSS_DATABASE_URL": "sqlite:////tmp/a.sqlite",
                                                   "APSS_DATABASE_PATH": "/tmp/a.sqlite"})
    assert config.database.path == "/tmp/a.sqlite"


@pytest.mark.parametrize("url", [
    "postgresql://apss:pw@db.internal:5432/apss",
    "postgres://apss@db.internal/apss?sslmode=require",
    "postgresql:///apss?host=/run/postgresql",
])
def test_postgresql_url_selects_postgresql(url):
    config = load_config("/nonexistent", environ={"APSS_DATABASE_URL": url})
    assert config.database.postgresql is True
    assert config.database.url == url
    assert config.database.path == "data/apss.sqlite"  # untouched: files beside it (keys) still live there


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://root:hunter22@h/db", "must start with sqlite:///, postgresql:// or postgres://"),
    ("sqlite://relative.sqlite", "must start with sqlite:///"),
    ("sqlite:///", "needs a file"),
    ("postgresql://apss:hunter22@h:99999/db", "the port must be a number"),
    ("postgresql://apss:hunter22@h:port/db", "the port must be a number"),
    ("postgresql://apss:hunter22@h:5432/", "names no database"),
    ("postgresql:///db", "names no host"),
    ("postgresql://apss:hunter22@h/db#x", "a fragment"),
])
def test_bad_url_is_one_line_without_the_password(url, says):
    with pytest.raises(ConfigInvalid) as caught:
        load_config("/nonexistent", environ={"APSS_DATABASE_URL": url})
    message = str(caught.value)
    assert message.startswith("config key database.url: ") and says in message, message
    assert "hunter22" not in message and "\n" not in message


def test_sqlite_url_naming_another_file_than_path_is_refused():
    with pytest.raises(ConfigInvalid) as caught:
        load_config("/nonexistent", environ={"APSS_DATABASE_URL": "sqlite:///a.sqlite", "APSS_DATABASE_PATH": "b.sqlite"})
    assert "config key database.url: names another file than database.path" in str(caught.value)


def test_postgresql_without_psycopg_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    """The server and `apss migrate` on a PostgreSQL URL where the `postgres` extra is not installed:
    one line saying how to install it, never an ImportError's traceback."""
    import sys

    from apss.app import create_app
    from apss.store.migrate import apply_migrations

    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    config = load_config("/nonexistent", environ={"APSS_DATABASE_URL": "postgresql://apss@127.0.0.1:1/apss",
                                                   "APSS_DATABASE_PATH": str(tmp_path / "unused.sqlite")})
    for attempt in (lambda: create_app(config, announce=lambda line: None),
                    lambda: apply_migrations("postgresql://apss@127.0.0.1:1/apss")):
        with pytest.raises(ConfigInvalid, match=r"database\.url: PostgreSQL needs the `postgres` extra") as raised:
            attempt()
        assert "127.0.0.1" not in str(raised.value)
    assert not (tmp_path / "unused.sqlite").exists(), "no SQLite file beside the database that was asked for"
