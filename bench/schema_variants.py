"""Scratch copies of the project's schema for bench/writer.py: the same DDL with one foreign key,
CHECK, UNIQUE, STRICT or index of the hot tables taken out, or all of them (the lean schema).

The project schema is read back from a migrated file (sqlite_master, in creation order) and
executed into fresh files; the real migrations are never changed. Comments are dropped from the
copied DDL (they may hold commas and parentheses); nothing else is rewritten but the removed
constraint."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HOT_TABLES", "Item", "Schema", "items", "lean", "read_schema", "without"]

HOT_TABLES = ("orders", "order_items", "payments", "order_events", "idempotency_keys", "products")

_COMMENT_RE = re.compile(r"--[^\n]*")
_REFERENCES_RE = re.compile(r"\s+REFERENCES\s+\"?(\w+)\"?\s*\([^)]*\)"
                            r"(?:\s+ON\s+(?:DELETE|UPDATE)\s+(?:SET\s+NULL|SET\s+DEFAULT|CASCADE|RESTRICT|NO\s+ACTION))*",
                            re.IGNORECASE)
_UNIQUE_RE = re.compile(r"\s+UNIQUE\b", re.IGNORECASE)
_TABLE_CONSTRAINT_RE = re.compile(r"^\s*(CHECK|UNIQUE|FOREIGN\s+KEY|CONSTRAINT)\b", re.IGNORECASE)
_INDEX_ON_RE = re.compile(r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+\"?(\w+)\"?\s+ON\s+\"?(\w+)\"?", re.IGNORECASE)


@dataclass(frozen=True)
class Table:
    head: str  # "CREATE TABLE orders ("
    defs: tuple[str, ...]  # column definitions and table constraints
    tail: str  # ") STRICT, WITHOUT ROWID"

    def sql(self) -> str:
        return self.head + ",".join(d for d in self.defs if d.strip()) + self.tail


@dataclass(frozen=True)
class Schema:
    tables: dict[str, Table]  # by name, in creation order
    indexes: dict[str, tuple[str, str]]  # name -> (table, CREATE INDEX ...)

    def ddl(self) -> list[str]:
        return [t.sql() for t in self.tables.values()] + [sql for _, sql in self.indexes.values()]


@dataclass(frozen=True)
class Item:
    """One constraint or index of a hot table, and the schema without it."""

    kind: str  # FK, CHECK, UNIQUE, STRICT, index
    label: str  # e.g. "orders.merchant_id -> merchants"
    remove: Callable[[Schema], Schema]


def read_schema(path: str) -> Schema:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                            " AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
    finally:
        conn.close()
    tables = {name: _parse_table(sql) for kind, name, _, sql in rows if kind == "table"}
    indexes = {name: (table, _COMMENT_RE.sub("", sql)) for kind, name, table, sql in rows if kind == "index"}
    assert set(HOT_TABLES) <= set(tables), set(HOT_TABLES) - set(tables)
    return Schema(tables=tables, indexes=indexes)


def items(schema: Schema) -> list[Item]:
    """Every FK, CHECK, UNIQUE, STRICT and secondary index of the hot tables (primary keys stay)."""
    found: list[Item] = []
    for name in HOT_TABLES:
        table = schema.tables[name]
        for index, definition in enumerate(table.defs):
            found += _def_items(name, index, definition)
        if re.search(r"\bSTRICT\b", table.tail, re.IGNORECASE):
            found.append(Item("STRICT", f"{name} STRICT", _replace_tail(name, re.sub(r"\s*\bSTRICT\b\s*,?", " ", table.tail))))
    for index_name, (table_name, _) in schema.indexes.items():
        if table_name in HOT_TABLES:
            found.append(Item("index", f"{table_name} index {index_name}", _drop_index(index_name)))
    return found


def without(schema: Schema, chosen: list[Item]) -> Schema:
    for item in chosen:
        schema = item.remove(schema)
    return schema


def lean(schema: Schema) -> Schema:
    """The hot tables alone, with their columns, primary keys (idempotency's unique key is one)
    and STRICT, and no foreign key, CHECK, UNIQUE or secondary index."""
    stripped = without(schema, [i for i in items(schema) if i.kind != "STRICT"])
    return Schema(tables={n: t for n, t in stripped.tables.items() if n in HOT_TABLES},
                  indexes={n: v for n, v in stripped.indexes.items() if v[0] in HOT_TABLES})


# -- parsing and rewriting --------------------------------------------------------------------------
def _parse_table(sql: str) -> Table:
    text = _COMMENT_RE.sub("", sql)
    start = text.index("(")
    defs, depth, mark = [], 0, start + 1
    for position in range(start, len(text)):
        char = text[position]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                defs.append(text[mark:position])
                return Table(head=text[:start + 1], defs=tuple(defs), tail=text[position:])
        elif char == "," and depth == 1:
            defs.append(text[mark:position])
            mark = position + 1
    raise ValueError(f"unbalanced table definition: {sql[:60]}")


def _def_items(table: str, index: int, definition: str) -> list[Item]:
    constraint = _TABLE_CONSTRAINT_RE.match(definition)
    if constraint is not None:
        kind = {"CHECK": "CHECK", "UNIQUE": "UNIQUE"}.get(constraint.group(1).upper(), "FK")
        return [Item(kind, f"{table} {' '.join(definition.split())}", _replace_def(table, index, None))]
    if re.match(r"^\s*PRIMARY\s+KEY\b", definition, re.IGNORECASE):
        return []
    column = definition.split()[0]
    found = []
    for start, end in _check_spans(definition):
        found.append(Item("CHECK", f"{table}.{column} CHECK {' '.join(definition[start + 5:end].split())}",
                          _cut(table, index, definition[start:end])))
    for match in _REFERENCES_RE.finditer(definition):
        found.append(Item("FK", f"{table}.{column} -> {match.group(1)}", _cut(table, index, match.group(0))))
    for match in _UNIQUE_RE.finditer(definition):
        found.append(Item("UNIQUE", f"{table}.{column} UNIQUE", _cut(table, index, match.group(0))))
    return found


def _check_spans(definition: str) -> list[tuple[int, int]]:
    """(start, end) of each `CHECK (...)` of a column definition."""
    spans = []
    for match in re.finditer(r"\bCHECK\s*\(", definition, re.IGNORECASE):
        depth = 0
        for position in range(match.end() - 1, len(definition)):
            depth += {"(": 1, ")": -1}.get(definition[position], 0)
            if depth == 0:
                spans.append((match.start(), position + 1))
                break
    return spans


def _cut(table: str, index: int, text: str) -> Callable[[Schema], Schema]:
    def remove(schema: Schema) -> Schema:
        definition = schema.tables[table].defs[index]
        assert text in definition, (table, text)
        return _replace_def(table, index, definition.replace(text, " ", 1))(schema)
    return remove


def _replace_def(table: str, index: int, new: str | None) -> Callable[[Schema], Schema]:
    """The table with its definition `index` replaced (None: removed, e.g. a table-level UNIQUE)."""
    def remove(schema: Schema) -> Schema:
        old = schema.tables[table]
        defs = list(old.defs)
        defs[index] = new if new is not None else ""
        return _with_table(schema, table, Table(head=old.head, defs=tuple(defs), tail=old.tail))
    return remove


def _replace_tail(table: str, tail: str) -> Callable[[Schema], Schema]:
    def remove(schema: Schema) -> Schema:
        old = schema.tables[table]
        return _with_table(schema, table, Table(head=old.head, defs=old.defs, tail=tail))
    return remove


def _drop_index(name: str) -> Callable[[Schema], Schema]:
    def remove(schema: Schema) -> Schema:
        return Schema(tables=schema.tables, indexes={n: v for n, v in schema.indexes.items() if n != name})
    return remove


def _with_table(schema: Schema, name: str, table: Table) -> Schema:
    # A removed definition leaves an empty slot, so that the other items' indexes stay valid.
    return Schema(tables={n: (table if n == name else t) for n, t in schema.tables.items()}, indexes=schema.indexes)
