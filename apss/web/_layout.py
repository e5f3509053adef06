"""The one HTML shell of every page APSS serves: inline CSS and scripts under a strict CSP with a
per-response nonce, so the browser refuses any request to another host (and any injected script)."""

from __future__ import annotations

import html
import secrets

from litestar import Response

__all__ = ["Document", "esc", "html_response"]

esc = html.escape

_BASE_CSS = """
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC",sans-serif;
background:#f4f5f7;margin:0;color:#1d2330;line-height:1.45}a{color:#2563eb}
.muted{color:#6b7280;font-size:.9rem}.badge{display:inline-block;padding:2px 8px;border-radius:99px;background:#eef;font-size:.8rem}
.badge.ok{background:#dcfce7;color:#166534}.badge.bad{background:#fee2e2;color:#991b1b}.badge.wait{background:#fef9c3;color:#854d0e}
table{width:100%;border-collapse:collapse;margin:12px 0}td,th{padding:6px 4px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
button,.button{display:inline-block;padding:12px 16px;border:0;border-radius:8px;font-size:1rem;cursor:pointer;text-align:center;
text-decoration:none;background:#e5e7eb;color:#111}.primary{background:#2563eb;color:#fff}.danger{background:#dc2626;color:#fff}
input,select{padding:8px;border:1px solid #d1d5db;border-radius:6px;font-size:1rem;max-width:100%}
.notice{padding:10px 12px;border-radius:8px;background:#eff6ff;margin:12px 0}.error{background:#fef2f2;color:#991b1b}
"""


class Document:
    """One page: title, body, extra CSS and an optional inline script, all under one nonce.
    `frame_ancestors`: None, the page may not be framed at all; a tuple of origins, it may be
    framed by this server and those sites (the embeddable checkout, README "Embedding the checkout")."""

    def __init__(self, *, title: str, body: str, lang: str = "en", css: str = "", script: str = "", status: int = 200,
                 frame_ancestors: tuple[str, ...] | None = None) -> None:
        self.title, self.body, self.lang, self.css, self.script, self.status = title, body, lang, css, script, status
        self.frame_ancestors = frame_ancestors


def html_response(document: Document, *, cookies: list | None = None) -> Response:
    nonce = secrets.token_urlsafe(16)
    script = f"<script nonce='{nonce}'>{document.script}</script>" if document.script else ""
    markup = (f"<!doctype html><html lang='{esc(document.lang)}'><head><meta charset=utf-8>"
              f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(document.title)}</title>"
              f"<link rel=icon href='data:,'>"
              f"<style nonce='{nonce}'>{_BASE_CSS}{document.css}</style></head><body>{document.body}{script}</body></html>")
    # Origins are normalised when saved (domain/origins.py): no space or ';' can reach the header.
    ancestors = "'none'" if document.frame_ancestors is None else " ".join(("'self'", *document.frame_ancestors))
    assert ";" not in ancestors and "," not in ancestors
    csp = (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
           f"connect-src 'self'; form-action 'self'; frame-ancestors {ancestors}; base-uri 'none'")
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "Cache-Control": "no-store"}
    return Response(content=markup, status_code=document.status, media_type="text/html; charset=utf-8", headers=headers,
                    cookies=cookies)
