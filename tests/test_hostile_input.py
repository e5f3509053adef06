"""Hostile input and access: authentication before the body is read, integers that are integers,
the admin token's guessing throttle and its strength."""

from __future__ import annotations

import base64
import logging
import re

import pytest

from apss.clock import TestClock
from apss.config import load_config
from tests.conftest import ADMIN_TOKEN, RunningServer, assert_error

MALFORMED = [b"{not json", b'{"items": [', b"\xff\xfe", b'{"player_id": 1}', b"[]"]


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("path", ["/v1/orders", "/v1/products", "/v1/merchants", "/v1/quotes",
                                  "/v1/players/p1/wallet/debit", "/v1/admin/clock/advance"])
def test_an_unauthenticated_malformed_body_is_401_not_a_parser_message(server, path, body):
    import httpx

    for headers in ({}, {"Authorization": "Bearer sk_test_not_a_key_at_all_0000"}):
        response = httpx.post(f"{server.base_url}{path}", content=body,
                              headers={"Content-Type": "application/json", **headers})
        assert_error(response, 401, "authentication_error", response.json()["error"]["code"])
        assert "JSON" not in response.text and "Expected" not in response.text, response.text


@pytest.mark.parametrize("value", ["1", 1.0, 2.5, True, None, "1e2"])
def test_a_quantity_or_an_amount_must_be_a_json_integer(merchant, value):
    with merchant.client() as client:
        product = merchant.product(client)
        order = client.post("/v1/orders", json={"player_id": "p", "currency": "USD",
                                                "items": [{"product_id": product["id"], "quantity": value}]})
        assert_error(order, 400, "invalid_request_error", "parameter_invalid", param="items[0].quantity")
        priced = client.post("/v1/products", json={"sku": "int_check", "name": "N", "category": "item",
                                                   "prices": {"USD": value}})
        assert priced.status_code == 400, priced.text
        debit = client.post("/v1/players/p/wallet/debit", json={"currency": "GEMS", "amount": value})
        assert_error(debit, 400, "invalid_request_error", "parameter_invalid", param="amount")
        adjusted = client.patch(f"/v1/products/{product['id']}", json={"stock_adjust": value})
        assert adjusted.status_code == 400, adjusted.text
        assert client.get("/v1/orders").json()["data"] == [], "nothing was created"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] is None
        # The same bodies with integers work: the check is on the type, not the request.
        assert merchant.order(client, product["id"], quantity=1).status_code == 201


@pytest.fixture
def throttled(tmp_path):
    env = {"APSS_ADMIN_AUTH_FAILURES_MAX": "5"}  # the default, which the shared server raises
    running = RunningServer(db_path=tmp_path / "throttle.sqlite", clock=TestClock(), env=env).start()
    yield running
    running.stop()


def test_the_sixth_failed_admin_authentication_in_60_s_is_429_for_60_s(throttled, caplog):
    server = throttled
    guesses = [f"adm_guess_{n:04d}_0123456789abcdef" for n in range(8)]
    caplog.set_level(logging.WARNING, logger="apss.auth")
    with server.admin() as admin:
        assert admin.get("/v1/merchants").status_code == 200
        for guess in guesses[:5]:
            response = admin.get("/v1/merchants", headers={"Authorization": f"Bearer {guess}"})
            assert_error(response, 401, "authentication_error", response.json()["error"]["code"])
        sixth = admin.post("/v1/merchants", json={"name": "x"}, headers={"Authorization": f"Bearer {guesses[5]}"})
        assert_error(sixth, 429, "rate_limit_error", "admin_auth_throttled")
        assert sixth.headers["Retry-After"] == "60"
        # Locked: the right token too (else a guesser would learn when it hit), and 59 s later.
        assert admin.get("/v1/merchants").status_code == 429
        server.clock.advance(seconds=59)
        late = admin.get("/v1/merchants")
        assert late.status_code == 429 and late.headers["Retry-After"] == "1"
        server.clock.advance(seconds=1)
        assert admin.get("/v1/merchants").status_code == 200, "unlocked after 60 s"
        # Failures older than the window do not count.
        for guess in guesses[:5]:
            admin.get("/v1/merchants", headers={"Authorization": f"Bearer {guess}"})
            server.clock.advance(seconds=13)
        assert admin.get("/v1/merchants").status_code == 200
        # Merchant keys are not throttled by failed admin guesses.
        merchant = server.new_merchant()
        with merchant.client() as client:
            assert client.get("/v1/account").status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "admin authentication locked for 60 s" in logged and "127.0.0.1" in logged
    assert not any(guess in logged for guess in guesses) and ADMIN_TOKEN not in logged, logged


def test_the_generated_admin_token_has_at_least_128_bits(tmp_path):
    running = RunningServer(db_path=tmp_path / "gen.sqlite", clock=TestClock(), env={"APSS_ADMIN_TOKEN": ""}).start()
    try:
        [line] = [line for line in running.announced if "admin token" in line]
        token = re.search(r"(adm_\S+)", line).group(1)
        raw = base64.urlsafe_b64decode(token.removeprefix("adm_") + "==")
        assert len(raw) * 8 >= 128, token
        with running.admin() as admin:
            admin.headers["Authorization"] = f"Bearer {token}"
            assert admin.get("/v1/merchants").status_code == 200
    finally:
        running.stop()


def test_a_configured_admin_token_under_32_characters_warns_and_under_16_is_refused(tmp_path, caplog):
    from apss.errors import ConfigInvalid

    with pytest.raises(ConfigInvalid, match="admin.token"):
        load_config("/nonexistent.toml", environ={"APSS_ADMIN_TOKEN": "a" * 15})
    caplog.set_level(logging.WARNING, logger="apss")
    running = RunningServer(db_path=tmp_path / "short.sqlite", clock=TestClock(), env={"APSS_ADMIN_TOKEN": "b" * 20}).start()
    try:
        with running.admin() as admin:
            admin.headers["Authorization"] = "Bearer " + "b" * 20
            assert admin.get("/v1/merchants").status_code == 200
    finally:
        running.stop()
    warnings = [r.getMessage() for r in caplog.records if "admin.token is 20 characters" in r.getMessage()]
    assert warnings and "b" * 20 not in warnings[0]


def test_the_dashboard_login_counts_the_same_failures(throttled):
    import httpx

    with httpx.Client(base_url=throttled.base_url, timeout=30) as browser:
        def attempt(token: str) -> httpx.Response:
            page = browser.get("/admin/login")
            csrf = re.search(r"name=csrf value='([^']+)'", page.text).group(1)
            return browser.post("/admin/login", data={"csrf": csrf, "token": token})

        assert [attempt(f"wrong-token-{n:02d}-0123456789").status_code for n in range(5)] == [401] * 5
        assert attempt(ADMIN_TOKEN).status_code == 429, "locked: the right token too"
        with throttled.admin() as admin:
            assert admin.get("/v1/merchants").status_code == 429, "one lock for the API and the dashboard"
        throttled.clock.advance(seconds=60)
        assert attempt(ADMIN_TOKEN).status_code in (200, 303)
