"""The schema UI in a real browser: Swagger UI 5, served from APSS's own files, reads the OpenAPI
3.1 document and shows every operation of it (Swagger UI 4 answered "does not specify a valid
version field" and showed none)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import playwright.sync_api as playwright_api

from tests.browser.conftest import CHROMIUM
from tests.browser.test_browser import ARTIFACTS, LAUNCH_ARGS

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def test_swagger_ui_shows_every_operation_of_the_document(server):
    document = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item
                  if method in _METHODS}
    assert len(operations) > 50

    foreign: list[str] = []
    problems: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: urlsplit(r.url).scheme in ("data", "blob", "about")
                    or urlsplit(r.url).hostname == "127.0.0.1" or foreign.append(r.url))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{server.base_url}/schema/swagger")
            page.wait_for_selector(".opblock", timeout=20_000)
            # Swagger UI renders a long list (150 tags and operations or more) virtually, only what
            # is in view: scroll to the end a screen at a time, collecting what each screen shows.
            shown: set[tuple[str, str]] = set()
            last_y = -1
            for _ in range(400):
                page.wait_for_timeout(150)
                shown |= {tuple(op) for op in page.evaluate("""() => [...document.querySelectorAll('.opblock')].map(block => [
                    block.querySelector('.opblock-summary-method').textContent.trim(),
                    block.querySelector('.opblock-summary-path').getAttribute('data-path')])""")}
                y = page.evaluate("window.scrollY")
                if shown >= operations or y == last_y:
                    break
                last_y = y
                page.mouse.wheel(0, 700)
            page.screenshot(path=str(Path(ARTIFACTS) / "schema-ui.png"))
            body = page.inner_text("body")
        finally:
            chromium.close()
    assert "valid version field" not in body
    assert shown == operations, (len(shown), len(operations), problems[:3])
    assert foreign == [] and problems == []
