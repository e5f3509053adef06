"""What every dashboard page shares: the session check, the merchant being looked at (remembered
in the session), the CSRF check of every POST, the page shell and small renderers.

Every value a page shows goes through `esc`/`opt`/`cash`: a missing value is a dash, never a
raw Python `None`, and money is formatted per the admin's locale (`?lang=` or Accept-Language)."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect

from apss.services.container import Services
from apss.services.merchants.admin_sessions import AdminSession
from apss.services.merchants.keys import Merchant
from apss.web._i18n import choose_language, money
from apss.web._layout import Document, esc, html_response
from apss.web._sessions import SESSION_COOKIE, session_of, tokens_match

__all__ = [
    "CSS",
    "CODE_RE",
    "ID_RE",
    "Page",
    "SESSION_COOKIE",
    "admin_action",
    "admin_page",
    "badge",
    "cookie",
    "csrf_input",
    "forbidden",
    "layout",
    "notice",
    "opt",
    "to_login",
]

ID_RE = re.compile(r"^[a-z]{2,4}_[A-Za-z0-9]{4,60}$")
CODE_RE = re.compile(r"^[a-z_]{1,64}$")
_MERCHANTS_LISTED_MAX = 100

_NAV = [("overview", "/admin", "Overview"), ("orders", "/admin/orders", "Orders"),
        ("products", "/admin/products", "Products"), ("alerts", "/admin/alerts", "Alerts"),
        ("settlements", "/admin/settlements", "Settlements"), ("reports", "/admin/reports", "Reports"),
        ("reconciliation", "/admin/reconciliation", "Reconciliation"), ("webhooks", "/admin/webhooks", "Webhook deliveries")]

CSS = """
header{background:#111827;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:10px 18px;align-items:center}
header a{color:#e5e7eb;text-decoration:none}header a.on{color:#fff;font-weight:600;border-bottom:2px solid #60a5fa}
header form{display:flex;gap:6px;align-items:center;margin:0}header .grow{flex:1}
header button,header select{padding:5px 8px;font-size:.85rem}header select{max-width:260px}
main{max-width:1240px;margin:18px auto;padding:0 14px}.card{background:#fff;border-radius:12px;padding:16px;margin-bottom:16px;box-shadow:0 1px 6px #0001}
.counters{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.counter{background:#fff;border-radius:12px;padding:14px;box-shadow:0 1px 6px #0001}.counter b{display:block;font-size:1.5rem}
.scroll{overflow-x:auto}svg.chart{width:100%;height:auto}.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end}
.filters form,.filters{margin:0}.timeline{list-style:none;padding:0;border-left:2px solid #d1d5db;margin-left:6px}
.timeline li{padding:4px 0 10px 14px}.login{max-width:380px;margin:12vh auto}.login input{width:100%;margin:8px 0 14px}
table.compact{font-size:.85rem}table.compact td,table.compact th{padding:5px 4px}td.num,th.num{text-align:right;white-space:nowrap}
td.actions{white-space:nowrap}td.actions form{display:inline-flex;gap:4px;margin:0 0 4px}
td.actions button,td.actions .button,.small{padding:5px 9px;font-size:.85rem}td.actions input{padding:4px;font-size:.85rem;width:9em}td.actions input[type=datetime-local]{width:13.5em}
tr.discrepancy{background:#fef2f2}.ids{font-family:ui-monospace,monospace;font-size:.8rem;word-break:break-all}
.confirm{max-width:560px}.row{display:flex;flex-wrap:wrap;gap:8px;align-items:center}
"""


class Page:
    """One request's dashboard context: its session, the merchant looked at, every merchant for
    the picker, and the locale money is shown in."""

    __slots__ = ("session", "merchant", "merchants", "lang")

    def __init__(self, *, session: AdminSession, merchant: Merchant | None, merchants: list, lang: str) -> None:
        self.session, self.merchant, self.merchants, self.lang = session, merchant, merchants, lang

    @property
    def csrf(self) -> str:
        return self.session.csrf

    def cash(self, amount: int | None, currency: str | None) -> str:
        """Money per the admin's locale; a dash when there is none."""
        if amount is None or currency is None:
            return "—"
        return esc(money(amount, currency, self.lang))

    def url(self, path: str, **query: str) -> str:
        """A dashboard link that keeps the merchant (and any extra query) in its query string."""
        assert self.merchant is not None and path.startswith("/admin")
        extra = "".join(f"&{esc(k)}={esc(v)}" for k, v in query.items() if v)
        return f"{esc(path)}?merchant={esc(self.merchant.id)}{extra}"


def opt(value: Any) -> str:
    """A value for a page: escaped, and a dash (never `None`) when missing."""
    return "—" if value is None or value == "" else esc(str(value))


def cookie(svc: Services, key: str, value: str, *, path: str, max_age: int | None) -> Cookie:
    return Cookie(key=key, value=value, path=path, httponly=True, samesite="strict", max_age=max_age,
                  secure=svc.config.public_url.startswith("https://"))


def to_login() -> Response:
    return Redirect("/admin/login", status_code=303)


def forbidden() -> Response:
    return html_response(Document(title="Forbidden", css=CSS, status=403, body=(
        "<main class=login><div class=card><h1>Form expired</h1><p>The form's CSRF token is missing or wrong. "
        "<a href='/admin/login'>Log in again</a>.</p></div></main>")))


def csrf_input(page: Page) -> str:
    return f"<input type=hidden name=csrf value='{esc(page.csrf)}'>"


def badge(status: str | None) -> str:
    status = status or "unknown"
    kind = "ok" if status in ("fulfilled", "paid", "succeeded", "matched", "enabled") else "bad" if status in (
        "failed", "expired", "canceled", "refunded", "disabled", "amount_mismatch", "currency_mismatch", "missing_here",
        "missing_at_provider") else "wait"
    return f"<span class='badge {kind}' data-status='{esc(status)}'>{esc(status)}</span>"


def notice(request: Request) -> str:
    done, error = request.query_params.get("done") or "", request.query_params.get("error") or ""
    if CODE_RE.match(error):
        return f"<p class='notice error' id=notice>Refused: {esc(error)}</p>"
    if CODE_RE.match(done):
        return f"<p class=notice id=notice>Done: {esc(done.replace('_', ' '))}</p>"
    return ""


def _language(request: Request) -> str:
    return choose_language(query=request.query_params.get("lang"), accept_language=request.headers.get("accept-language"))


async def _merchant_choice(request: Request, svc: Services, session: AdminSession) -> tuple[Merchant | None, list]:
    """`?merchant=` when it names one (and the session remembers it); else the one this session
    looked at last; else the oldest listed (on a fresh install: the demo store)."""
    merchants, _ = await svc.merchants.list(after_id=None, limit=_MERCHANTS_LISTED_MAX)
    wanted = request.query_params.get("merchant")
    chosen = svc.merchants.by_id(wanted) if wanted and ID_RE.match(wanted) else None
    if chosen is not None:
        await svc.admin_sessions.remember_merchant(session, chosen.id)
        return chosen, merchants
    if session.merchant_id is not None:
        chosen = svc.merchants.by_id(session.merchant_id)
    if chosen is None and merchants:
        chosen = svc.merchants.by_id(merchants[-1].id)  # newest first: the last is the oldest
    return chosen, merchants


async def admin_page(request: Request, svc: Services, active: str) -> Response | Page:
    """Every dashboard page starts here: the login page without a session, a notice without a
    merchant, else the page's context."""
    session = await session_of(request, svc)
    if session is None:
        return to_login()
    merchant, merchants = await _merchant_choice(request, svc, session)
    page = Page(session=session, merchant=merchant, merchants=merchants, lang=_language(request))
    if merchant is None:
        return layout(page, title="No merchant", active=active,
                      body="<div class=card>No merchant exists yet: create one with POST /v1/merchants.</div>")
    return page


async def admin_action(request: Request, svc: Services, object_id: str | None = None) -> Response | tuple[Page, Any]:
    """Every dashboard POST starts here: 403 without a session and its CSRF token, a chosen
    merchant or, when given, a well-formed object id; else (page, form)."""
    session = await session_of(request, svc)
    form = await request.form()
    if session is None or not tokens_match(form.get("csrf"), session.csrf):
        return forbidden()
    merchant, merchants = await _merchant_choice(request, svc, session)
    if merchant is None or (object_id is not None and not ID_RE.match(object_id)):
        return forbidden()
    return Page(session=session, merchant=merchant, merchants=merchants, lang=_language(request)), form


def layout(page: Page, *, title: str, body: str, active: str, script: str = "", status: int = 200) -> Response:
    merchant = page.merchant
    query = f"?merchant={esc(merchant.id)}" if merchant else ""
    nav = "".join(f"<a class='{'on' if key == active else ''}' href='{href}{query}'>{label}</a>" for key, href, label in _NAV)
    options = "".join(f"<option value='{esc(m.id)}'{' selected' if merchant and m.id == merchant.id else ''}>"
                      f"{esc(m.name)} · {esc(m.mode)} · {esc(m.id)}</option>" for m in page.merchants)
    target = next((href for key, href, _ in _NAV if key == active), "/admin")
    picker = (f"<form method=get action='{target}'><select name=merchant id=merchant-picker aria-label=Merchant>"
              f"{options}</select><button type=submit>Switch</button></form>")
    logout = f"<form method=post action='/admin/logout'>{csrf_input(page)}<button type=submit id=logout>Log out</button></form>"
    header = f"<header><strong>APSS</strong>{nav}<span class=grow></span>{picker}{logout}</header>"
    return html_response(Document(title=f"{title} · APSS admin", body=f"{header}<main>{body}</main>", css=CSS,
                                  script=script, status=status))

