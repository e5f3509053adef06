"""For the people who run APSS: /metrics (Prometheus text, checked against raw scans of the database
file and against what the test itself did), the Request-Id of every answer, JSON log lines that
carry it, and no secret in any output of a server whose output is not a terminal."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apss.clock import TestClock
from tests.conftest import (
    ADMIN_TOKEN,
    RunningServer,
    assert_error,
    free_port,
    start_run_py,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]



def _scrape(client: httpx.Client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4"), response.headers
    families = collections.defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            families[sample.name].append(sample)
    return families


def _value(families: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in families[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, families.get(name))
    return found[0]


def _raw(db_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own: its database holds only what these tests made."""
    running = RunningServer(db_path=tmp_path_factory.mktemp("ops") / "apss.sqlite", clock=TestClock()).start()
    yield running
    running.stop()


def test_metrics_match_the_database_and_the_requests_made(own_server):
    merchant = own_server.new_merchant()
    with merchant.client() as client:
        # A webhook endpoint nobody listens on: the events of these orders wait in the outbox.
        closed = f"http://127.0.0.1:{free_port()}/hook"
        assert client.post("/v1/webhook_endpoints", json={"url": closed, "events": ["*"]}).status_code == 201
        product = merchant.product(client, stock=100)
        orders = [merchant.order(client, product["id"], player_id=f"p{i}").json() for i in range(6)]
        for order in orders[:2]:
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        assert client.post(f"/v1/sandbox/payments/{orders[2]['payment']['id']}/fail").status_code == 202
        assert client.post(f"/v1/orders/{orders[3]['id']}/cancel").status_code == 200
        for order, status in zip(orders[:4], ["fulfilled", "fulfilled", "failed", "canceled"]):
            wait_for(lambda o=order, s=status: client.get(f"/v1/orders/{o['id']}").json()["status"] == s)
        assert client.get("/v1/no-such-thing").status_code == 404
    with own_server.admin() as admin:
        families = _scrape(admin)

    # What the test did, and what a raw scan of the file says, against what /metrics says.
    by_status = collections.Counter(status for (status,) in _raw(own_server.db_path, "SELECT status FROM orders"))
    assert by_status == {"fulfilled": 2, "failed": 1, "canceled": 1, "pending": 2}
    for status in ("pending", "fulfilled", "failed", "canceled", "expired"):
        assert _value(families, "apss_orders", status=status) == by_status.get(status, 0), status
    payments = collections.Counter(_raw(own_server.db_path, "SELECT channel, status FROM payments"))
    assert payments[("sandbox", "succeeded")] == 2 and payments[("sandbox", "failed")] == 1, payments
    for (channel, status), count in payments.items():
        assert _value(families, "apss_payments", channel=channel, status=status) == count
    assert sum(s.value for s in families["apss_payments"]) == sum(payments.values()) == 6
    [(pending,)] = _raw(own_server.db_path, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
    assert pending > 0 and _value(families, "apss_webhook_backlog") == pending
    [(unresolved,)] = _raw(own_server.db_path, "SELECT count(*) FROM alerts WHERE resolved_at_ms IS NULL")
    assert sum(s.value for s in families["apss_alerts_open"]) == unresolved

    # Requests by route template (never the raw path) and status.
    assert _value(families, "apss_http_requests_total", method="POST", route="/v1/orders", status="201") == 6
    assert _value(families, "apss_http_requests_total", method="GET", route="/v1/orders/{order_id}",
                  status="200") >= 4
    assert _value(families, "apss_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not [s for s in families["apss_http_requests_total"] if "ord_" in s.labels["route"]], "no ids in labels"
    assert _value(families, "apss_http_request_duration_seconds_count", method="POST", route="/v1/orders") == 6
    # The writer: its batches as a histogram (sum = transactions, count = batches), an idle queue.
    db = own_server.services.db
    batches = _value(families, "apss_db_write_batch_size_count")
    assert 0 < batches <= db.batches_committed
    assert _value(families, "apss_db_write_batch_size_bucket", le="+Inf") == batches
    assert batches <= _value(families, "apss_db_write_batch_size_sum") <= db.batch_members_committed
    assert _value(families, "apss_db_write_queue_depth") == 0 and _value(families, "apss_db_writer_up") == 1
    # The scheduler: the expiry job has run (its loop starts with the server).
    assert _value(families, "apss_job_runs_total", job="expiry") >= 1
    assert _value(families, "apss_job_failures_total", job="expiry") == 0
    assert _value(families, "apss_job_lag_seconds", job="expiry") >= 0


def test_metrics_ask_for_the_admin_token_unless_public(own_server, tmp_path):
    merchant = own_server.new_merchant()
    assert_error(httpx.get(f"{own_server.base_url}/metrics"), 401, "authentication_error", "invalid_api_key")
    assert_error(httpx.get(f"{own_server.base_url}/metrics", headers=merchant.headers), 401, "authentication_error",
                 "invalid_api_key")
    public = RunningServer(db_path=tmp_path / "public.sqlite", clock=TestClock(),
                           env={"APSS_SERVER_METRICS_PUBLIC": "true"}).start()
    try:
        response = httpx.get(f"{public.base_url}/metrics")
        assert response.status_code == 200 and "apss_orders" in response.text
        # Each app has its own registry: the other server's requests are not counted here.
        assert 'route="/v1/orders"' not in response.text
    finally:
        public.stop()


def test_every_answer_has_a_request_id_and_a_safe_incoming_one_is_echoed(own_server):
    merchant = own_server.new_merchant()
    with merchant.client() as client:
        mine = client.get("/v1/account", headers={"Request-Id": "trace-42.abc:XYZ_9"})
        assert mine.status_code == 200 and mine.headers["request-id"] == "trace-42.abc:XYZ_9"
        generated = {client.get("/v1/account").headers["request-id"] for _ in range(5)}
        assert len(generated) == 5 and all(g.startswith("req_") for g in generated)
        for unsafe in ("", "x" * 129, "two words", "quote\"d", "new\\nline", "é"):
            answer = client.get("/v1/account", headers={"Request-Id": unsafe.encode()})
            assert answer.headers["request-id"] != unsafe and answer.headers["request-id"].startswith("req_"), unsafe
        assert client.get("/v1/account", headers={"Request-Id": "x" * 128}).headers["request-id"] == "x" * 128
        # Errors too, with their one shape untouched; and a 404 no route took.
        refused = client.post("/v1/orders", json={"player_id": "p"}, headers={"Request-Id": "bad-order-1"})
        assert_error(refused, 400, "invalid_request_error", refused.json()["error"]["code"])
        assert refused.headers["request-id"] == "bad-order-1"
        assert client.get("/nowhere", headers={"Request-Id": "lost-1"}).headers["request-id"] == "lost-1"
    anonymous = httpx.get(f"{own_server.base_url}/v1/account")
    assert anonymous.status_code == 401 and anonymous.headers["request-id"].startswith("req_")
    assert len(anonymous.headers.get_list("request-id")) == 1


# -- a real process: its output is a file, not a terminal ----------------------------------------
@pytest.mark.slow
def test_json_logs_carry_the_request_id_and_no_output_holds_a_secret(tmp_path):
    db_path, port = tmp_path / "logs.sqlite", free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"APSS_DATABASE_PATH": str(db_path), "APSS_LOG_FORMAT": "json", "APSS_SERVER_LOG_LEVEL": "info"}
    env_now = {k: v for k, v in os.environ.items() if not k.startswith("APSS_")}
    # A demo merchant is seeded; its key is not shown, since the output is a file.
    log = tmp_path / "server.log"
    server = start_run_py(port=port, log=log, env={**env_now, **env, "APSS_ADMIN_TOKEN": ADMIN_TOKEN})
    secrets: list[str] = [ADMIN_TOKEN]
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
            [demo] = admin.get("/v1/merchants").json()["data"]
            assert f"Demo merchant {demo['id']}" in log.read_text() and "sk_test_" not in log.read_text()
            rolled = admin.post(f"/v1/merchants/{demo['id']}/keys").json()
            created = admin.post("/v1/merchants", json={"name": "Log Studio"}).json()
        secrets += [rolled["secret_key"], created["secret_key"]]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {created['secret_key']}"}) as client:
            secrets.append(client.get("/v1/account").json()["sandbox_webhook_secret"])
            product = client.post("/v1/products", json={"sku": "gem", "name": "Gem", "category": "item",
                                                        "prices": {"USD": 100}}).json()
            order = client.post("/v1/orders", json={"player_id": "p1", "currency": "USD",
                                                    "items": [{"product_id": product["id"], "quantity": 1}]}).json()
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
            wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled", timeout_s=30)
            forged = httpx.post(f"{base}/v1/channels/sandbox/webhook/{created['id']}", content=b'{"id":"evt_x"}',
                                headers={"Request-Id": "forged-callback-1", "Sandbox-Signature": "t=1,v1=00"})
            assert forged.status_code == 400 and forged.headers["request-id"] == "forged-callback-1"
            wait_for(lambda: "forged-callback-1" in log.read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()

    output = log.read_text()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message", "request_id"}, record
        assert record["time"].endswith("Z") and record["level"] in ("debug", "info", "warning", "error", "critical")
    [rejected] = [r for r in records if r["request_id"] == "forged-callback-1"]
    assert "rejected" in rejected["message"] and rejected["level"] == "warning", rejected
    # The good callback (the sandbox's own request) is logged under an id of its own.
    [applied] = [r for r in records if r["logger"].startswith("apss") and "callback sandbox/" in r["message"]
                 and "rejected" not in r["message"]]
    assert applied["request_id"].startswith("req_"), applied
    assert [r for r in records if r["request_id"] is None], "lines outside requests have a null request_id"
    # Every line of the process that is not a JSON record is one of the plain start-up lines.
    others = [line for line in output.splitlines() if line and not line.startswith("{")]
    plain = ("apss: migration", "database ", "APSS listening", "Demo merchant", "APSS stopped")
    assert all(line.startswith(plain) for line in others), others
    for secret in secrets:
        assert secret not in output
    assert f"POST /v1/merchants/{demo['id']}/keys" in output, "says how to get a key"


def test_a_generated_admin_token_is_not_announced_without_a_terminal(tmp_path):
    """What cli.py asks for when its output is not a terminal: the line says a token was made and
    how to choose one, and holds no token; the stored hash is of a token nobody saw."""
    hidden = RunningServer(db_path=tmp_path / "hidden.sqlite", clock=TestClock(), announce_secrets=False,
                           env={"APSS_ADMIN_TOKEN": "", "APSS_SEED_DEMO": "true"}).start()
    try:
        [token_line] = [line for line in hidden.announced if line.startswith("Generated")]
        assert "APSS_ADMIN_TOKEN" in token_line and "adm_" not in token_line, token_line
        [demo_line] = [line for line in hidden.announced if line.startswith("Demo merchant")]
        assert "sk_test_" not in demo_line and "/keys" in demo_line, demo_line
        assert_error(httpx.get(f"{hidden.base_url}/v1/merchants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
                     401, "authentication_error", "invalid_api_key")
    finally:
        hidden.stop()
    [(stored,)] = _raw(tmp_path / "hidden.sqlite", "SELECT count(*) FROM settings WHERE name LIKE '%admin%'")
    assert stored == 1



def test_without_chromium_the_browser_tests_stop_the_run_with_one_line(tmp_path):
    """Never skipped, never an assertion deep in a test: the run stops before any test."""
    env = {**os.environ, "CHROMIUM_PATH": str(tmp_path / "no-chromium")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/browser"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    line = (f"Chromium not found at {tmp_path / 'no-chromium'}: install it with apt-get install chromium "
            "(CI's .ci/run does)")
    assert line in done.stdout + done.stderr and "passed" not in done.stdout and "no tests ran" in done.stdout


def test_text_log_lines_carry_the_request_id_too(capsys):
    """The text format names the request (`[-]` outside one); the wrapper sets it for the request's task."""
    import asyncio
    import logging

    from apss.api.observability import RequestContext, configure_logging

    seen: list[tuple] = []

    async def inner(scope, receive, send) -> None:
        logging.getLogger("apss.test").warning("inside")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message) -> None:
        seen.append(message)

    app = RequestContext(inner, observe=lambda **kw: seen.append(kw))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(log_format="text", level="info")
        asyncio.run(app({"type": "http", "method": "GET", "headers": [(b"request-id", b"text-1")]}, None, send))
        logging.getLogger("apss.test").warning("outside")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[2] for line in lines[-2:]] == ["WARNING apss.test [text-1]: inside",
                                                               "WARNING apss.test [-]: outside"], lines
    assert (b"request-id", b"text-1") in seen[0]["headers"]
    assert seen[-1] == {"method": "GET", "route": "unmatched", "status": 204, "seconds": seen[-1]["seconds"]}
