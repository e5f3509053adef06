"""The schema of a database as comparable data, read from each engine's own catalogue: tables with
their columns (name, type, not null, default) in order, primary key, unique constraints, foreign
keys, CHECKs and explicit indexes (columns, unique, partial predicate). CHECK and predicate texts
differ between the engines (PostgreSQL rewrites `IN (...)` as `= ANY (ARRAY[...])` and adds casts),
so each is compared by what it is made of: the columns it names, its string and number literals."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from typing import Any

import psycopg

_SQLITE_TYPES = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea", "REAL": "double precision"}
_LITERAL_RE = re.compile(r"'((?:[^']|'')*)'")
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?![\w.])")
_WORD_RE = re.compile(r"[A-Za-z_]\w*")
_CAST_RE = re.compile(r"::[a-z ]+")


def _signature(expression: str, columns: set[str]) -> tuple:
    literals = tuple(sorted(m.replace("''", "'") for m in _LITERAL_RE.findall(expression)))
    rest = _LITERAL_RE.sub(" ", _CAST_RE.sub("", expression))
    return (tuple(sorted(set(_WORD_RE.findall(rest)) & columns)), literals,
            tuple(sorted(set(_NUMBER_RE.findall(rest)))))


def _default(text: str | None) -> str | None:
    if text is None:
        return None
    text = _CAST_RE.sub("", text).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text


def _checks_sqlite(sql: str) -> list[str]:
    sql = re.sub(r"--[^\n]*", "", sql)
    found = []
    for match in re.finditer(r"\bCHECK\s*\(", sql, re.IGNORECASE):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        found.append(sql[match.end():i - 1])
    return found


def sqlite_schema(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables: dict[str, Any] = {}
        indexes: dict[str, Any] = {}
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                                      " AND name NOT LIKE 'sqlite_%' ORDER BY name"):
            info = conn.execute(f"PRAGMA table_xinfo({name})").fetchall()
            pk = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            columns = [(row[1], _SQLITE_TYPES[row[2].upper()], bool(row[3]) or row[1] in pk, _default(row[4]))
                       for row in info]
            names = {c[0] for c in columns}
            uniques = set()
            for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({name})").fetchall():
                cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})"))
                if origin == "u":
                    uniques.add(cols)
                elif origin == "c":
                    index_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
                    where = index_sql.split(" WHERE ", 1)[1] if partial else ""
                    indexes[index] = (name, cols, bool(unique), _signature(where, names) if partial else None)
            if pk:
                uniques.add(pk)
            grouped: dict[int, list] = {}
            for fk_id, _, target, src, dst, *_ in sorted(conn.execute(f"PRAGMA foreign_key_list({name})").fetchall()):
                grouped.setdefault(fk_id, []).append((src, target, dst))
            foreign = Counter((tuple(s for s, _, _ in g), g[0][1], tuple(d for _, _, d in g)) for g in grouped.values())
            checks = Counter(_signature(c, names) for c in _checks_sqlite(sql))
            tables[name] = {"columns": columns, "pk": pk, "uniques": uniques, "fks": foreign, "checks": checks}
        return {"tables": tables, "indexes": indexes}
    finally:
        conn.close()


def postgresql_schema(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        tables: dict[str, Any] = {}
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position").fetchall()
        for table, column, data_type, nullable, default, identity in rows:
            tables.setdefault(table, {"columns": []})["columns"].append(
                (column, data_type, nullable == "NO", None if identity == "YES" else _default(default)))
        for table, entry in tables.items():
            names = {c[0] for c in entry["columns"]}
            constraints = conn.execute(
                "SELECT c.contype, array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
                "   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),"
                " f.relname, array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)"
                "   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o),"
                " pg_get_constraintdef(c.oid)"
                " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid LEFT JOIN pg_class f ON f.oid = c.confrelid"
                " WHERE t.relname = %s AND t.relnamespace = 'public'::regnamespace", (table,)).fetchall()
            entry["pk"] = next((tuple(cols) for kind, cols, *_ in constraints if kind == "p"), ())
            entry["uniques"] = {tuple(cols) for kind, cols, *_ in constraints if kind in ("u", "p")}
            entry["fks"] = Counter((tuple(cols), target, tuple(dst)) for kind, cols, target, dst, _ in constraints
                                   if kind == "f")
            entry["checks"] = Counter(_signature(text, names) for kind, _, _, _, text in constraints if kind == "c")
        indexes = {}
        for index, table, unique, cols, predicate in conn.execute(
                "SELECT i.relname, t.relname, x.indisunique, array(SELECT a.attname FROM unnest(x.indkey)"
                "   WITH ORDINALITY k(n, o) JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o),"
                " pg_get_expr(x.indpred, x.indrelid)"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
                " WHERE t.relnamespace = 'public'::regnamespace"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)").fetchall():
            names = {c[0] for c in tables[table]["columns"]}
            indexes[index] = (table, tuple(cols), unique, _signature(predicate, names) if predicate else None)
        return {"tables": tables, "indexes": indexes}
