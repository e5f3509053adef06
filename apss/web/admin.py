"""The admin dashboard at /admin: login (admin token -> session cookie), CSRF-checked forms,
overview with charts and live counters, orders (filters, detail, refund), products and stock,
alerts, and the pages of services that other issues add (shown when they exist on `svc`).

The admin sees every merchant; services are merchant-scoped, so every page takes `?merchant=`.
Data is read through the services only."""

from __future__ import annotations

import inspect
import re
import secrets
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect

from apss.clock import format_rfc3339, parse_rfc3339
from apss.domain.orders import PAID_OR_LATER, REFUNDABLE, OrderStatus
from apss.errors import ApssError, NotFound
from apss.services.catalog.products import ProductUpdate
from apss.services.container import Services
from apss.services.merchants.keys import Merchant
from apss.services.refunds.refunds import RefundCreate
from apss.web._i18n import money
from apss.web._layout import Document, esc, html_response
from apss.web._sessions import AdminSessions, tokens_match
from apss.web.charts import bar_chart, line_chart

__all__ = ["ADMIN_HANDLERS"]

_SESSION_COOKIE = "apss_admin"
_LOGIN_CSRF_COOKIE = "apss_login_csrf"
_DAY_MS = 86_400_000
_DAYS = 14
_PAGE = 50
_ORDER_PAGES_MAX = 50  # the overview walks at most 5,000 recent orders
_COUNT_PAGES_MAX = 10
_LIVE_REFRESH_MS = 5000
_ID_RE = re.compile(r"^[a-z]{2,4}_[A-Za-z0-9]{4,60}$")
_PLAYER_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_CODE_RE = re.compile(r"^[a-z_]{1,64}$")
# Pages of services that other issues add: (title, attribute on svc, list methods to try).
_SECTIONS = {
    "settlements": ("Settlements", "settlements", ("list", "list_settlements")),
    "reports": ("Reports", "reports", ("list", "list_reports")),
    "reconciliation": ("Reconciliation", "reconciliation", ("list", "list_runs", "list_results")),
    "webhooks": ("Webhook deliveries", "webhooks", ("list_deliveries",)),
}

_CSS = """
header{background:#111827;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:10px 18px;align-items:center}
header a{color:#e5e7eb;text-decoration:none}header a.on{color:#fff;font-weight:600;border-bottom:2px solid #60a5fa}
header form{display:flex;gap:6px;align-items:center;margin:0}header .grow{flex:1}
header button,header select{padding:5px 8px;font-size:.85rem}
main{max-width:1100px;margin:18px auto;padding:0 14px}.card{background:#fff;border-radius:12px;padding:16px;margin-bottom:16px;box-shadow:0 1px 6px #0001}
.counters{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.counter{background:#fff;border-radius:12px;padding:14px;box-shadow:0 1px 6px #0001}.counter b{display:block;font-size:1.5rem}
.scroll{overflow-x:auto}svg.chart{width:100%;height:auto}.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end}
.timeline{list-style:none;padding:0;border-left:2px solid #d1d5db;margin-left:6px}.timeline li{padding:4px 0 10px 14px}
.login{max-width:380px;margin:12vh auto}.login input{width:100%;margin:8px 0 14px}
"""


# -- sessions, cookies, CSRF -------------------------------------------------------------------
def _sessions(request: Request) -> AdminSessions:
    state = request.app.state
    if "admin_sessions" not in state:
        state["admin_sessions"] = AdminSessions()
    return state["admin_sessions"]


def _session(request: Request, svc: Services):
    return _sessions(request).get(request.cookies.get(_SESSION_COOKIE), now_ms=svc.clock.now_ms())


def _cookie(svc: Services, key: str, value: str, *, path: str, max_age: int | None) -> Cookie:
    return Cookie(key=key, value=value, path=path, httponly=True, samesite="strict", max_age=max_age,
                  secure=svc.config.public_url.startswith("https://"))


def _to_login() -> Response:
    return Redirect("/admin/login", status_code=303)


async def _checked_form(request: Request, svc: Services):
    """The session and form of a POST whose CSRF token matches its session's; else None."""
    session = _session(request, svc)
    form = await request.form()
    if session is None or not tokens_match(form.get("csrf"), session.csrf):
        return None, form
    return session, form


async def _admin_action(request: Request, svc: Services, object_id: str | None = None) -> Response | tuple[Merchant, Any]:
    """Every dashboard POST starts here: 403 without a session and its CSRF token, a chosen
    merchant or, when given, a well-formed object id; else (merchant, form)."""
    session, form = await _checked_form(request, svc)
    if session is None:
        return _forbidden()
    merchant, _ = await _merchant_choice(request, svc)
    if merchant is None or (object_id is not None and not _ID_RE.match(object_id)):
        return _forbidden()
    return merchant, form


def _forbidden() -> Response:
    return html_response(Document(title="Forbidden", css=_CSS, status=403, body=(
        "<main class=login><div class=card><h1>Form expired</h1><p>The form's CSRF token is missing or wrong. "
        "<a href='/admin/login'>Log in again</a>.</p></div></main>")))


# -- layout ------------------------------------------------------------------------------------
def _layout(*, title: str, body: str, active: str, merchant: Merchant | None, merchants: list, csrf: str,
            script: str = "", status: int = 200) -> Response:
    query = f"?merchant={esc(merchant.id)}" if merchant else ""
    links = [("overview", "/admin", "Overview"), ("orders", "/admin/orders", "Orders"),
             ("products", "/admin/products", "Products"), ("alerts", "/admin/alerts", "Alerts")]
    links += [(name, f"/admin/{name}", title_) for name, (title_, _, _) in _SECTIONS.items()]
    nav = "".join(f"<a class='{'on' if key == active else ''}' href='{href}{query}'>{label}</a>" for key, href, label in links)
    options = "".join(f"<option value='{esc(m.id)}'{' selected' if merchant and m.id == merchant.id else ''}>"
                      f"{esc(m.name)} · {esc(m.mode)} · {esc(m.id)}</option>" for m in merchants)
    picker = (f"<form method=get action='/admin/{'' if active == 'overview' else active}'><select name=merchant id=merchant-picker>"
              f"{options}</select><button type=submit>Switch</button></form>")
    logout = (f"<form method=post action='/admin/logout'><input type=hidden name=csrf value='{esc(csrf)}'>"
              f"<button type=submit id=logout>Log out</button></form>")
    header = f"<header><strong>APSS</strong>{nav}<span class=grow></span>{picker}{logout}</header>"
    return html_response(Document(title=f"{title} · APSS admin", body=f"{header}<main>{body}</main>", css=_CSS,
                                  script=script, status=status))


async def _merchant_choice(request: Request, svc: Services) -> tuple[Merchant | None, list]:
    merchants, _ = await svc.merchants.list(after_id=None, limit=100)
    wanted = request.query_params.get("merchant")
    chosen = svc.merchants.by_id(wanted) if wanted else None
    if chosen is None and merchants:
        chosen = svc.merchants.by_id(merchants[0].id)
    return chosen, merchants


async def _admin_page(request: Request, svc: Services, active: str) -> Response | tuple[Any, Merchant, list]:
    """Every dashboard page starts here: the login page without a session, a notice without a
    merchant, else (session, chosen merchant, all merchants)."""
    session = _session(request, svc)
    if session is None:
        return _to_login()
    merchant, merchants = await _merchant_choice(request, svc)
    if merchant is None:
        return _no_merchant(merchants, session.csrf, active)
    return session, merchant, merchants


def _no_merchant(merchants: list, csrf: str, active: str) -> Response:
    return _layout(title="No merchant", active=active, merchant=None, merchants=merchants, csrf=csrf,
                   body="<div class=card>No merchant exists yet: create one with POST /v1/merchants.</div>")


def _badge(status: str) -> str:
    kind = "ok" if status in ("fulfilled", "paid", "succeeded") else "bad" if status in (
        "failed", "expired", "canceled", "refunded") else "wait"
    return f"<span class='badge {kind}' data-status='{esc(status)}'>{esc(status)}</span>"


# -- login and logout --------------------------------------------------------------------------
def _login_page(svc: Services, *, error: str = "", status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(32)
    notice = f"<p class='notice error' id=login-error>{esc(error)}</p>" if error else ""
    body = (f"<main class=login><div class=card><h1>APSS admin</h1>{notice}<form method=post action='/admin/login'>"
            f"<input type=hidden name=csrf value='{csrf}'><label for=token>Admin token</label>"
            f"<input id=token name=token type=password autocomplete=current-password required>"
            f"<button class=primary type=submit id=login>Log in</button></form></div></main>")
    return html_response(Document(title="Log in · APSS admin", body=body, css=_CSS, status=status),
                         cookies=[_cookie(svc, _LOGIN_CSRF_COOKIE, csrf, path="/admin", max_age=3600)])


@get("/admin/login", include_in_schema=False)
async def admin_login_page(request: Request, svc: Services) -> Response:
    if _session(request, svc) is not None:
        return Redirect("/admin", status_code=303)
    return _login_page(svc)


def client_address(request: Request) -> str:
    """The peer's address (the admin token's guessing throttle counts per address)."""
    return request.client.host if request.client is not None else "unknown"


@post("/admin/login", include_in_schema=False, status_code=200)
async def admin_login(request: Request, svc: Services) -> Response:
    form = await request.form()
    if not tokens_match(form.get("csrf"), request.cookies.get(_LOGIN_CSRF_COOKIE)):
        return _forbidden()
    try:
        svc.rate_limiter.take("admin_login")
        svc.merchants.check_admin(str(form.get("token") or ""), address=client_address(request))
    except ApssError as error:
        return _login_page(svc, error=error.message, status=401 if error.code not in ("rate_limited", "admin_auth_throttled") else 429)
    session_id, _ = _sessions(request).create(now_ms=svc.clock.now_ms())
    return Redirect("/admin", status_code=303, cookies=[
        _cookie(svc, _SESSION_COOKIE, session_id, path="/admin", max_age=None),
        _cookie(svc, _LOGIN_CSRF_COOKIE, "", path="/admin", max_age=0)])


@post("/admin/logout", include_in_schema=False, status_code=200)
async def admin_logout(request: Request, svc: Services) -> Response:
    session, _ = await _checked_form(request, svc)
    if session is None:
        return _forbidden()
    _sessions(request).drop(request.cookies.get(_SESSION_COOKIE))
    return Redirect("/admin/login", status_code=303, cookies=[_cookie(svc, _SESSION_COOKIE, "", path="/admin", max_age=0)])


# -- overview ----------------------------------------------------------------------------------
async def _orders_since(svc: Services, merchant_id: str, since_ms: int) -> list:
    found, after = [], None
    for _ in range(_ORDER_PAGES_MAX):
        page, more = await svc.orders.list(merchant_id=merchant_id, after_id=after, limit=100, status=None, player_id=None)
        for order in page:  # newest first
            if parse_rfc3339(order.created_at) < since_ms:
                return found
            found.append(order)
        if not more:
            break
        after = page[-1].id
    return found


async def _count(list_page, **filters) -> str:
    """How many items a paged list holds, up to a bound ("1000+" beyond it)."""
    total, after = 0, None
    for _ in range(_COUNT_PAGES_MAX):
        page, more = await list_page(after_id=after, limit=100, **filters)
        total += len(page)
        if not more:
            return str(total)
        after = page[-1].id
    return f"{total}+"


async def _live(svc: Services, merchant: Merchant) -> dict[str, str]:
    now_ms = svc.clock.now_ms()
    today_ms = now_ms - now_ms % _DAY_MS
    today = await _orders_since(svc, merchant.id, today_ms)
    summary = await svc.ledger.summary(merchant_id=merchant.id, from_ms=today_ms, to_ms=now_ms + 1)
    revenue = ", ".join(money(s.gross, s.currency, "en") for s in summary if s.gross) or money(0, merchant.currency, "en")
    pending = await _count(lambda **kw: svc.orders.list(merchant_id=merchant.id, status="pending", player_id=None, **kw))
    alerts = await _count(lambda **kw: svc.alerts.list(merchant_id=merchant.id, resolved=False, kind=None, **kw))
    return {"orders_today": str(len(today)), "paid_today": str(sum(o.status in PAID_OR_LATER for o in today)),
            "revenue_today": revenue, "pending": pending, "open_alerts": alerts, "as_of": format_rfc3339(now_ms)}


async def _charts(svc: Services, merchant: Merchant) -> str:
    now_ms = svc.clock.now_ms()
    first_ms = now_ms - now_ms % _DAY_MS - (_DAYS - 1) * _DAY_MS
    starts = [first_ms + i * _DAY_MS for i in range(_DAYS)]
    labels = [format_rfc3339(s)[:10] for s in starts]
    revenue: dict[str, list[int]] = {}
    for index, start in enumerate(starts):
        for row in await svc.ledger.summary(merchant_id=merchant.id, from_ms=start, to_ms=start + _DAY_MS):
            revenue.setdefault(row.currency, [0] * _DAYS)[index] += row.gross
    counts = [0] * _DAYS
    for order in await _orders_since(svc, merchant.id, first_ms):
        counts[(parse_rfc3339(order.created_at) - first_ms) // _DAY_MS] += 1
    parts = []
    for currency, values in sorted(revenue.items() or [(merchant.currency, [0] * _DAYS)]):
        chart = bar_chart(points=list(zip(labels, values)), title=f"Revenue (gross, {currency}) per day, UTC",
                          format_value=lambda v, c=currency: money(v, c, "en"), chart_id=f"revenue-{currency}")
        parts.append(f"<div class=card><h3>Revenue · {esc(currency)}</h3><div class=scroll>{chart}</div></div>")
    chart = line_chart(points=list(zip(labels, counts)), title="Orders created per day, UTC", format_value=str, chart_id="orders")
    parts.append(f"<div class=card><h3>Orders</h3><div class=scroll>{chart}</div></div>")
    return "".join(parts)


_LIVE_SCRIPT = """
(function(){var m=document.body.querySelector('[data-live]');if(!m)return;
function refresh(){fetch(m.dataset.live,{cache:'no-store',credentials:'same-origin'}).then(function(r){return r.ok?r.json():null})
.then(function(d){if(!d)return;document.querySelectorAll('[data-counter]').forEach(function(e){
if(d[e.dataset.counter]!==undefined)e.textContent=d[e.dataset.counter];});}).catch(function(){});}
setInterval(refresh,REFRESH_MS);})();
""".replace("REFRESH_MS", str(_LIVE_REFRESH_MS))


@get("/admin", include_in_schema=False)
async def admin_overview(request: Request, svc: Services) -> Response:
    page = await _admin_page(request, svc, "overview")
    if isinstance(page, Response):
        return page
    session, merchant, merchants = page
    live = await _live(svc, merchant)
    names = [("orders_today", "Orders today"), ("paid_today", "Paid today"), ("revenue_today", "Revenue today"),
             ("pending", "Pending"), ("open_alerts", "Open alerts")]
    counters = "".join(f"<div class=counter><span class=muted>{label}</span><b data-counter={key} id=counter-{key}>"
                       f"{esc(live[key])}</b></div>" for key, label in names)
    body = (f"<h1>{esc(merchant.name)}</h1><div class=counters data-live='/admin/live.json?merchant={esc(merchant.id)}'>"
            f"{counters}</div><p class=muted>Live counters refresh every {_LIVE_REFRESH_MS // 1000} s; "
            f"days are UTC.</p>{await _charts(svc, merchant)}")
    return _layout(title="Overview", body=body, active="overview", merchant=merchant, merchants=merchants,
                   csrf=session.csrf, script=_LIVE_SCRIPT)


@get("/admin/live.json", include_in_schema=False)
async def admin_live(request: Request, svc: Services) -> Response:
    if _session(request, svc) is None:
        return Response(content={"error": {"type": "authentication_error", "code": "session_required",
                                           "message": "Log in to the dashboard."}}, status_code=401)
    merchant, _ = await _merchant_choice(request, svc)
    if merchant is None:
        return Response(content={}, status_code=200)
    return Response(content=await _live(svc, merchant), headers={"Cache-Control": "no-store"})


# -- orders ------------------------------------------------------------------------------------
def _order_row(order, merchant: Merchant) -> str:
    return (f"<tr data-order='{esc(order.id)}'><td><a href='/admin/orders/{esc(order.id)}?merchant={esc(merchant.id)}'>"
            f"{esc(order.id)}</a></td><td>{esc(order.created_at)}</td><td>{esc(order.player_id)}</td>"
            f"<td>{_badge(order.status)}</td><td>{esc(money(order.amount, order.currency, 'en'))}</td><td>{esc(order.channel)}</td></tr>")


@get("/admin/orders", include_in_schema=False)
async def admin_orders(request: Request, svc: Services) -> Response:
    page = await _admin_page(request, svc, "orders")
    if isinstance(page, Response):
        return page
    session, merchant, merchants = page
    query = request.query_params
    search = (query.get("q") or "").strip()
    if _ID_RE.match(search):
        return Redirect(f"/admin/orders/{search}?merchant={merchant.id}", status_code=303)
    status = query.get("status") if query.get("status") in {s.value for s in OrderStatus} else None
    player = query.get("player") if _PLAYER_RE.match(query.get("player") or "") else None
    after = query.get("after") if _ID_RE.match(query.get("after") or "") else None
    orders, more = await svc.orders.list(merchant_id=merchant.id, after_id=after, limit=_PAGE, status=status, player_id=player)
    options = "".join(f"<option{' selected' if s.value == status else ''}>{s.value}</option>" for s in OrderStatus)
    filters = (f"<form class=filters method=get action='/admin/orders'><input type=hidden name=merchant value='{esc(merchant.id)}'>"
               f"<label>Status<br><select name=status><option value=''>any</option>{options}</select></label>"
               f"<label>Player<br><input name=player value='{esc(player or '')}'></label>"
               f"<label>Order id<br><input name=q placeholder='ord_…'></label><button type=submit>Filter</button></form>")
    rows = "".join(_order_row(o, merchant) for o in orders) or "<tr><td colspan=6 class=muted>No orders.</td></tr>"
    more_link = ""
    if more:
        keep = "".join(f"&{k}={esc(v)}" for k, v in (("status", status), ("player", player)) if v)
        more_link = f"<a href='/admin/orders?merchant={esc(merchant.id)}&after={esc(orders[-1].id)}{keep}'>Older →</a>"
    body = (f"<div class=card>{filters}</div><div class='card scroll'><table id=orders><tr><th>Order</th><th>Created</th>"
            f"<th>Player</th><th>Status</th><th>Amount</th><th>Channel</th></tr>{rows}</table>{more_link}</div>")
    return _layout(title="Orders", body=body, active="orders", merchant=merchant, merchants=merchants, csrf=session.csrf)


def _notice(request: Request) -> str:
    done, error = request.query_params.get("done") or "", request.query_params.get("error") or ""
    if _CODE_RE.match(error):
        return f"<p class='notice error' id=notice>Refused: {esc(error)}</p>"
    if _CODE_RE.match(done):
        return f"<p class=notice id=notice>Done: {esc(done.replace('_', ' '))}</p>"
    return ""


@get("/admin/orders/{order_id:str}", include_in_schema=False)
async def admin_order(order_id: str, request: Request, svc: Services) -> Response:
    page = await _admin_page(request, svc, "orders")
    if isinstance(page, Response):
        return page
    session, merchant, merchants = page
    try:
        order = await svc.orders.get(merchant_id=merchant.id, order_id=order_id)
        events = await svc.orders.events(merchant_id=merchant.id, order_id=order_id)
    except NotFound:
        return _layout(title="Not found", active="orders", merchant=merchant, merchants=merchants, csrf=session.csrf,
                       status=404, body=f"<div class=card>No order {esc(order_id)} for this merchant.</div>")
    items = "".join(f"<tr><td>{esc(i.sku)}</td><td>{i.quantity}</td><td>{esc(money(i.amount, order.currency, 'en'))}</td></tr>"
                    for i in order.items)
    timeline = "".join(f"<li data-to='{esc(e.to_status)}'><b>{esc(e.to_status)}</b> <span class=muted>{esc(e.type)} · "
                       f"{esc(e.cause)} · {esc(e.created_at)}</span></li>" for e in events)
    refund = ""
    if order.status in REFUNDABLE:
        refund = (f"<form method=post action='/admin/orders/{esc(order.id)}/refund?merchant={esc(merchant.id)}'>"
                  f"<input type=hidden name=csrf value='{esc(session.csrf)}'><button class=danger type=submit id=refund>"
                  f"Refund the rest ({esc(money(order.amount, order.currency, 'en'))} order)</button></form>")
    payment = order.payment
    body = (f"{_notice(request)}<div class=card><h1>Order {esc(order.id)} {_badge(order.status)}</h1>"
            f"<p>Player <b>{esc(order.player_id)}</b> · {esc(money(order.amount, order.currency, 'en'))} · channel "
            f"{esc(order.channel)} · payment {esc(payment.id if payment else '-')} {_badge(payment.status) if payment else ''}</p>"
            f"<p class=muted>Created {esc(order.created_at)} · ref {esc(order.merchant_order_ref or '-')}</p>"
            f"<table><tr><th>SKU</th><th>Qty</th><th>Amount</th></tr>{items}</table>{refund}</div>"
            f"<div class=card><h3>Timeline</h3><ol class=timeline id=timeline>{timeline}</ol></div>")
    return _layout(title=f"Order {order.id}", body=body, active="orders", merchant=merchant, merchants=merchants, csrf=session.csrf)


@post("/admin/orders/{order_id:str}/refund", include_in_schema=False, status_code=200)
async def admin_refund(order_id: str, request: Request, svc: Services) -> Response:
    action = await _admin_action(request, svc, order_id)
    if isinstance(action, Response):
        return action
    merchant, _ = action
    try:
        outcome = await svc.refunds.create(merchant=merchant, order_id=order_id,
                                           command=RefundCreate(reason="refunded from the admin dashboard"), idem=None)
        body = msgspec.json.decode(outcome.body)
        query = (f"done=refund_{body.get('status', 'requested')}" if outcome.status < 400
                 else f"error={body.get('error', {}).get('code', 'refund_refused')}")
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/orders/{order_id}?merchant={merchant.id}&{query}", status_code=303)


# -- products and alerts -----------------------------------------------------------------------
@get("/admin/products", include_in_schema=False)
async def admin_products(request: Request, svc: Services) -> Response:
    page = await _admin_page(request, svc, "products")
    if isinstance(page, Response):
        return page
    session, merchant, merchants = page
    after = request.query_params.get("after") if _ID_RE.match(request.query_params.get("after") or "") else None
    products, more = await svc.catalog.list(merchant_id=merchant.id, after_id=after, limit=_PAGE, active=None)
    notice = _notice(request)

    def adjust(p) -> str:  # limited stock only: "+100" restocks, "-5" removes free units, atomically
        if p.stock is None:
            return ""
        return (f"<form method=post action='/admin/products/{esc(p.id)}/stock?merchant={esc(merchant.id)}' class=inline>"
                f"<input type=hidden name=csrf value='{esc(session.csrf)}'><input name=delta type=number step=1 required "
                f"aria-label='Adjust stock of {esc(p.sku)}' size=5><button type=submit>Adjust</button></form>")

    rows = "".join(
        f"<tr data-product='{esc(p.id)}'><td>{esc(p.sku)}</td><td>{esc(p.name)}</td><td>{esc(p.category)}</td>"
        f"<td>{esc(', '.join(money(a, c, 'en') for c, a in sorted(p.prices.items())))}</td>"
        f"<td data-stock>{'∞' if p.stock is None else p.stock}</td><td>{p.reserved}</td><td>{p.sold}</td>"
        f"<td>{'yes' if p.active else 'no'}</td><td>{adjust(p)}</td></tr>"
        for p in products) or "<tr><td colspan=9 class=muted>No products.</td></tr>"
    more_link = (f"<a href='/admin/products?merchant={esc(merchant.id)}&after={esc(products[-1].id)}'>More →</a>" if more else "")
    body = (f"{notice}<div class='card scroll'><h1>Products and stock</h1><table id=products><tr><th>SKU</th><th>Name</th>"
            f"<th>Category</th><th>Prices</th><th>Free stock</th><th>Reserved</th><th>Sold</th><th>Active</th><th>Stock</th>"
            f"</tr>{rows}</table>{more_link}</div>")
    return _layout(title="Products", body=body, active="products", merchant=merchant, merchants=merchants, csrf=session.csrf)


@post("/admin/products/{product_id:str}/stock", include_in_schema=False, status_code=200)
async def admin_adjust_stock(product_id: str, request: Request, svc: Services) -> Response:
    action = await _admin_action(request, svc, product_id)
    if isinstance(action, Response):
        return action
    merchant, form = action
    try:
        delta = int(form.get("delta", ""))
        outcome = await svc.catalog.update(merchant_id=merchant.id, product_id=product_id,
                                           command=ProductUpdate(stock_adjust=delta), idem=None)
        query = "done=stock_adjusted" if outcome.status < 400 else "error=stock_not_adjusted"
    except ValueError:
        query = "error=delta_not_a_whole_number"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/products?merchant={merchant.id}&{query}", status_code=303)


@get("/admin/alerts", include_in_schema=False)
async def admin_alerts(request: Request, svc: Services) -> Response:
    page = await _admin_page(request, svc, "alerts")
    if isinstance(page, Response):
        return page
    session, merchant, merchants = page
    show_all = request.query_params.get("show") == "all"
    alerts, _ = await svc.alerts.list(merchant_id=merchant.id, after_id=None, limit=100, resolved=None if show_all else False, kind=None)
    rows = []
    for alert in alerts:
        resolve = "" if alert.resolved else (
            f"<form method=post action='/admin/alerts/{esc(alert.id)}/resolve?merchant={esc(merchant.id)}'>"
            f"<input type=hidden name=csrf value='{esc(session.csrf)}'><button type=submit>Resolve</button></form>")
        rows.append(f"<tr data-alert='{esc(alert.id)}'><td>{esc(alert.created_at)}</td><td>{esc(alert.severity)}</td>"
                    f"<td>{esc(alert.kind)}</td><td>{esc(alert.object_id or '')}</td><td>{esc(alert.message)}</td>"
                    f"<td>{'resolved ' + esc(alert.resolved_at or '') if alert.resolved else resolve}</td></tr>")
    toggle = (f"<a href='/admin/alerts?merchant={esc(merchant.id)}{'' if show_all else '&show=all'}'>"
              f"{'Open only' if show_all else 'Show resolved too'}</a>")
    body = (f"{_notice(request)}<div class='card scroll'><h1>Alerts</h1>{toggle}<table id=alerts><tr><th>Raised</th><th>Severity</th>"
            f"<th>Kind</th><th>Object</th><th>Message</th><th></th></tr>"
            f"{''.join(rows) or '<tr><td colspan=6 class=muted>No open alerts.</td></tr>'}</table></div>")
    return _layout(title="Alerts", body=body, active="alerts", merchant=merchant, merchants=merchants, csrf=session.csrf)


@post("/admin/alerts/{alert_id:str}/resolve", include_in_schema=False, status_code=200)
async def admin_resolve_alert(alert_id: str, request: Request, svc: Services) -> Response:
    action = await _admin_action(request, svc)
    if isinstance(action, Response):
        return action
    merchant, _ = action
    try:
        await svc.alerts.resolve(merchant_id=merchant.id, alert_id=alert_id)
        query = "done=alert_resolved"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/alerts?merchant={merchant.id}&{query}", status_code=303)


# -- pages of services other issues add --------------------------------------------------------
async def _call_list(method: Any, merchant_id: str) -> list | None:
    """Call a list method with the arguments it takes among the usual ones; None if it needs others."""
    offered = {"merchant_id": merchant_id, "after_id": None, "limit": _PAGE, "cursor": None}
    parameters = inspect.signature(method).parameters
    needed = [name for name, p in parameters.items() if p.default is p.empty
              and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(name not in offered for name in needed):
        return None
    result = method(**{name: value for name, value in offered.items() if name in parameters})
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, tuple):
        result = result[0]
    return list(getattr(result, "data", result))


def _generic_table(items: list) -> str:
    rows = [msgspec.to_builtins(item) for item in items]
    rows = [row for row in rows if isinstance(row, dict)]
    if not rows:
        return "<p class=muted>Nothing yet.</p>"
    columns = [key for key, value in rows[0].items() if not isinstance(value, (dict, list))][:8]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>'}{body}</table>"


@get(["/admin/settlements", "/admin/reports", "/admin/reconciliation", "/admin/webhooks"], include_in_schema=False)
async def admin_section(request: Request, svc: Services) -> Response:
    session = _session(request, svc)
    if session is None:
        return _to_login()
    name = request.url.path.rsplit("/", 1)[1]
    title, attribute, methods = _SECTIONS[name]
    merchant, merchants = await _merchant_choice(request, svc)
    service = getattr(svc, attribute, None)
    method = next((getattr(service, m) for m in methods if service is not None and callable(getattr(service, m, None))), None)
    items = await _call_list(method, merchant.id) if method is not None and merchant is not None else None
    if service is None:
        content = f"<p class=muted id=not-available>{esc(title)}: not available yet.</p>"
    elif items is None:
        content = f"<p class=muted>The {esc(attribute)} service is present but has no list this page can show yet.</p>"
    else:
        content = _generic_table(items)
    body = f"<div class='card scroll'><h1>{esc(title)}</h1>{content}</div>"
    return _layout(title=title, body=body, active=name, merchant=merchant, merchants=merchants, csrf=session.csrf)


ADMIN_HANDLERS = [admin_login_page, admin_login, admin_logout, admin_overview, admin_live, admin_orders, admin_order,
                  admin_refund, admin_products, admin_adjust_stock, admin_alerts, admin_resolve_alert, admin_section]
