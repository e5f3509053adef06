"""Two APSS processes on one PostgreSQL database, as a studio runs them behind a load balancer:
every answer is checked against the database itself (a raw psycopg read), not against APSS.

- 200 concurrent buyers split across both instances for 50 units get exactly 50 orders;
- one idempotency key sent to both at once makes one order, and both answer with it;
- an instance killed (SIGKILL) in the middle of a burst loses nothing it acknowledged, and the
  other goes on serving the same merchant;
- the rules that hold on SQLite because one thread writes hold across instances: a player's
  purchase limit, bought on both at once; refunds sent to both at once never exceed the payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, free_port, raw_read, start_run_py, wait_for

pytestmark = pytest.mark.anyio


class Instance:
    def __init__(self, process, port: int) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.key = ""  # the merchant's secret key (one merchant, made on the first instance)


@pytest.fixture
def instances(pg_url, tmp_path):
    """Two `apss serve` processes on one PostgreSQL database, sharing the key files (the data key
    and the personal-data keys live beside `database.path`: every instance must have the same)."""
    env = {"APSS_DATABASE_URL": pg_url, "APSS_DATABASE_PATH": str(tmp_path / "apss.sqlite"),
           "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_SEED_DEMO": "false", "APSS_SERVER_LOG_LEVEL": "warning"}
    started = []
    try:
        for name in ("a", "b"):  # one after the other: the first creates the key files
            port = free_port()
            started.append(Instance(start_run_py(port=port, log=tmp_path / f"{name}.log", env=env), port))
        # Made on one once both run: the other hears of it (LISTEN/NOTIFY) before the merchant's
        # first request there (tests/postgres/test_caches.py tests the notices themselves).
        key = _merchant(started[0])
        wait_for(lambda: httpx.get(f"{started[1].base_url}/v1/account", timeout=10,
                                   headers={"Authorization": f"Bearer {key}"}).status_code == 200, timeout_s=30)
        for instance in started:
            instance.key = key
        yield started
    finally:
        for instance in started:
            if instance.process.poll() is None:
                instance.process.terminate()
                instance.process.wait(timeout=30)


def _merchant(instance: Instance) -> str:
    made = httpx.post(f"{instance.base_url}/v1/merchants", json={"name": "Two Instances"},
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert made.status_code == 201, made.text
    return made.json()["secret_key"]


def _product(instance: Instance, key: str, **fields) -> dict:
    made = httpx.post(f"{instance.base_url}/v1/products", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"sku": "sword", "name": "Sword", "category": "item", "prices": {"USD": 500}, **fields})
    assert made.status_code == 201, made.text
    return made.json()


@contextlib.asynccontextmanager
async def _clients(instances: list[Instance], key: str, connections: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client per instance, with the merchant's key; closed at the end."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(httpx.AsyncClient(
            base_url=i.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
            limits=httpx.Limits(max_connections=connections))) for i in instances]


def _order(product_id: str, player_id: str) -> dict:
    return {"player_id": player_id, "currency": "USD", "items": [{"product_id": product_id, "quantity": 1}]}


async def test_200_buyers_split_across_two_instances_get_exactly_50_units(instances, pg_url):
    key = instances[0].key
    sword = _product(instances[1], key, stock=50)
    async with _clients(instances, key, connections=25) as clients:
        async def buy(numbers: range) -> list[httpx.Response]:
            return await asyncio.gather(*(clients[n % 2].post("/v1/orders", json=_order(sword["id"], f"fan-{n}"))
                                          for n in numbers))

        # 40 buyers, 20 on each instance, while 50 units remain: both instances sell (with group
        # commit one instance can otherwise sell a small stock alone, a batch at a time). Then 160
        # more race for the last 10 across the two.
        first = await buy(range(40))
        assert Counter(r.status_code for r in first) == {201: 40}, [r.text for r in first if r.status_code != 201][:3]
        responses = [*first, *await buy(range(40, 200))]
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 50, 409: 150}, (statuses, [r.text for r in responses if r.status_code not in (201, 409)][:3])
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"out_of_stock"}
    by_instance = Counter(n % 2 for n, r in enumerate(responses) if r.status_code == 201)
    assert set(by_instance) == {0, 1}, f"both instances sold: {by_instance}"
    answered = {r.json()["id"] for r in responses if r.status_code == 201}
    assert {row[0] for row in raw_read(pg_url, "SELECT id FROM orders")} == answered
    assert raw_read(pg_url, "SELECT stock, reserved FROM products WHERE id = ?", (sword["id"],)) == [(0, 50)]


async def test_one_idempotency_key_sent_to_both_instances_at_once_makes_one_order(instances, pg_url):
    key = instances[0].key
    sword = _product(instances[0], key)
    async with _clients(instances, key, connections=20) as clients:
        pairs = []
        for n in range(20):  # 20 keys, each sent to both instances at the same moment
            headers = {"Idempotency-Key": f"buy-{n}"}
            body = _order(sword["id"], f"player-{n}")
            pairs.append(asyncio.gather(*(c.post("/v1/orders", json=body, headers=headers) for c in clients)))
        answers = await asyncio.gather(*pairs)
        for n, pair in enumerate(answers):  # one that lost the race while the other ran: 409, retried
            for i, response in enumerate(pair):
                while response.status_code == 409 and response.json()["error"]["code"] == "idempotency_key_in_use":
                    await asyncio.sleep(0.05)
                    response = await clients[i].post("/v1/orders", json=_order(sword["id"], f"player-{n}"),
                                                      headers={"Idempotency-Key": f"buy-{n}"})
                pair[i] = response
    for pair in answers:
        assert [r.status_code for r in pair] == [201, 201], [r.text for r in pair]
        assert pair[0].json()["id"] == pair[1].json()["id"], "both instances answer with the one order"
    assert raw_read(pg_url, "SELECT count(*), count(DISTINCT player_id) FROM orders") == [(20, 20)]


async def test_an_instance_killed_mid_burst_loses_nothing_it_acknowledged(instances, pg_url):
    key = instances[0].key
    sword = _product(instances[0], key)
    victim, survivor = instances
    acknowledged: list[str] = []

    async def buyer(n: int) -> None:
        client = clients[n % 2]
        try:
            response = await client.post("/v1/orders", json=_order(sword["id"], f"p-{n}"),
                                         headers={"Idempotency-Key": f"k-{n}"})
        except httpx.HTTPError:
            return  # the killed instance's connection broke: no answer, nothing acknowledged
        if response.status_code == 201:
            acknowledged.append(response.json()["id"])

    async def kill_after(count: int) -> None:
        while len(acknowledged) < count:
            await asyncio.sleep(0.005)
        victim.process.send_signal(signal.SIGKILL)

    async with _clients(instances, key, connections=10) as clients:
        await asyncio.gather(kill_after(40), *(buyer(n) for n in range(300)))
        assert victim.process.wait(timeout=30) == -signal.SIGKILL
        # The survivor serves on: a buyer whose answer was lost retries there with the same key.
        after = await clients[1].post("/v1/orders", json=_order(sword["id"], "after"), headers={"Idempotency-Key": "after"})
        assert after.status_code == 201, after.text
        acknowledged.append(after.json()["id"])
    stored = {row[0] for row in raw_read(pg_url, "SELECT id FROM orders")}
    assert set(acknowledged) <= stored, "every order an instance acknowledged is in the database"
    assert len(acknowledged) >= 41
    stock = raw_read(pg_url, "SELECT count(*) FROM orders o JOIN payments p ON p.order_id = o.id")
    assert stock == [(len(stored),)], "every stored order has its payment: none half-written"
    assert survivor.process.poll() is None


async def test_a_purchase_limit_holds_for_one_player_buying_on_both_instances_at_once(instances, pg_url):
    key = instances[0].key
    potion = _product(instances[0], key, purchase_limit=1)
    async with _clients(instances, key, connections=10) as clients:
        responses = await asyncio.gather(*(clients[n % 2].post("/v1/orders", json=_order(potion["id"], "greedy"))
                                           for n in range(20)))
    assert Counter(r.status_code for r in responses) == {201: 1, 409: 19}, [r.text for r in responses][:3]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"purchase_limit_exceeded"}
    assert raw_read(pg_url, "SELECT count(*) FROM orders o JOIN order_items i ON i.order_id = o.id"
                        " WHERE i.product_id = ?", (potion["id"],)) == [(1,)]


async def test_refunds_sent_to_both_instances_at_once_never_exceed_the_payment(instances, pg_url):
    key = instances[0].key
    sword = _product(instances[0], key, prices={"USD": 1000})
    headers = {"Authorization": f"Bearer {key}"}
    order = httpx.post(f"{instances[0].base_url}/v1/orders", json=_order(sword["id"], "refunded"), headers=headers,
                       timeout=30).json()
    paid = httpx.post(f"{instances[1].base_url}/v1/sandbox/payments/{order['payment']['id']}/succeed", headers=headers,
                      timeout=30)
    assert paid.status_code == 202, paid.text
    wait_for(lambda: raw_read(pg_url, "SELECT status FROM orders WHERE id = ?", (order["id"],)) == [("fulfilled",)],
             timeout_s=60, interval_s=0.1)
    async with _clients(instances, key, connections=10) as clients:
        responses = await asyncio.gather(*(clients[n % 2].post(f"/v1/orders/{order['id']}/refunds", json={"amount": 600})
                                           for n in range(10)))
    assert Counter(r.status_code for r in responses) == {201: 1, 400: 9}, [r.text for r in responses][:3]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 400} == {"refund_amount_too_large"}
    assert raw_read(pg_url, "SELECT count(*), sum(amount) FROM refunds WHERE order_id = ?", (order["id"],)) == [(1, 600)]
    check = httpx.get(f"{instances[1].base_url}/v1/admin/ledger/check", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=30).json()
    assert check["ok"] is True, check
