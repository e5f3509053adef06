"""The browser tests drive Debian's Chromium (never `playwright install`: CI has no internet).
Without it they are never skipped: the run stops before any test with one line saying what to
install. CHROMIUM_PATH names another binary (the check then names that path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium")
_HERE = Path(__file__).resolve().parent


def pytest_collection_finish(session: pytest.Session) -> None:
    """After selection (-k, -m, paths): only a run that holds a browser test needs Chromium."""
    selected = any(_HERE in Path(str(item.path)).resolve().parents for item in session.items)
    if selected and not CHROMIUM.is_file():
        pytest.exit(f"Chromium not found at {CHROMIUM}: install it with apt-get install chromium "
                    "(CI's .ci/run does)", returncode=1)
