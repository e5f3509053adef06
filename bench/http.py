"""Benchmark: order creation over HTTP on the real server, against a bare JSON echo on the same
stack (bench/echo_app.py: Litestar + uvicorn, uvloop, httptools, one worker, no access log).

    python bench/http.py [--threads 2] [--connections 64] [--duration 15] [--warmup 3]
                         [--postgresql [--database-url URL]]

Starts `python run.py` (fresh temp database, rate limit off, no demo seed), creates a merchant
and an unlimited product over the API, drives `POST /v1/orders` with wrk (a unique player_id
and Idempotency-Key per request), then starts the echo server and drives `POST /echo` with the
same wrk settings, headers and body. Prints req/s, p50 and p99 for both, and their ratio, and the
server's CPU during the measured order run (the event loop's thread and the writer's, from /proc).
Prints figures only; asserts nothing about speed. Needs wrk (Debian package `wrk`).

`--postgresql` also runs the order creation on PostgreSQL, with one APSS instance and then two on
one database (each instance gets half the connections from a wrk of its own, started together;
their req/s are added, the p50 and p99 shown are the worse of the two). The database is a
throwaway server of the test suite's (tests/postgres/server.py, Debian's postgresql package;
fsync off: it measures APSS, not the disk) unless `--database-url` names one, whose database must
be empty (each run makes a new merchant and product there).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file (http.py) would
# shadow the standard library's `http` package: drop the folder before importing anything, and
# put the repository first (this worktree's apss, and bench._harness).
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from bench._harness import (  # noqa: E402
    apss_server,
    bench_echo,
    create_merchant,
    create_product,
    line,
    run_wrk,
    throwaway_postgres,
    write_script,
)


def bench_orders(args: argparse.Namespace, directory: Path) -> tuple[dict, int, dict]:
    with apss_server(directory, synchronous=args.synchronous) as server:
        key = create_merchant(server)
        product = create_product(server, key)

        def script() -> Path:
            return write_script(directory, "orders.lua", path="/v1/orders", product=product, auth=key)

        url = f"{server.base}/v1/orders"
        warm = run_wrk(args, url, script(), args.warmup)["requests"] if args.warmup else 0
        before = thread_cpu(server.pid)
        began = time.monotonic()
        result = run_wrk(args, url, script(), args.duration)
        info = {"product": product, "answered": warm + result["requests"],
                "threads": cpu_shares(before, thread_cpu(server.pid), time.monotonic() - began, main=server.pid)}
        if args.profile:
            info["profile"] = profile_server(args, server.pid, url, script(), directory)
            info["answered"] = None  # the profiled run adds orders of its own
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    return result, orders, info


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of process `pid` has used, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        used[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def cpu_shares(before: dict[int, float], after: dict[int, float], wall_s: float, *, main: int) -> str:
    """The server's CPU over the run: the process's, the main thread's (the event loop), the busiest
    other thread's (the database writer), as shares of one core."""
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    others = sorted((v for tid, v in spent.items() if tid != main), reverse=True)
    return (f"server CPU during the run: {sum(spent.values()) / wall_s:.0%} of one core; event loop (main thread) "
            f"{spent.get(main, 0.0) / wall_s:.0%}, busiest other thread (the writer) {(others or [0.0])[0] / wall_s:.0%}")


def bench_postgresql(args: argparse.Namespace, directory: Path, url: str, instances: int) -> tuple[dict, int]:
    """Order creation on `instances` APSS processes on the PostgreSQL database `url`."""
    admin = "adm_" + "b" * 40
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(apss_server(directory, database_url=url, admin=admin, name="pg0"))
        key = create_merchant(first, name=f"Bench Studio on {instances}")
        product = create_product(first, key)
        # The others start once the merchant exists: each instance loads the keys when it starts.
        servers = [first] + [stack.enter_context(apss_server(directory, database_url=url, admin=admin, name=f"pg{i}"))
                             for i in range(1, instances)]
        split = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // instances),
                                      "threads": max(1, args.threads // instances)})

        def load(duration_s: int) -> list[dict]:
            scripts = [write_script(directory, f"pg{i}.lua", path="/v1/orders", product=product, auth=key)
                       for i in range(instances)]
            with ThreadPoolExecutor(instances) as pool:
                return list(pool.map(lambda i: run_wrk(split, f"{servers[i].base}/v1/orders", scripts[i], duration_s),
                                     range(instances)))

        if args.warmup:
            load(args.warmup)
        results = load(args.duration)
    merged = {"rps": sum(r["rps"] for r in results), "requests": sum(r["requests"] for r in results),
              "p50": max(r["p50"] for r in results), "p99": max(r["p99"] for r in results),
              "non2xx": sum(r["non2xx"] for r in results), "statuses": " | ".join(r["statuses"] for r in results),
              "socket_errors": " | ".join(r["socket_errors"] for r in results if r["socket_errors"])}
    import psycopg  # the postgres extra: only this mode needs it

    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM orders o JOIN merchants m ON m.id = o.merchant_id"
                              " WHERE m.name = %s", (f"Bench Studio on {instances}",)).fetchone()[0]
    return merged, stored


@contextlib.contextmanager
def postgresql_database(args: argparse.Namespace):
    """The URL to run on: `--database-url`, or a database on a throwaway local server."""
    if args.database_url:
        yield args.database_url
        return
    with throwaway_postgres() as server:
        yield server.create_database()


def profile_server(args: argparse.Namespace, pid: int, url: str, script: Path, directory: Path) -> str:
    """Optional: py-spy (pip install py-spy) samples the server's GIL holder during one more wrk run
    (raw collapsed stacks: `frame;frame;... count` per line)."""
    out = directory / "profile.txt"
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(max(args.duration - 2, 3)),
                            "--format", "raw", "--output", str(out), "--gil"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_wrk(args, url, script, args.duration)
    spy.wait()
    target = Path(args.profile)
    shutil.copy(out, target)
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load first (0: none)")
    parser.add_argument("--profile", default="", help="also py-spy the APSS server under load into this file (raw)")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="the server's database.synchronous")
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output")
    parser.add_argument("--postgresql", action="store_true", help="also on PostgreSQL: one instance, then two")
    parser.add_argument("--database-url", default="", help="with --postgresql: an empty database to use")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    directory = Path(tempfile.mkdtemp(prefix="apss-bench-http-"))
    print(f"http bench: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
          f"(+{args.warmup}s warm-up each), synchronous={args.synchronous}, {os.cpu_count()} CPUs, server and wrk on this machine", flush=True)
    try:
        orders, stored, info = bench_orders(args, directory)
        on_pg = []
        if args.postgresql:
            with postgresql_database(args) as url:
                on_pg = [(n, *bench_postgresql(args, directory, url, n)) for n in (1, 2)]
        echo = bench_echo(args, directory, info["product"])
        print(line("orders", orders), flush=True)
        for n, result, _ in on_pg:
            print(line(f"pg x{n}", result), flush=True)
        print(line("echo", echo), flush=True)
        print(info["threads"], flush=True)
        print(f"orders/echo = {orders['rps'] / echo['rps']:.0%} of the echo baseline's req/s; "
              f"orders in the database: {stored:,} (201s answered incl. warm-up: {info['answered'] or '-'})", flush=True)
        for n, result, pg_stored in on_pg:
            print(f"PostgreSQL, {n} instance{'s' if n > 1 else ''}: {result['rps'] / orders['rps']:.0%} of SQLite's "
                  f"order req/s, {result['rps'] / echo['rps']:.0%} of the echo's; orders in its database: {pg_stored:,}",
                  flush=True)
        if args.profile:
            print(f"py-spy profile of the APSS server: {info['profile']}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
