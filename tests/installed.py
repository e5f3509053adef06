"""Helpers of the tests that run APSS as a user installed it (tests/test_wheel.py: a wheel in a
venv; tests/test_pyz.py: the one-file zipapp): wait for it to serve, then sell and pay one order."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.conftest import wait_for

__all__ = ["sell_and_pay_one", "wait_until_serving"]


def wait_until_serving(process: subprocess.Popen, base: str, log: Path, *, timeout_s: float = 60) -> None:
    """Until `base`/healthz answers 200; the process dying first fails with its output."""
    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=timeout_s)


def sell_and_pay_one(base: str, *, admin_token: str) -> dict:
    """A merchant created with the admin token sells one product to a player, who pays through the
    sandbox; returns the order once it is fulfilled."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_token}"}) as admin:
        created = admin.post("/v1/merchants", json={"name": "Installed Studio"})
        assert created.status_code == 201, created.text
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {created.json()['secret_key']}"}) as client:
        product = client.post("/v1/products", json={"sku": "gem", "name": "Gem", "category": "item",
                                                    "prices": {"USD": 100}}).json()
        order = client.post("/v1/orders", json={"player_id": "p1", "currency": "USD",
                                                "items": [{"product_id": product["id"], "quantity": 1}]}).json()
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
        return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o,
                        timeout_s=30)
