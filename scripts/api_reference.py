"""Writes docs/endpoints.md (every operation of the served OpenAPI document, with a curl example)
and docs/error-codes.md (every error code the code base can answer, with its status), so the
reference cannot drift from the code: tests/test_docs.py fails when either file is stale.

    python3 scripts/api_reference.py          # rewrite both files
    python3 scripts/api_reference.py --check  # exit 1 if either is stale
"""

from __future__ import annotations

import ast
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ROOT / "docs" / "endpoints.md"
ERROR_CODES = ROOT / "docs" / "error-codes.md"
_METHODS = ("get", "post", "put", "patch", "delete")
_TAG_ORDER = ["health", "account", "products", "orders", "payments", "refunds", "players", "deliveries", "promotions",
              "subscriptions", "channels", "webhooks", "money", "reports", "reconciliation", "settlements", "alerts",
              "sandbox", "admin"]


def openapi_document() -> dict:
    sys.path.insert(0, str(ROOT))
    import msgspec

    from apss.api.openapi import refine
    from apss.app import create_app
    from apss.config import Config, DatabaseConfig

    with tempfile.TemporaryDirectory() as folder:
        config = msgspec.structs.replace(Config(), database=DatabaseConfig(path=f"{folder}/apss.sqlite"))
        app = create_app(config, announce=lambda line: None)
        return refine(app.openapi_schema.to_schema(), app)


# -- endpoints -------------------------------------------------------------------------------------

def _resolve(schema: dict, document: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _example(schema: dict, document: dict, name: str = "", depth: int = 0):
    """A small plausible value for a request body: required fields only."""
    schema = _resolve(schema, document)
    if depth > 4:
        return None
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return _example(options[0], document, name, depth) if options else None
    if "examples" in schema:
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = schema.get("required", [])
        return {field: _example(sub, document, field, depth + 1)
                for field, sub in schema.get("properties", {}).items() if field in required}
    if kind == "array":
        return [_example(schema.get("items", {}), document, name, depth + 1)]
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "boolean":
        return True
    samples = {"player_id": "alice", "currency": "USD", "sku": "gems_500", "name": "500 Gems", "category": "currency",
               "url": "https://game.example/apss/webhooks", "product_id": "prd_...", "reason": "requested_by_player",
               "since": "2026-11-25T00:00:00Z", "start": "2026-11-23T00:00:00Z", "to": "2026-12-25T00:00:00Z"}
    return samples.get(name, f"<{name or 'value'}>")


def _auth(operation: dict, path: str) -> str:
    if not operation.get("security"):
        return "public"
    if path.startswith("/v1/admin") or path.startswith("/v1/merchants"):
        return "admin token"
    return "merchant secret key"


def _curl(method: str, path: str, operation: dict, document: dict) -> str:
    auth = _auth(operation, path)
    parts = [f"curl -s -X {method.upper()} \"$API{path}\""]
    if auth.startswith("admin token"):
        parts.append('-H "Authorization: Bearer $ADMIN"')
    elif auth == "merchant secret key":
        parts.append('-H "Authorization: Bearer $KEY"')
    if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", [])):
        parts.append('-H "Idempotency-Key: $(uuidgen)"')
    body = operation.get("requestBody", {}).get("content", {})
    if "application/json" in body:
        example = _example(body["application/json"]["schema"], document)
        parts.append(f"-d '{json.dumps(example, ensure_ascii=False)}'")
    elif "text/csv" in body:
        parts.append('-H "Content-Type: text/csv" --data-binary @statement.csv')
    query = [p for p in operation.get("parameters", []) if p["in"] == "query" and p.get("required")]
    if query:
        parts[0] = parts[0][:-1] + "?" + "&".join(f"{p['name']}=..." for p in query) + '"'
    return " \\\n  ".join(parts)


def _type_text(schema: dict, document: dict) -> str:
    """A parameter's type for a reader: `string`, `integer`, or `one of: a, b` for an enum (null,
    which only marks the parameter optional, is left out: the required column says that)."""
    schema = _resolve(schema, document)
    options = schema.get("oneOf") or schema.get("anyOf")
    if options:
        return " or ".join(_type_text(s, document) for s in options if s.get("type") != "null")
    if "enum" in schema:
        return "one of: " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None)
    kind = schema.get("type", "?")
    return "/".join(k for k in kind if k != "null") if isinstance(kind, list) else kind


def _parameters(operation: dict, document: dict) -> list[str]:
    rows = []
    for p in operation.get("parameters", []):
        if p["in"] == "path":
            continue
        kind = _type_text(p.get("schema", {}), document)
        rows.append(f"| `{p['name']}` | {p['in']} | {kind} | {'yes' if p.get('required') else 'no'} | "
                    f"{(p.get('description') or '').replace('|', '/')} |")
    if not rows:
        return []
    return ["| parameter | in | type | required | notes |", "|---|---|---|---|---|", *rows, ""]


def _schema_name(content: dict) -> str:
    for media, body in content.items():
        ref = body.get("schema", {}).get("$ref", "")
        if ref:
            return f"`{ref.rsplit('/', 1)[1]}`"
        return f"{media}"
    return "no body"


def endpoints_markdown(document: dict) -> str:
    by_tag: dict[str, list] = {}
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                tag = (item[method].get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((path, method, item[method]))
    lines = ["# Endpoints", "",
             "Generated from the OpenAPI document the server serves at `/schema/openapi.json` "
             "(`python3 scripts/api_reference.py`); the schema UI at `/schema/swagger` shows the same, with every "
             "field. Conventions (keys, errors, idempotency, lists) are in [http-api.md](http-api.md). The examples "
             "assume:", "",
             "```sh", "API=http://127.0.0.1:8000", "KEY=sk_test_...   # a merchant's secret key",
             "ADMIN=adm_...    # the admin token", "```", ""]
    tags = sorted(by_tag, key=lambda t: (_TAG_ORDER.index(t) if t in _TAG_ORDER else len(_TAG_ORDER), t))
    lines += ["Sections: " + ", ".join(f"[{t}](#{t})" for t in tags) + ".", ""]
    for tag in tags:
        lines += [f"## {tag}", ""]
        for path, method, operation in by_tag[tag]:
            lines += [f"### `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            if operation.get("description"):
                lines += [operation["description"], ""]
            lines += [f"Authentication: {_auth(operation, path)}."]
            body = operation.get("requestBody", {}).get("content")
            if body:
                lines += [f"Request body: {_schema_name(body)}."]
            answers = []
            for status, response in sorted(operation["responses"].items()):
                content = response.get("content", {})
                answers.append(f"{status} {_schema_name(content)}" if status.startswith("2") else status)
            lines += ["Answers: " + ", ".join(answers) + ".", ""]
            lines += _parameters(operation, document)
            lines += ["```sh", _curl(method, path, operation, document), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- error codes -----------------------------------------------------------------------------------

def error_codes() -> list[tuple[int, str, str, str]]:
    """(status, type, code, where) for every code: class-level `code = "..."` of the typed errors, and
    every `SomeError(..., code="...")` raised in the code base."""
    sys.path.insert(0, str(ROOT))
    from apss import errors
    from apss.api.errors import status_for

    found: dict[tuple[str, str], set[str]] = {}
    classes = {name: cls for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, errors.ApssError) and cls is not errors.ApssError}
    for name, cls in classes.items():
        if "code" in vars(cls):
            found.setdefault((name, cls.code), set()).add("apss/errors.py")
    for module in sorted((ROOT / "apss").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                code = next((k.value.value for k in node.keywords if k.arg == "code"
                             and isinstance(k.value, ast.Constant)), None)
                if name in classes and code:
                    found.setdefault((name, code), set()).add(str(module.relative_to(ROOT)))
    rows = []
    for (name, code), where in found.items():
        try:
            status, error_type = status_for(classes[name]("x"))
        except (AssertionError, TypeError):
            continue
        rows.append((status, error_type, code, ", ".join(sorted(where))))
    return sorted(set(rows))


def error_codes_markdown() -> str:
    lines = ["# Error codes", "",
             "Every error answers `{\"error\": {\"type\", \"code\", \"message\", \"param\"?}}` (see "
             "[http-api.md](http-api.md#errors)). Generated from the code (`python3 scripts/api_reference.py`): "
             "every code any route can answer, with its status and type. Rely on `code`, never on `message`.", "",
             "Besides these, Litestar-level refusals are mapped to the same shape: 400 `invalid_request` / "
             "`parameter_invalid` / `body_malformed`, 404 `not_found` for an unknown route, 405 "
             "`method_not_allowed`, 413 `body_too_large`, 415 `media_type_unsupported`; a 500 `api_error` "
             "`internal_error` is always a bug.", "",
             "| status | type | code | raised in |", "|---|---|---|---|"]
    lines += [f"| {s} | {t} | `{c}` | {w} |" for s, t, c, w in error_codes()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    wanted = {ENDPOINTS: endpoints_markdown(openapi_document()), ERROR_CODES: error_codes_markdown()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python3 scripts/api_reference.py")
        return 1 if stale else 0
    for path, text in wanted.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
