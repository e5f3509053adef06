"""Benchmark: what the request wrapper of api/observability.py (Request-Id, the request counter and
latency histogram of /metrics) adds to each request, against the same ASGI app called bare, in the
same run; and what one /metrics scrape costs on a database of N orders.

    python bench/observability.py [REQUESTS] [--orders 100000]

Prints figures only; asserts nothing about speed. The inner app answers at once (no Litestar), so
the difference is the wrapper's own cost per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

# The repository instead of bench/ itself, whose http.py would shadow the standard library's http.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from apss.api.observability import RequestContext  # noqa: E402
from apss.clock import SystemClock  # noqa: E402
from apss.services.ops.metrics import Metrics  # noqa: E402
from apss.store.db import Database  # noqa: E402
from apss.store.migrate import apply_migrations  # noqa: E402


async def _inner(scope, receive, send) -> None:
    scope["path_template"] = "/v1/orders/{order_id}"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _requests(app, n: int) -> float:
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    headers = [(b"host", b"x"), (b"authorization", b"Bearer sk_test_x"), (b"user-agent", b"bench")]
    began = time.perf_counter()
    for _ in range(n):
        await app({"type": "http", "method": "GET", "path": "/v1/orders/ord_1", "headers": headers}, receive, send)
    return time.perf_counter() - began


def _seed(path: str, orders: int) -> None:
    apply_migrations(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("INSERT INTO merchants (id, name, mode, created_at_ms) VALUES ('mch_b', 'Bench', 'test', 0)")
    statuses = ["pending", "fulfilled", "fulfilled", "fulfilled", "expired", "canceled", "failed"]
    columns = [r[1] for r in conn.execute("PRAGMA table_info(orders)")]
    rows = []
    for i in range(orders):
        row = dict.fromkeys(columns)
        row.update(id=f"ord_{i:012d}", merchant_id="mch_b", player_id=f"p{i % 5000}", status=statuses[i % 7],
                   currency="USD", amount=100, channel="sandbox", metadata="{}", checkout_token=f"tok{i}",
                   created_at_ms=i, updated_at_ms=i, expires_at_ms=i)
        rows.append(tuple(row.values()))
    conn.executemany(f"INSERT INTO orders VALUES ({', '.join('?' * len(columns))})", rows)
    conn.commit()
    conn.close()


async def _scrapes(orders: int, repeat: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.sqlite")
        _seed(path, orders)
        db = Database(path, read_connections_max=1)
        await db.start()
        try:
            metrics = Metrics(db=db, clock=SystemClock(), job_stats=list)
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                await metrics.render()
                times.append(time.perf_counter() - began)
            return times
        finally:
            await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requests", nargs="?", type=int, default=50_000)
    parser.add_argument("--orders", type=int, default=100_000)
    args = parser.parse_args()
    metrics = Metrics(db=None, clock=SystemClock(), job_stats=list)  # type: ignore[arg-type]
    wrapped = RequestContext(_inner, observe=metrics.observe_request)
    for _ in range(2):  # warm up, then measure both
        bare_s = await _requests(_inner, args.requests)
        wrapped_s = await _requests(wrapped, args.requests)
    per_bare, per_wrapped = bare_s / args.requests * 1e6, wrapped_s / args.requests * 1e6
    print(f"bare ASGI call      {per_bare:7.2f} µs per request")
    print(f"with the wrapper    {per_wrapped:7.2f} µs per request (+{per_wrapped - per_bare:.2f} µs: Request-Id, "
          "counter, histogram)")
    times = await _scrapes(args.orders, 5)
    print(f"/metrics render on {args.orders} orders: best {min(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
