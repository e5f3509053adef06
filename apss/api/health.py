"""Liveness that means something: 200 once the database takes a write."""

from __future__ import annotations

from litestar import Response, get

from apss.api.common import Services
from apss.errors import NotReady

__all__ = ["healthz"]


@get("/healthz", tags=["health"], summary="200 once the database is writable, else 503")
async def healthz(svc: Services) -> Response[dict[str, str]]:
    try:
        await svc.db.ping()
    except NotReady:
        return Response(content={"status": "unavailable"}, status_code=503)
    return Response(content={"status": "ok"}, status_code=200)
