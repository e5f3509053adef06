"""Imports flow one way (DESIGN.md): leaves <- domain <- store, channels <- services <- api, jobs, web <- app."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "apss"
LEAVES = {"errors", "clock", "config", "crypto", "ids"}
ALLOWED = {
    "leaf": LEAVES,
    "domain": LEAVES | {"domain"},
    "store": LEAVES | {"domain", "store"},
    "channels": LEAVES | {"domain", "channels"},
    "services": LEAVES | {"domain", "store", "channels", "services"},
    "api": LEAVES | {"domain", "services", "api"},
    "jobs": LEAVES | {"domain", "services", "jobs"},
    "web": LEAVES | {"domain", "services", "web", "api"},
}


def _layer(module: Path) -> str:
    part = module.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return "leaf" if part in LEAVES else part


def _imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("apss."):
                found.add(name.split(".")[1])
    return found


def test_imports_flow_one_way():
    violations = []
    for module in PACKAGE.rglob("*.py"):
        layer = _layer(module)
        if layer in ("app", "cli", "__init__", "__main__"):
            continue  # the composition root and the entry points wire everything
        for target in _imports(module):
            target_layer = "leaf" if target in LEAVES else target
            allowed = ALLOWED[layer]
            if target_layer != "leaf" and target not in allowed or target_layer == "leaf" and target not in LEAVES:
                violations.append(f"{module.relative_to(PACKAGE)} imports apss.{target}")
    assert violations == []


def test_the_checker_sees_a_violation():
    assert "store" in _imports(PACKAGE / "services" / "checkout.py")
    assert "store" not in ALLOWED["api"] and "services" not in ALLOWED["domain"]


def test_sql_lives_in_store():
    offenders = []
    for module in PACKAGE.rglob("*.py"):
        if _layer(module) in ("store",):
            continue
        text = module.read_text()
        if any(keyword in text for keyword in ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM")):
            offenders.append(str(module.relative_to(PACKAGE)))
    assert offenders == []
