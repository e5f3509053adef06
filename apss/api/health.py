"""Liveness that means something: 200 once the database takes a write, 503 when the writer is gone."""

from __future__ import annotations

from litestar import Response, get

from apss.api.common import Services
from apss.errors import NotReady

__all__ = ["healthz"]


@get("/healthz", tags=["health"], summary="200 once the database is writable, else 503")
async def healthz(svc: Services) -> Response[dict[str, str]]:
    if not svc.db.writer_alive:  # died, gave up on its connection, or shutting down: no write can succeed
        return Response(content={"status": "unavailable"}, status_code=503)
    try:
        await svc.db.ping()
    except NotReady:
        return Response(content={"status": "unavailable"}, status_code=503)
    return Response(content={"status": "ok"}, status_code=200)
