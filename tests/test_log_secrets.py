"""The session-end search of the logs for secrets and personal data (tests/conftest.py) finds
what it must, and lets through run.py's once-only lines."""

from __future__ import annotations

import logging

from tests.conftest import _SINK, PLANTED, leaks_in, plant


def test_the_search_finds_planted_values_and_secret_shaped_tokens():
    planted = {"alice@example.com", "198.51.100.23"}
    lines = ["apss INFO order ord_1 created for player p1",
             "apss WARNING webhook to https://example.test failed: 500",
             "apss INFO risk: email alice@example.com blocked",
             "apss ERROR callback secret whsec_abcdefghijklmnopqrstuv did not verify",
             "apss INFO key sk_test_abcdefghijklmnopqrstuvwxyz rolled",
             "apss WARNING admin token adm_0123456789abcdef0123 refused",
             "apss INFO from 198.51.100.23",
             "Demo merchant mch_1 (Demo, test mode); secret key (shown once): sk_test_abcdefghijklmnopqrstuvwxyz"]
    assert leaks_in(lines, planted) == lines[2:7]


def test_log_records_of_the_session_reach_the_search():
    plant("carol@example.com")
    assert "carol@example.com" in PLANTED
    logging.getLogger("apss.test").warning("nothing secret here")
    assert "apss.test WARNING nothing secret here" in _SINK.lines
