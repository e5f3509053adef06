"""Benchmark: test-clock advances of 30 and 365 days on a demo database, against a no-op advance
(`{"seconds": 0}`: every stepped job runs once at the target) in the same run.

    python bench/test_clock.py [--orders 200] [--paid 50] [--step-s 3600]

Starts `python run.py` (fresh temp database, clock.mode = "test", the demo merchant and catalog),
then before each timed advance creates `--orders` pending orders (they expire during the advance,
each at its own expiry time) and `--paid` orders paid through the sandbox with callbacks delayed
by 1-3600 s (delivered during the advance). Prints the wall time of each advance and checks that
the orders ended as they should. Prints figures only; asserts nothing about speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and bench/http.py would shadow the
# standard library's `http` package (which httpx imports): drop the folder first.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

REPO = _BENCH_DIR.parent
ADMIN_TOKEN = "adm_bench_token_0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, *, port: int, step_s: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "APSS_CONFIG": "/nonexistent-config.toml", "APSS_DATABASE_PATH": str(workdir / "apss.sqlite"),
           "APSS_SERVER_PORT": str(port), "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_CLOCK_MODE": "test",
           "APSS_CLOCK_STEP_S": str(step_s), "APSS_SERVER_LOG_LEVEL": "warning", "APSS_API_REQUESTS_PER_S_MAX": "0"}
    log_path = workdir / "server.log"
    server = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=env, stdout=log_path.open("w"),
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        text = log_path.read_text()
        key = re.search(r"secret key \(shown once\): (sk_test_\S+)", text)
        if key and "APSS listening" in text:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return server, key.group(1)
            except httpx.HTTPError:
                pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: the server did not start:\n{text}")
        time.sleep(0.1)


def make_work(client: httpx.Client, *, product_id: str, orders: int, paid: int, tag: str) -> list[str]:
    """`orders` pending orders and `paid` orders whose sandbox callback is delayed 1-3600 s."""
    ids = []
    for n in range(orders + paid):
        metadata = {"sandbox_outcome": f"delay_callback:{random.randint(1, 3600)}"} if n < paid else {}
        response = client.post("/v1/orders", json={"player_id": f"p-{tag}-{n}", "currency": "USD", "metadata": metadata,
                                                   "items": [{"product_id": product_id, "quantity": 1}]})
        assert response.status_code == 201, response.text
        order = response.json()
        if n < paid:
            assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        ids.append(order["id"])
    return ids


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order_id in ids:
        status = client.get(f"/v1/orders/{order_id}").json()["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


def timed_advance(admin: httpx.Client, seconds: int) -> float:
    started = time.perf_counter()
    response = admin.post("/v1/admin/clock/advance", json={"seconds": seconds})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200, help="pending orders to expire in each advance")
    parser.add_argument("--paid", type=int, default=50, help="orders paid with a delayed sandbox callback")
    parser.add_argument("--step-s", type=int, default=3600, help="clock.step_s")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server, key = start_server(Path(tmp), port=port, step_s=args.step_s)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client, \
                    httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600) as admin:
                product = client.post("/v1/products", json={"sku": "bench_unlimited", "name": "Bench", "category": "item",
                                                            "prices": {"USD": 100}}).json()
                noop = [timed_advance(admin, 0) for _ in range(5)]
                print(f"no-op advance (seconds=0, every stepped job once): median {statistics.median(noop) * 1000:.1f} ms",
                      flush=True)
                for days in (30, 365):
                    ids = make_work(client, product_id=product["id"], orders=args.orders, paid=args.paid, tag=str(days))
                    elapsed = timed_advance(admin, days * 86_400)
                    hours = days * 24
                    print(f"advance {days:>3} days (step_s={args.step_s}, {args.orders} orders expiring, {args.paid} "
                          f"delayed callbacks): {elapsed:.2f} s = {elapsed / hours * 1000:.2f} ms per simulated hour, "
                          f"{elapsed / statistics.median(noop):.0f}x the no-op; orders {statuses(client, ids)}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
