"""`/js/apss.js`: the embed script a merchant's site loads from APSS itself (no build step, no other
host). It opens the hosted checkout in an overlay iframe or by redirect and reports the events
the checkout page posts (pages.py)."""

from __future__ import annotations

from importlib.resources import files

from litestar import Response, get

__all__ = ["embed_script"]

_SCRIPT = files("apss.web").joinpath("static/apss.js").read_bytes()
assert _SCRIPT.startswith(b"/*") and b"window.APSS" in _SCRIPT, "the embed script ships with the package"


@get("/js/apss.js", include_in_schema=False)
async def embed_script() -> Response:
    # A short cache: a fixed script that a shop's every page loads, updated with APSS itself.
    return Response(content=_SCRIPT, media_type="text/javascript",  # Litestar adds "; charset=utf-8"
                    headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff",
                             "Cross-Origin-Resource-Policy": "cross-origin"})
