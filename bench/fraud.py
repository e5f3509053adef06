"""Benchmark: the default risk rules against a scripted mix of attacks and legitimate traffic,
replayed through the real server over HTTP on a test clock.

    python bench/fraud.py [--orders 1500] [--seed 4242 [4243 ...]] [--step-s 3600] [--world held_out|train]

The traffic comes from `scripts/fraud_data.py`'s simulation with a parameter set of its own,
held out from training: HELD_OUT's rates, sizes and timing with another seed, scaled so that
about `--orders` orders fall in the labelled days (the week of warm-up before them is replayed
too, unlabelled, so that the counters and the players' first orders are there, as they are for
the model's features), after one first order of each player older than the simulation at the
time it joined (up to 400 days before), so that APSS's account age is the player's. Starts `python run.py` (temp database, clock.mode = "test", sandbox
callbacks in process), creates a test merchant that keeps the DEFAULT rule set, and for each
order in time order: moves the test clock to the order's time, creates it with `player_id`,
`ip`, `device_id`, `email`, `billing_country` (the simulation's ids mapped to addresses in
`fraud_data.ADDRESS_BLOCKS`, a registry block of each country) and the sandbox magic values (the card's
fingerprint; `declined` where the simulation declines; a fraudster fails 3-D Secure,
`three_ds_fails`, a player passes it, `three_ds_frictionless`), then pays it as the player's
stand-in (`/v1/sandbox/payments/{id}/succeed`) unless the rules blocked it, and waits until its
callback is applied before the next order (the simulation's orders are seconds or minutes apart,
when a real callback has landed; `--callbacks race` lets them race, as this bench did before
2026-12-06, so that a quick next order could miss the last one's decline in its counters).

`--world train` replays TRAIN's world instead (the model's training parameters, another seed):
the world to try rule changes on, so that the default rules are not fitted to the held-out one
the figures are reported on.

Prints, read back from the database file (risk_decisions, orders, payments): the share of the
fraudulent orders stopped before delivery (a decision of `block`, `review` or `require_3ds` at
creation, `block` or `review` at the callback), per attack kind, and checks that none of the stopped ones was
delivered; the share of legitimate orders touched (any such decision), per profile; orders
replayed and wall time. With several `--seed`s, each world is replayed on a server of its own
and reported, then all of them pooled (the labelled orders added up): one world's few hundred
fraudulent orders move its share by a point or so. Figures on synthetic data; asserts nothing
about them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/http.py would shadow the
# standard library's `http` package (which httpx needs): drop the folder first.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
REPO = _BENCH_DIR.parent
sys.path.insert(0, str(REPO / "scripts"))

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import ipaddress  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import fraud_data  # noqa: E402
import httpx  # noqa: E402

ADMIN_TOKEN = "adm_bench_token_0123456789abcdef"
FRAUD_KINDS = ("card_testing", "velocity", "takeover", "structuring")
LEGIT_KINDS = ("casual", "regular", "whale")
# The price list the amounts are made of: any amount in cents is a sum of lines of these.
PRICES = (10_000, 100, 1)
# About this many labelled orders at scale 1 (the parameter set below).
BASE_LABELLED = 1430


def bench_params(orders: int, seed: int, world: str = "held_out") -> fraud_data.Params:
    """HELD_OUT's world (rates, sizes, timing, mix) with another seed, over 3 labelled days,
    with the players and the number of attacks scaled to about `orders` labelled orders (TRAIN's
    for `world == "train"`, its attacks in its own proportion to its players)."""
    scale = orders / BASE_LABELLED

    def n(base: int) -> int:
        return max(1, round(base * scale))

    if world == "train":
        p = fraud_data.TRAIN
        players = n(700)  # TRAIN's players buy less often: about as many labelled orders
        ratio = players / p.players
        return dataclasses.replace(p, seed=seed, days=3, players=players, card_testers=max(1, round(p.card_testers * ratio)),
                                   velocity_bursts=max(1, round(p.velocity_bursts * ratio)),
                                   takeovers=max(1, round(p.takeovers * ratio)),
                                   structurers=max(1, round(p.structurers * ratio)))
    return dataclasses.replace(fraud_data.HELD_OUT, seed=seed, days=3, players=n(500), card_testers=n(6),
                               velocity_bursts=n(5), takeovers=n(15), structurers=n(6))


def simulate(p: fraud_data.Params) -> tuple[list[fraud_data.Order], int]:
    """Every order of the world (warm-up included), in time order, and the labelled days' start."""
    world = fraud_data._World(p)
    world.legit_players()
    world.takeovers()
    world.card_testing()
    world.velocity()
    world.structuring()
    return sorted(world.orders, key=lambda o: (o.ts, o.player)), world.labelled_from


class Addresses:
    """The simulation's IP ids as addresses: each id gets one address, in its country's block."""

    def __init__(self) -> None:
        self._by_id: dict[str, str] = {}
        self._next: dict[str, int] = collections.Counter()

    def of(self, ip_id: str, country: str) -> str:
        if ip_id not in self._by_id:
            block = ipaddress.ip_network(fraud_data.ADDRESS_BLOCKS[country])
            self._next[block.exploded] += 1
            self._by_id[ip_id] = str(block.network_address + 256 + self._next[block.exploded])
        return self._by_id[ip_id]


def lines_of(amount: int, product_ids: list[str]) -> list[dict]:
    lines = []
    for price, product_id in zip(PRICES, product_ids, strict=True):
        quantity, amount = divmod(amount, price)
        if quantity:
            lines.append({"product_id": product_id, "quantity": quantity})
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, *, port: int, step_s: int) -> subprocess.Popen:
    env = {**os.environ, "APSS_CONFIG": "/nonexistent-config.toml", "APSS_DATABASE_PATH": str(workdir / "apss.sqlite"),
           "APSS_SERVER_PORT": str(port), "APSS_ADMIN_TOKEN": ADMIN_TOKEN, "APSS_CLOCK_MODE": "test",
           "APSS_CLOCK_STEP_S": str(step_s), "APSS_SERVER_LOG_LEVEL": "warning", "APSS_API_REQUESTS_PER_S_MAX": "0",
           "APSS_SANDBOX_CALLBACK_TRANSPORT": "asgi", "APSS_SEED_DEMO": "false"}
    log_path = workdir / "server.log"
    server = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=env, stdout=log_path.open("w"),
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        text = log_path.read_text()
        if "APSS listening" in text:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: the server did not start:\n{text}")
        time.sleep(0.1)


def check(response: httpx.Response, status: int) -> dict:
    if response.status_code != status:
        raise SystemExit(f"bench: {response.request.method} {response.request.url.path} answered "
                         f"{response.status_code}: {response.text[:500]}")
    return response.json()


# A payment's statuses once its callback was applied.
FINAL_PAYMENT_STATUSES = ("succeeded", "failed", "canceled")


def settled(client: httpx.Client, payment_id: str, *, wait_s: float = 10.0) -> bool:
    """Wait until the sandbox's callback for the payment was applied (its status is final): the
    simulation's next order comes seconds or minutes later, when a real callback has landed, and
    its counters (declines, cards per player) must see this one. False if it did not in `wait_s`."""
    deadline = time.monotonic() + wait_s
    while check(client.get(f"/v1/payments/{payment_id}"), 200)["status"] not in FINAL_PAYMENT_STATUSES:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def replay(base: str, orders: list[fraud_data.Order], labelled_from: int, *,
           wait_callbacks: bool = True) -> tuple[dict[str, fraud_data.Order], dict]:
    """Each order through HTTP at its time; the labelled ones by order id, and what the run saw.
    `wait_callbacks`: each payment's callback is applied before the next order (else they race)."""
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600)
    made = check(admin.post("/v1/merchants", json={"name": "Fraud bench", "mode": "test"}), 201)
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {made['secret_key']}"}, timeout=600)
    rules = check(client.get("/v1/risk/rules"), 200)
    assert rules.get("default") is True, rules
    product_ids = [check(client.post("/v1/products", json={"sku": f"bench_{price}", "name": f"Bench {price}",
                                                           "category": "item", "prices": {"USD": price}}), 201)["id"]
                   for price in PRICES]
    clock_now = check(admin.get("/v1/admin/clock"), 200)["now"]
    now_s = int(time.mktime(time.strptime(clock_now[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    # The players older than the simulated stretch first bought long before it (up to 400 days):
    # one small order each at that time, so that APSS's account age (days since it first saw the
    # player) is what the model learnt, not the few days of the replay.
    first: dict[str, int] = {}
    for o in orders:
        if o.first_seen is not None:
            first.setdefault(o.player, o.first_seen)
    history = sorted((ts, player) for player, ts in first.items())
    offset = now_s + 60 - min([orders[0].ts, *(ts for ts, _ in history)])  # a minute after the clock's now
    for index, (ts, player) in enumerate(history):
        if ts + offset > now_s:
            check(admin.post("/v1/admin/clock/advance", json={"seconds": ts + offset - now_s}), 200)
            now_s = ts + offset
        body = {"player_id": player, "currency": "USD", "items": lines_of(99, product_ids)}
        order = check(client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"bench-history-{index}"}), 201)
        check(client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed"), 202)
    addresses = Addresses()
    labelled: dict[str, fraud_data.Order] = {}
    seen = collections.Counter({"history": len(history)})
    for index, o in enumerate(orders):
        at = o.ts + offset
        if at > now_s:
            check(admin.post("/v1/admin/clock/advance", json={"seconds": at - now_s}), 200)
            now_s = at
        metadata = {"sandbox_card_fingerprint": o.card,
                    "sandbox_outcome": "declined" if o.declined else "three_ds_fails" if o.fraud else "three_ds_frictionless"}
        body: dict = {"player_id": o.player, "currency": "USD", "items": lines_of(o.amount_usd, product_ids),
                      "email": f"{o.player}@players.example", "metadata": metadata}
        if o.ip is not None:
            body["ip"] = addresses.of(o.ip, o.ip_country)
        if o.device is not None:
            body["device_id"] = o.device
        if o.billing_country is not None:
            body["billing_country"] = o.billing_country
        order = check(client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"bench-{index}"}), 201)
        seen[order["status"]] += 1
        if order["status"] == "pending":
            check(client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed"), 202)
            if wait_callbacks and not settled(client, order["payment"]["id"]):
                seen["callback not applied in 10 s"] += 1
        if o.ts >= labelled_from:
            labelled[order["id"]] = o
    check(admin.post("/v1/admin/clock/advance", json={"seconds": 3600}), 200)  # the last callbacks land
    return labelled, dict(seen)


def outcomes(db_path: Path, labelled: dict[str, fraud_data.Order]) -> dict[str, dict]:
    """Per labelled order, from the database file: the risk actions, the order's status, the failure."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out: dict[str, dict] = {oid: {"actions": set(), "status": None, "failure": None} for oid in labelled}
    for order_id, stage, action in con.execute("SELECT order_id, stage, action FROM risk_decisions"):
        if order_id in out:
            out[order_id]["actions"].add(f"{stage}:{action}")
    for order_id, status in con.execute("SELECT id, status FROM orders"):
        if order_id in out:
            out[order_id]["status"] = status
    for order_id, failure in con.execute("SELECT order_id, failure_code FROM payments"):
        if order_id in out:
            out[order_id]["failure"] = failure
    con.close()
    return out


def report(labelled: dict[str, fraud_data.Order], seen: dict[str, dict]) -> None:
    by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    leaks, unassessed = 0, 0
    for order_id, o in labelled.items():
        s = seen[order_id]
        if not s["actions"]:
            unassessed += 1
        # 3-D Secure stops an order at creation only: at the callback the payment is made
        stopped = bool(s["actions"] & {"order:block", "order:review", "order:require_3ds", "callback:block", "callback:review"})
        by_kind[o.kind][0] += stopped
        by_kind[o.kind][1] += 1
        if o.fraud and stopped and s["status"] == "fulfilled":
            leaks += 1  # stopped by a rule and still delivered: must not happen
    fraud = [sum(by_kind[k][i] for k in FRAUD_KINDS) for i in (0, 1)]
    legit = [sum(by_kind[k][i] for k in LEGIT_KINDS) for i in (0, 1)]
    delivered = sum(1 for oid, o in labelled.items() if o.fraud and seen[oid]["status"] == "fulfilled")
    print("fraud stopped before delivery (block, review or 3-D Secure at creation or callback):")
    for kind in FRAUD_KINDS:
        hit, total = by_kind[kind]
        print(f"  {kind:<13} {hit:>5} / {total:<5} {100 * hit / max(total, 1):6.1f}%")
    print(f"  {'all':<13} {fraud[0]:>5} / {fraud[1]:<5} {100 * fraud[0] / max(fraud[1], 1):6.1f}%   "
          f"(fraudulent orders delivered: {delivered}; stopped yet delivered: {leaks})")
    print("legitimate orders touched (block, review or 3-D Secure):")
    for kind in LEGIT_KINDS:
        hit, total = by_kind[kind]
        print(f"  {kind:<13} {hit:>5} / {total:<5} {100 * hit / max(total, 1):6.1f}%")
    print(f"  {'all':<13} {legit[0]:>5} / {legit[1]:<5} {100 * legit[0] / max(legit[1], 1):6.1f}%")
    if unassessed:
        print(f"warning: {unassessed} labelled orders have no risk decision")


def replay_world(args: argparse.Namespace, seed: int) -> tuple[dict[str, fraud_data.Order], dict[str, dict]]:
    """One world (`seed`) replayed through a server of its own: its labelled orders and their outcomes."""
    orders, labelled_from = simulate(bench_params(args.orders, seed, args.world))
    kinds = collections.Counter(o.kind for o in orders if o.ts >= labelled_from)
    print(f"world (seed {seed}): {len(orders)} orders ({len(orders) - sum(kinds.values())} warm-up, "
          f"{sum(kinds.values())} labelled: "
          + ", ".join(f"{k} {kinds[k]}" for k in (*FRAUD_KINDS, *LEGIT_KINDS)) + ")", flush=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), port=port, step_s=args.step_s)
        try:
            started = time.perf_counter()
            labelled, statuses = replay(f"http://127.0.0.1:{port}", orders, labelled_from,
                                        wait_callbacks=args.callbacks == "wait")
            elapsed = time.perf_counter() - started
            seen = outcomes(Path(tmp) / "apss.sqlite", labelled)
            if args.keep:
                args.keep.unlink(missing_ok=True)
                con = sqlite3.connect(Path(tmp) / "apss.sqlite")
                con.execute("VACUUM INTO ?", (str(args.keep),))
                con.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    history = statuses.pop("history")
    print(f"replayed {len(orders)} orders over {(orders[-1].ts - orders[0].ts) / 86400:.1f} simulated days, after "
          f"{history} first orders of the older players over the year before, in {elapsed:.1f} s "
          f"({(len(orders) + history) / elapsed:.0f} orders/s); at creation: {statuses}")
    return labelled, seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1500, help="about this many labelled orders (plus a week of warm-up)")
    parser.add_argument("--seed", type=int, nargs="+", default=[4242],
                        help="one world per seed, each on a server of its own; with several, also their pooled shares")
    parser.add_argument("--world", choices=("held_out", "train"), default="held_out",
                        help="the held-out world the figures are reported on, or TRAIN's, to try rules on")
    parser.add_argument("--step-s", type=int, default=3600, help="clock.step_s")
    parser.add_argument("--callbacks", choices=("wait", "race"), default="wait",
                        help="wait for each payment's callback before the next order, or let them race (before 2026-12-06)")
    parser.add_argument("--labels", type=Path, help="write each labelled order's id, kind and actions to this CSV")
    parser.add_argument("--keep", type=Path, help="copy the database file here at the end (one seed; for a look at the decisions)")
    args = parser.parse_args()
    if args.keep and len(args.seed) > 1:
        parser.error("--keep takes one seed")
    labelled: dict[str, fraud_data.Order] = {}
    seen: dict[str, dict] = {}
    for seed in args.seed:
        world_labelled, world_seen = replay_world(args, seed)
        report(world_labelled, world_seen)
        labelled.update(world_labelled)  # order ids are unique across servers
        seen.update(world_seen)
    if len(args.seed) > 1:
        print(f"pooled over the {len(args.seed)} worlds (seeds {', '.join(map(str, args.seed))}):")
        report(labelled, seen)
    if args.labels:
        with args.labels.open("w") as out:
            out.write("order_id,kind,fraud,declined,actions,status\n")
            for order_id, o in labelled.items():
                s = seen[order_id]
                out.write(f"{order_id},{o.kind},{int(o.fraud)},{int(o.declined)},{'+'.join(sorted(s['actions']))},{s['status']}\n")


if __name__ == "__main__":
    main()
