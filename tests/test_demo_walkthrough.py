"""README "A month of renewals in seconds", run as a user runs it: `python3 run.py` in a subprocess
with the README's environment (test clock, admin token) on a fresh database, so the demo store is
seeded; then the README's curl lines in bash, unchanged but for the port. What they did is checked
through the API: the renewal, its order, the events, the player's membership; then an order with
the demo coupon (README "Promotions") shows its discount."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from apss.clock import format_rfc3339, parse_rfc3339
from apss.domain.subscriptions import Billing, Interval, add_intervals
from tests.conftest import free_port, start_run_py, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
README_API = "http://127.0.0.1:8000"
SECTION = "### A month of renewals in seconds"
MONTH = Billing(interval=Interval.MONTH)


def _section_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) + len(SECTION):]
    section = section[:re.search(r"^#{2,3} ", section, re.MULTILINE).start()]
    return re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def _start_environment(command: str) -> dict[str, str]:
    """The `NAME=value` words before `python3 run.py` in the README's start command."""
    words = shlex.split(command.strip())
    assert words[-2:] == ["python3", "run.py"], words
    return dict(word.split("=", 1) for word in words[:-2])


def _start(db_path: Path, port: int, log: Path, readme_env: dict[str, str]) -> subprocess.Popen:
    return start_run_py(port=port, log=log, env={**readme_env, "APSS_DATABASE_PATH": str(db_path)})


def test_the_readme_walks_a_demo_subscription_through_a_month_on_the_test_clock(tmp_path):
    start, script = _section_blocks()
    readme_env = _start_environment(start)
    assert readme_env["APSS_CLOCK_MODE"] == "test"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    process = _start(tmp_path / "clock-demo.sqlite", port, log, readme_env)
    try:
        assert README_API in script
        # The walk-through's own variables, printed for the checks below.
        run = script.replace(README_API, base) + '\necho "WALKTHROUGH $KEY $SUB"\n'
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", run], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, (done.stdout, done.stderr, log.read_text())
        key, sub_id = done.stdout.rsplit("WALKTHROUGH ", 1)[1].split()
        assert '"status":"processing"' in done.stdout and "subscription.renewed" in done.stdout, done.stdout
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            _check_the_renewal(client, sub_id)
            _check_the_demo_coupon(client)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()


def _check_the_renewal(client: httpx.Client, sub_id: str) -> None:
    sub = client.get(f"/v1/subscriptions/{sub_id}").json()
    anchor_ms = parse_rfc3339(sub["created_at"])
    first_end, second_end = (format_rfc3339(add_intervals(anchor_ms, MONTH, n)) for n in (1, 2))
    assert sub["status"] == "active" and sub["player_id"] == "bob"
    assert (sub["current_period_start"], sub["current_period_end"]) == (first_end, second_end), "moved one month"
    renewal = sub["latest_order"]
    assert (renewal["status"], renewal["subscription_id"], renewal["created_at"]) == ("fulfilled", sub_id, first_end)
    assert renewal["payment"]["status"] == "succeeded" and renewal["amount"] == 499

    orders = client.get("/v1/orders", params={"player_id": "bob"}).json()["data"]
    assert [(o["status"], o["subscription_id"]) for o in orders] == [("fulfilled", sub_id)] * 2
    assert orders[0]["id"] == renewal["id"], "newest first: the renewal, then the first order"

    events = client.get(f"/v1/subscriptions/{sub_id}/events").json()["data"]
    assert [(e["type"], e["to_status"]) for e in events] == [
        ("subscription.created", "incomplete"), ("subscription.activated", "active"),
        ("subscription.renewed", "active")]
    assert (events[-1]["cause"], events[-1]["created_at"]) == (f"order:{renewal['id']}", first_end)

    inventory = client.get("/v1/players/bob/inventory").json()
    assert inventory["memberships"] == [{"sku": "battle_pass_monthly", "expires_at": second_end}]


def _check_the_demo_coupon(client: httpx.Client) -> None:
    gems = next(p["id"] for p in client.get("/v1/products", params={"limit": 100}).json()["data"]
                if p["sku"] == "gems_500")
    created = client.post("/v1/orders", json={"player_id": "bob", "currency": "USD", "coupon": "WELCOME10",
                                              "items": [{"product_id": gems, "quantity": 2}]})
    assert created.status_code == 201, created.text
    order = created.json()
    assert (order["subtotal"], order["discount"], order["amount"]) == (998, 100, 898)
    [welcome] = client.get("/v1/promotions").json()["data"]
    assert order["promotions"] == [welcome["id"]] and welcome["code"] == "WELCOME10"
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    wait_for(lambda: client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled")
    assert client.get("/v1/players/bob/wallet").json()["balances"] == {"GEMS": 1000}
    again = client.post("/v1/orders", json={"player_id": "bob", "currency": "USD", "coupon": "WELCOME10",
                                            "items": [{"product_id": gems, "quantity": 1}]})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "coupon_exhausted"), "once per player"
