"""kill -9 in the middle of a burst of orders: nothing acknowledged is lost, nothing is half-made."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
STOCK = 400


def _start(db_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "APSS_DATABASE_PATH": str(db_path), "APSS_SERVER_PORT": str(port),
           "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", "APSS_SERVER_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


async def test_sigkill_mid_burst_loses_no_acknowledged_order(tmp_path):
    db_path, port = tmp_path / "crash.sqlite", free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(db_path, port)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            key = admin.post("/v1/merchants", json={"name": "Crash"}).json()["secret_key"]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers) as client:
            product = client.post("/v1/products", json={"sku": "crate", "name": "Crate", "category": "item",
                                                        "prices": {"USD": 100}, "stock": STOCK}).json()
        bodies = {n: {"player_id": f"p{n}", "currency": "USD", "items": [{"product_id": product["id"], "quantity": 1}]}
                  for n in range(600)}
        acknowledged: dict[int, dict] = {}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            async def order(n: int) -> None:
                try:
                    response = await client.post("/v1/orders", json=bodies[n], headers={"Idempotency-Key": f"burst-{n}"})
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    acknowledged[n] = response.json()
                    if len(acknowledged) == 150:
                        os.kill(process.pid, signal.SIGKILL)

            await asyncio.gather(*(order(n) for n in range(600)))
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL
        assert 150 <= len(acknowledged) < 600, len(acknowledged)
    finally:
        if process.poll() is None:
            process.kill()

    process = _start(db_path, port)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for answered in acknowledged.values():
                now = client.get(f"/v1/orders/{answered['id']}")
                assert now.status_code == 200, f"acknowledged order {answered['id']} is lost"
                assert now.json()["items"] == answered["items"] and now.json()["amount"] == answered["amount"]
            orders, cursor = [], None
            while True:
                page = client.get("/v1/orders", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
                orders += page["data"]
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
            for listed in orders:  # every order is whole: one line, its amount, its payment
                assert len(listed["items"]) == 1 and listed["amount"] == 100 and listed["payment"] is not None
            stock = client.get(f"/v1/products/{product['id']}").json()
            assert stock["stock"] + stock["reserved"] + stock["sold"] == STOCK
            assert stock["reserved"] == sum(1 for o in orders if o["status"] == "pending")
            assert len({o["player_id"] for o in orders}) == len(orders), "no request made two orders"
            # Retrying every request with its key: acknowledged ones replay, cut-off ones run once.
            for n in range(600):
                retry = client.post("/v1/orders", json=bodies[n], headers={"Idempotency-Key": f"burst-{n}"})
                assert retry.status_code in (201, 409), retry.text
                if n in acknowledged:
                    assert retry.headers.get("idempotent-replayed") == "true"
                    assert retry.json()["id"] == acknowledged[n]["id"]
            for n in range(600):
                mine = client.get("/v1/orders", params={"player_id": f"p{n}"}).json()["data"]
                assert len(mine) <= 1, f"player p{n} has {len(mine)} orders"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
