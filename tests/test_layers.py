"""Imports flow one way (DESIGN.md); SQL lives in store/. The checker reads every import form
(`import apss.x`, `from apss import x`, `from apss.x import y`, relative imports, imports inside
functions, `importlib.import_module("apss.x")`), and its self-tests feed it a planted violation
of each rule and see it fail."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "apss"
LEAVES = {"errors", "clock", "config", "crypto", "ids"}
ENTRY_POINTS = {"app", "cli", "__init__", "__main__"}  # the composition root and the entry points wire everything

# layer -> the layers it may import (leaves are always allowed, and only leaves for leaves)
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "domain": {"domain"},  # pure rules: nothing of ours but leaves
    "store": {"domain", "store"},  # the database only: no use case, no channel, no HTTP
    "channels": {"domain", "channels"},  # providers' wire formats: never the database
    "services": {"domain", "store", "channels", "services"},  # use cases: never HTTP (api, web) nor jobs
    "api": {"domain", "services", "api"},
    "jobs": {"domain", "services", "jobs"},
    "web": {"domain", "services", "web"},  # the pages: not the JSON API's controllers either
    "client": {"domain", "services"},  # the game backend's client: the wire Structs, never the server's HTTP code
}
# Statements of SQL, in any case, inside string literals.
_SQL = re.compile(r"\b(select\s+(\*|distinct\b|(count|coalesce|sum|max|min|json_\w+)\s*\(|\w+\.[\w*]+|\w+\s*,|\w+\s+(from|as)\b)"
                  r"|insert\s+into\s+\w+\s*(\(|values\b|select\b|default\b)|update\s+\w+\s+set\s+\w+\s*=|delete\s+from\s+\w+|"
                  r"create\s+(table|index|unique\s+index)\s+\w+|alter\s+table\s+\w+|pragma\s+\w+\s*[=(;]?)",
                  re.IGNORECASE)


def layer_of(relative: Path) -> str:
    part = relative.parts[0].removesuffix(".py")
    return "leaf" if part in LEAVES else part


def imported_layers(source: str, relative: Path) -> set[str]:
    """The top-level apss packages a module imports, in any form."""
    package = [p for p in ("apss", *relative.parts[:-1])]
    found: set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        if parts[0] == "apss" and len(parts) > 1:
            found.add(parts[1])

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = package[: len(package) - node.level + 1]
                dotted = ".".join([*base, node.module] if node.module else base)
            else:
                dotted = node.module or ""
            if dotted == "apss":  # from apss import store
                for alias in node.names:
                    add(f"apss.{alias.name}")
            else:
                add(dotted)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                add(node.args[0].value)
    return found


def violations_of(source: str, relative: Path) -> list[str]:
    layer = layer_of(relative)
    if layer in ENTRY_POINTS:
        return []
    wrong = []
    for target in sorted(imported_layers(source, relative)):
        target_layer = "leaf" if target in LEAVES else target
        if target_layer == "leaf" or target in ALLOWED[layer]:
            continue
        wrong.append(f"{relative} imports apss.{target}")
    return wrong


def sql_in(source: str) -> list[str]:
    return [node.value[:60] for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value)]


def _modules():
    for module in sorted(PACKAGE.rglob("*.py")):
        yield module, module.relative_to(PACKAGE)


def test_imports_flow_one_way():
    found = [v for module, relative in _modules() for v in violations_of(module.read_text(), relative)]
    assert found == []


def test_sql_lives_in_store():
    offenders = [f"{relative}: {sql_in(module.read_text())[0]!r}" for module, relative in _modules()
                 if layer_of(relative) != "store" and sql_in(module.read_text())]
    assert offenders == []


# -- the checker, fed planted violations -----------------------------------------------------
@pytest.mark.parametrize(("where", "source"), [
    ("domain/orders.py", "from apss.store import orders\n"),
    ("domain/orders.py", "import apss.services.orders.checkout\n"),
    ("domain/orders.py", "from ..store import orders\n"),
    ("store/orders.py", "from apss.services.orders.checkout import Checkout\n"),
    ("store/orders.py", "def f():\n    from apss import services\n"),
    ("channels/stripe/client.py", "from apss.store.db import Tx\n"),
    ("channels/stripe/client.py", "from ...store import db\n"),
    ("services/orders/checkout.py", "from apss.api.errors import render_error\n"),
    ("services/orders/checkout.py", "import importlib\nimportlib.import_module('apss.web.admin')\n"),
    ("services/checkout.py", "from apss import jobs\n"),
    ("web/admin.py", "from apss.api.common import Services\n"),
    ("web/admin.py", "from ..api import common\n"),
    ("errors.py", "from apss.domain.money import Money\n"),
])
def test_the_checker_sees_each_kind_of_violation(where, source):
    assert violations_of(source, Path(where)), f"{where}: {source!r} should be a violation"


@pytest.mark.parametrize(("where", "source"), [
    ("services/orders/checkout.py", "from apss.store import orders\nfrom apss.domain.orders import OrderStatus\n"),
    ("services/orders/checkout.py", "from ..payments import gateway\n"),
    ("web/admin.py", "from apss.services.views import OrderView\n"),
    ("domain/orders.py", "from apss.errors import InvalidTransition\nfrom . import money\n"),
    ("app.py", "from apss.api.errors import render_error\nfrom apss.web import WEB_HANDLERS\n"),
])
def test_the_checker_lets_the_allowed_imports_pass(where, source):
    assert violations_of(source, Path(where)) == []


@pytest.mark.parametrize("source", [
    'QUERY = "SELECT * FROM orders WHERE id = ?"\n',
    'q = "select id from payments"\n',
    'sql = "insert into alerts (id) values (?)"\n',
    'x = """UPDATE orders SET status = ?"""\n',
    'y = "delete from refunds"\n',
])
def test_the_sql_check_sees_sql_in_any_case(source):
    assert sql_in(source)


def test_the_sql_check_lets_prose_pass():
    assert sql_in('message = "Select a channel from the list; update the settings."\n') == []


# -- store conventions (apss/store/README.md) -------------------------------------------------
def store_naming_offenders(source: str, module: str) -> list[str]:
    """Async functions read on a reader connection (first parameter `db`); plain ones run on the
    writer (first parameter `tx`), and a writer-side read named get_/list_/count_ ends in `_tx`."""
    offenders = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
            continue
        first = node.args.args[0].arg if node.args.args else None
        if isinstance(node, ast.AsyncFunctionDef) and first != "db":
            offenders.append(f"{module}.{node.name}: async, so its first parameter is db")
        elif isinstance(node, ast.FunctionDef) and first not in ("tx", "path"):  # path: before the database starts
            offenders.append(f"{module}.{node.name}: runs on the writer, so its first parameter is tx")
        elif (isinstance(node, ast.FunctionDef) and node.name.startswith(("get_", "list_", "count_"))
              and not node.name.endswith("_tx")):
            offenders.append(f"{module}.{node.name}: a read on the writer ends in _tx")
    return offenders


def test_store_functions_follow_one_naming_convention():
    offenders = [o for module, relative in _modules()
                 if relative.parts[0] == "store" and relative.name not in ("db.py", "pg_db.py", "migrate.py", "pg_schema.py", "__init__.py")
                 for o in store_naming_offenders(module.read_text(), relative.stem)]
    assert offenders == []


def sqlite_offenders(source: str) -> list[str]:
    """Above the store a row is a plain Mapping (store.db.Row): sqlite3 is the store's business."""
    tree = ast.parse(source)
    found = [f"imports {alias.name}" for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names if alias.name == "sqlite3"]
    found += ["from sqlite3 import ..." for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module == "sqlite3"]
    return found


def test_only_the_store_knows_sqlite():
    offenders = [f"{relative}: {o}" for module, relative in _modules()
                 if layer_of(relative) != "store" and relative.parts[0] not in ENTRY_POINTS
                 for o in sqlite_offenders(module.read_text())]
    assert offenders == []


def test_the_store_checks_see_their_violations():
    assert store_naming_offenders("def get_order(tx): ...\n", "orders")
    assert store_naming_offenders("async def get_order(tx): ...\n", "orders")
    assert store_naming_offenders("def insert_order(db): ...\n", "orders")
    assert store_naming_offenders("def read_start_state(path): ...\n", "test_clock") == []
    assert store_naming_offenders("def get_order_tx(tx): ...\nasync def get_order(db): ...\n", "orders") == []
    assert sqlite_offenders("import sqlite3\n") and sqlite_offenders("from sqlite3 import Row\n")
    assert sqlite_offenders("def f():\n    import sqlite3\n")
    assert sqlite_offenders("from collections.abc import Mapping\n") == []
