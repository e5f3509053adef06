"""The HTTP reference in docs/ is generated from the code (scripts/api_reference.py): it must be
current, cover every operation the server documents, and every error code the code base raises."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def test_generated_reference_is_current():
    assert reference.main(["--check"]) == 0, "run: python3 scripts/api_reference.py"


def test_every_operation_has_a_curl_example():
    document = reference.openapi_document()
    text = reference.ENDPOINTS.read_text()
    for path, item in document["paths"].items():
        for method in reference._METHODS:
            if method in item:
                heading = f"### `{method.upper()} {path}`"
                assert heading in text, heading
                section = text.split(heading, 1)[1].split("\n### ", 1)[0]
                assert f'curl -s -X {method.upper()} "$API{path}' in section, heading


def test_error_codes_cover_the_raised_ones():
    codes = {code for _, _, code, _ in reference.error_codes()}
    assert {"out_of_stock", "idempotency_key_reused", "invalid_idempotency_key", "rate_limited", "not_ready"} <= codes
    raised = set(re.findall(r'(?<![a-z_])code="([a-z_]+)"', "".join(p.read_text() for p in (ROOT / "apss").rglob("*.py"))))
    listed = reference.ERROR_CODES.read_text()
    missing = {code for code in raised if f"`{code}`" not in listed}
    assert missing == set(), missing


def test_docs_name_every_sandbox_magic_value():
    from apss.channels.sandbox import mapping
    magic = re.findall(r"^- `([a-z_]+)(?::N)?`", mapping.__doc__.split("Statements")[0], flags=re.M)
    assert {"declined", "lost_callback", "refund_fails", "hard_decline"} <= set(magic)
    docs = (ROOT / "docs" / "http-api.md").read_text()
    for value in magic:
        assert f"`{value}" in docs, value
