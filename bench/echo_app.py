"""The HTTP baseline for bench/http.py: one `POST /echo` that returns the decoded msgspec body,
on the same stack as `apss serve` (Litestar, uvicorn with uvloop + httptools, one worker, no
access log). Not part of APSS.

    python bench/echo_app.py --port 8001
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow
# the standard library's `http` package (uvicorn imports it).
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import argparse  # noqa: E402
from typing import Annotated  # noqa: E402

import msgspec  # noqa: E402
from litestar import Litestar, get, post  # noqa: E402
from msgspec import Meta  # noqa: E402


class EchoLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_id: Annotated[str, Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)] = 1


class EchoBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The shape of an order request (apss.services.orders.checkout.OrderCreate), decoded the same way."""

    player_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]
    items: Annotated[list[EchoLine], Meta(min_length=1, max_length=1000)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    metadata: dict[str, str] = {}


@post("/echo")
async def echo(data: EchoBody) -> EchoBody:
    return data


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[echo, healthz], logging_config=None)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", workers=1,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
