"""The admin dashboard at /admin: login (admin token -> session cookie, the session stored hashed
in the database), CSRF-checked forms, overview with charts and live counters, orders (filters,
detail, refund with an amount and a confirmation step), products and stock, alerts; the money
and operations pages (settlements, reports, reconciliation, webhook deliveries) are in
admin_finance.py.

The admin sees every merchant; services are merchant-scoped, so every page takes `?merchant=`
(and remembers it: the overview opens on the merchant looked at last). Data is read through the
services only."""

from __future__ import annotations

import hashlib
import re
import secrets

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Redirect

from apss.clock import format_rfc3339
from apss.domain.orders import REFUNDABLE, OrderStatus
from apss.errors import ApssError, NotFound
from apss.services.catalog.products import ProductUpdate
from apss.services.container import Services
from apss.services.idempotency import IdempotencyRequest
from apss.services.merchants.keys import Merchant
from apss.services.refunds.refunds import RefundCreate
from apss.web._admin_kit import (
    CSS,
    ID_RE,
    SESSION_COOKIE,
    Page,
    admin_action,
    admin_page,
    badge,
    cookie,
    csrf_input,
    forbidden,
    layout,
    notice,
    opt,
)
from apss.web._i18n import major_units, minor_units
from apss.web._layout import Document, esc, html_response
from apss.web._sessions import session_of, tokens_match
from apss.web.admin_finance import FINANCE_HANDLERS
from apss.web.charts import bar_chart, line_chart

__all__ = ["ADMIN_HANDLERS"]

_LOGIN_CSRF_COOKIE = "apss_login_csrf"
_DAY_MS = 86_400_000
_DAYS = 14
_PAGE = 50
_COUNT_PAGES_MAX = 10
_COUNT_MAX = _COUNT_PAGES_MAX * 100  # counters show "1000+" beyond
_LIVE_REFRESH_MS = 5000
_PLAYER_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


# -- login and logout --------------------------------------------------------------------------
def _login_page(svc: Services, *, error: str = "", status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(32)
    shown = f"<p class='notice error' id=login-error>{esc(error)}</p>" if error else ""
    body = (f"<main class=login><div class=card><h1>APSS admin</h1>{shown}<form method=post action='/admin/login'>"
            f"<input type=hidden name=csrf value='{csrf}'><label for=token>Admin token</label>"
            f"<input id=token name=token type=password autocomplete=current-password required>"
            f"<button class=primary type=submit id=login>Log in</button></form></div></main>")
    return html_response(Document(title="Log in · APSS admin", body=body, css=CSS, status=status),
                         cookies=[cookie(svc, _LOGIN_CSRF_COOKIE, csrf, path="/admin", max_age=3600)])


@get("/admin/login", include_in_schema=False)
async def admin_login_page(request: Request, svc: Services) -> Response:
    if await session_of(request, svc) is not None:
        return Redirect("/admin", status_code=303)
    return _login_page(svc)


def client_address(request: Request) -> str:
    """The peer's address (the admin token's guessing throttle counts per address)."""
    return request.client.host if request.client is not None else "unknown"


@post("/admin/login", include_in_schema=False, status_code=200)
async def admin_login(request: Request, svc: Services) -> Response:
    form = await request.form()
    if not tokens_match(form.get("csrf"), request.cookies.get(_LOGIN_CSRF_COOKIE)):
        return forbidden()
    try:
        svc.rate_limiter.take("admin_login")
        svc.merchants.check_admin(str(form.get("token") or ""), address=client_address(request))
    except ApssError as error:
        return _login_page(svc, error=error.message,
                           status=401 if error.code not in ("rate_limited", "admin_auth_throttled") else 429)
    token, _ = await svc.admin_sessions.create()
    return Redirect("/admin", status_code=303, cookies=[
        cookie(svc, SESSION_COOKIE, token, path="/admin", max_age=None),
        cookie(svc, _LOGIN_CSRF_COOKIE, "", path="/admin", max_age=0)])


@post("/admin/logout", include_in_schema=False, status_code=200)
async def admin_logout(request: Request, svc: Services) -> Response:
    session = await session_of(request, svc)
    form = await request.form()
    if session is None or not tokens_match(form.get("csrf"), session.csrf):
        return forbidden()
    await svc.admin_sessions.drop(request.cookies.get(SESSION_COOKIE))
    return Redirect("/admin/login", status_code=303, cookies=[cookie(svc, SESSION_COOKIE, "", path="/admin", max_age=0)])


# -- overview ----------------------------------------------------------------------------------
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


async def _today(svc: Services, page: Page, now_ms: int) -> list:
    """Today's summary so far (summed from today's ledger: no stored report holds it yet)."""
    today_ms = now_ms - now_ms % _DAY_MS
    return await svc.reports.summary(merchant_id=page.merchant.id, from_ms=today_ms, to_ms=now_ms + 1)


async def _live(svc: Services, page: Page, *, now_ms: int, summary: list) -> dict[str, str]:
    merchant = page.merchant
    assert merchant is not None
    today_ms = now_ms - now_ms % _DAY_MS
    orders_today, paid_today = await svc.orders.created_since(merchant_id=merchant.id, since_ms=today_ms, until_ms=now_ms + 1)
    nothing = page.cash(0, merchant.currency)
    gross = ", ".join(page.cash(s.gross, s.currency) for s in summary if s.gross) or nothing
    net = ", ".join(page.cash(s.gross - s.refunds - s.chargebacks, s.currency) for s in summary
                    if s.gross or s.refunds or s.chargebacks) or nothing
    pending = await svc.orders.count_status(merchant_id=merchant.id, status="pending", limit=_COUNT_MAX + 1)
    alerts = await _count(lambda **kw: svc.alerts.list(merchant_id=merchant.id, resolved=False, kind=None, **kw))
    return {"orders_today": str(orders_today), "paid_today": str(paid_today), "revenue_today": gross,
            "net_revenue_today": net, "pending": str(pending) if pending <= _COUNT_MAX else f"{_COUNT_MAX}+",
            "open_alerts": alerts, "as_of": format_rfc3339(now_ms)}


async def _charts(svc: Services, page: Page, *, now_ms: int, today: list) -> str:
    """`today`: today's summary, the last day's bar (the live counters' figures, summed once)."""
    merchant = page.merchant
    assert merchant is not None
    first_ms = now_ms - now_ms % _DAY_MS - (_DAYS - 1) * _DAY_MS
    starts = [first_ms + i * _DAY_MS for i in range(_DAYS)]
    labels = [format_rfc3339(s)[:10] for s in starts]
    revenue: dict[str, list[int]] = {}
    for index, start in enumerate(starts):  # past days from their stored daily reports (Reports.summary)
        day = today if index == _DAYS - 1 else await svc.reports.summary(merchant_id=merchant.id, from_ms=start,
                                                                          to_ms=start + _DAY_MS)
        for row in day:
            revenue.setdefault(row.currency, [0] * _DAYS)[index] += row.gross
    counts = await svc.orders.created_per_day(merchant_id=merchant.id, from_ms=first_ms, days=_DAYS, day_ms=_DAY_MS,
                                              now_ms=now_ms)
    parts = []
    for currency, values in sorted(revenue.items() or [(merchant.currency, [0] * _DAYS)]):
        chart = bar_chart(points=list(zip(labels, values)), title=f"Gross revenue (before refunds, {currency}) per day, UTC",
                          format_value=lambda v, c=currency: page.cash(v, c), chart_id=f"revenue-{currency}")
        parts.append(f"<div class=card><h3>Gross revenue · {esc(currency)} <span class=muted>(before refunds)</span></h3>"
                     f"<div class=scroll>{chart}</div></div>")
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

_COUNTERS = [("orders_today", "Orders today"), ("paid_today", "Paid today"), ("revenue_today", "Gross revenue today"),
             ("net_revenue_today", "Revenue today, net of refunds"), ("pending", "Pending"), ("open_alerts", "Open alerts")]


@get("/admin", include_in_schema=False)
async def admin_overview(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "overview")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    now_ms = svc.clock.now_ms()
    today = await _today(svc, page, now_ms)
    live = await _live(svc, page, now_ms=now_ms, summary=today)
    counters = "".join(f"<div class=counter><span class=muted>{label}</span><b data-counter={key} id=counter-{key}>"
                       f"{live[key]}</b></div>" for key, label in _COUNTERS)
    body = (f"<h1 id=merchant-name>{esc(merchant.name)}</h1><div class=counters data-live='{page.url('/admin/live.json')}'>"
            f"{counters}</div><p class=muted>Live counters refresh every {_LIVE_REFRESH_MS // 1000} s; days are UTC. "
            f"Net of refunds = gross − refunds − chargebacks (before fees and commission).</p>"
            f"{await _charts(svc, page, now_ms=now_ms, today=today)}")
    return layout(page, title="Overview", body=body, active="overview", script=_LIVE_SCRIPT)


@get("/admin/live.json", include_in_schema=False)
async def admin_live(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "overview")
    if isinstance(page, Response):
        if page.status_code in (302, 303):
            return Response(content={"error": {"type": "authentication_error", "code": "session_required",
                                               "message": "Log in to the dashboard."}}, status_code=401)
        return Response(content={}, status_code=200)
    now_ms = svc.clock.now_ms()
    live = await _live(svc, page, now_ms=now_ms, summary=await _today(svc, page, now_ms))
    return Response(content=live, headers={"Cache-Control": "no-store"})


# -- orders ------------------------------------------------------------------------------------
def _order_row(order, page: Page) -> str:
    return (f"<tr data-order='{esc(order.id)}'><td><a href='{page.url(f'/admin/orders/{order.id}')}'>"
            f"{esc(order.id)}</a></td><td>{esc(order.created_at)}</td><td>{esc(order.player_id)}</td>"
            f"<td>{badge(order.status)}</td><td class=num>{page.cash(order.amount, order.currency)}</td>"
            f"<td>{opt(order.channel)}</td></tr>")


@get("/admin/orders", include_in_schema=False)
async def admin_orders(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "orders")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    query = request.query_params
    search = (query.get("q") or "").strip()
    if ID_RE.match(search):
        return Redirect(f"/admin/orders/{search}?merchant={merchant.id}", status_code=303)
    status = query.get("status") if query.get("status") in {s.value for s in OrderStatus} else None
    player = query.get("player") if _PLAYER_RE.match(query.get("player") or "") else None
    after = query.get("after") if ID_RE.match(query.get("after") or "") else None
    orders, more = await svc.orders.list(merchant_id=merchant.id, after_id=after, limit=_PAGE, status=status, player_id=player)
    options = "".join(f"<option{' selected' if s.value == status else ''}>{s.value}</option>" for s in OrderStatus)
    filters = (f"<form class=filters method=get action='/admin/orders'><input type=hidden name=merchant value='{esc(merchant.id)}'>"
               f"<label>Status<br><select name=status><option value=''>any</option>{options}</select></label>"
               f"<label>Player<br><input name=player value='{esc(player or '')}'></label>"
               f"<label>Order id<br><input name=q placeholder='ord_…'></label><button type=submit>Filter</button></form>")
    rows = "".join(_order_row(o, page) for o in orders) or "<tr><td colspan=6 class=muted>No orders.</td></tr>"
    more_link = ""
    if more:
        more_link = f"<a href='{page.url('/admin/orders', after=orders[-1].id, status=status or '', player=player or '')}'>Older →</a>"
    body = (f"<div class=card>{filters}</div><div class='card scroll'><table id=orders><tr><th>Order</th><th>Created</th>"
            f"<th>Player</th><th>Status</th><th class=num>Amount</th><th>Channel</th></tr>{rows}</table>{more_link}</div>")
    return layout(page, title="Orders", body=body, active="orders")


async def _refundable(svc: Services, merchant: Merchant, order) -> tuple[int, list]:
    """What is still refundable (the amount less pending and succeeded refunds), and the refunds."""
    refunds = await svc.refunds.for_order(merchant_id=merchant.id, order_id=order.id)
    taken = sum(r.amount for r in refunds if r.status in ("pending", "succeeded"))
    return max(order.amount - taken, 0), refunds


def _refund_form(page: Page, order, left: int) -> str:
    if order.status not in REFUNDABLE or left <= 0:
        return ""
    return (f"<form method=get action='/admin/orders/{esc(order.id)}/refund' class=row id=refund-form>"
            f"<input type=hidden name=merchant value='{esc(page.merchant.id)}'>"
            f"<label for=refund-amount>Refund amount ({esc(order.currency)})</label>"
            f"<input id=refund-amount name=amount inputmode=decimal required value='{esc(major_units(left, order.currency))}' size=10>"
            f"<button class=danger type=submit id=refund>Refund…</button>"
            f"<span class=muted>still refundable: {page.cash(left, order.currency)}; you confirm on the next page</span></form>")


@get("/admin/orders/{order_id:str}", include_in_schema=False)
async def admin_order(order_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "orders")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    try:
        order = await svc.orders.get(merchant_id=merchant.id, order_id=order_id)
        events = await svc.orders.events(merchant_id=merchant.id, order_id=order_id)
    except NotFound:
        return layout(page, title="Not found", active="orders", status=404,
                      body=f"<div class=card>No order {esc(order_id)} for this merchant.</div>")
    left, refunds = await _refundable(svc, merchant, order)
    items = "".join(f"<tr><td>{esc(i.sku)}</td><td>{i.quantity}</td><td class=num>{page.cash(i.amount, order.currency)}</td></tr>"
                    for i in order.items)
    timeline = "".join(f"<li data-to='{esc(e.to_status)}'><b>{esc(e.to_status)}</b> <span class=muted>{esc(e.type)} · "
                       f"{opt(e.cause)} · {esc(e.created_at)}</span></li>" for e in events)
    refund_rows = "".join(f"<tr data-refund='{esc(r.id)}'><td class=ids>{esc(r.id)}</td><td>{esc(r.created_at)}</td>"
                          f"<td>{badge(r.status)}</td><td class=num>{page.cash(r.amount, r.currency)}</td><td>{opt(r.reason)}</td>"
                          f"<td>{opt(r.failure_code)}</td></tr>" for r in refunds)
    refunds_table = (f"<h3>Refunds</h3><table id=refunds><tr><th>Refund</th><th>Created</th><th>Status</th><th class=num>Amount</th>"
                     f"<th>Reason</th><th>Failure</th></tr>{refund_rows}</table>" if refunds else "")
    payment = order.payment
    body = (f"{notice(request)}<div class=card><h1>Order {esc(order.id)} {badge(order.status)}</h1>"
            f"<p>Player <b>{esc(order.player_id)}</b> · {page.cash(order.amount, order.currency)} · channel "
            f"{opt(order.channel)} · payment {opt(payment.id if payment else None)} {badge(payment.status) if payment else ''}</p>"
            f"<p class=muted>Created {esc(order.created_at)} · ref {opt(order.merchant_order_ref)}</p>"
            f"<table><tr><th>SKU</th><th>Qty</th><th class=num>Amount</th></tr>{items}</table>{_refund_form(page, order, left)}"
            f"{refunds_table}</div><div class=card><h3>Timeline</h3><ol class=timeline id=timeline>{timeline}</ol></div>")
    return layout(page, title=f"Order {order.id}", body=body, active="orders")


@get("/admin/orders/{order_id:str}/refund", include_in_schema=False)
async def admin_refund_review(order_id: str, request: Request, svc: Services) -> Response:
    """The confirmation step: what will be refunded, and a button that posts it (nothing changes here)."""
    page = await admin_page(request, svc, "orders")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    back = f"/admin/orders/{order_id}?merchant={merchant.id}"
    try:
        order = await svc.orders.get(merchant_id=merchant.id, order_id=order_id)
    except NotFound:
        return Redirect(f"/admin/orders?merchant={merchant.id}&error=order_not_found", status_code=303)
    left, _ = await _refundable(svc, merchant, order)
    amount = minor_units(request.query_params.get("amount") or "", order.currency)
    if order.status not in REFUNDABLE or left <= 0:
        return Redirect(f"{back}&error=order_not_refundable", status_code=303)
    if amount is None or amount < 1:
        return Redirect(f"{back}&error=refund_amount_invalid", status_code=303)
    if amount > left:
        return Redirect(f"{back}&error=refund_amount_too_large", status_code=303)
    body = (f"<div class='card confirm'><h1>Confirm the refund</h1><p>Refund <b id=confirm-amount>{page.cash(amount, order.currency)}"
            f"</b> of order <span class=ids>{esc(order.id)}</span> to player <b>{esc(order.player_id)}</b>?</p>"
            f"<p class=muted>Paid {page.cash(order.amount, order.currency)}; still refundable {page.cash(left, order.currency)}. "
            f"The money goes back through {opt(order.channel)} and the goods are taken back per the merchant's policy.</p>"
            f"<form method=post action='/admin/orders/{esc(order.id)}/refund?merchant={esc(merchant.id)}' class=row>"
            f"{csrf_input(page)}<input type=hidden name=amount value='{amount}'>"
            f"<input type=hidden name=nonce value='{secrets.token_urlsafe(18)}'>"
            f"<button class=danger type=submit id=confirm-refund>Confirm refund</button>"
            f"<a class=button href='{esc(back)}' id=cancel-refund>Cancel</a></form></div>")
    return layout(page, title="Confirm refund", body=body, active="orders")


@post("/admin/orders/{order_id:str}/refund", include_in_schema=False, status_code=200)
async def admin_refund(order_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, order_id)
    if isinstance(action, Response):
        return action
    page, form = action
    merchant = page.merchant
    amount_text, nonce = str(form.get("amount") or ""), str(form.get("nonce") or "")
    if not amount_text.isdigit() or len(amount_text) > 16 or int(amount_text) < 1:
        return Redirect(f"/admin/orders/{order_id}?merchant={merchant.id}&error=refund_amount_invalid", status_code=303)
    # The confirmation page's nonce is the Idempotency-Key: a double click refunds once.
    idem = None
    if _NONCE_RE.match(nonce):
        digest = hashlib.sha256(f"{order_id}:{amount_text}".encode()).hexdigest()
        idem = IdempotencyRequest(key=f"admin-refund:{nonce}", request_hash=digest)
    try:
        outcome = await svc.refunds.create(merchant=merchant, order_id=order_id, idem=idem,
                                           command=RefundCreate(amount=int(amount_text), reason="refunded from the admin dashboard"))
        body = msgspec.json.decode(outcome.body)
        query = (f"done=refund_{body.get('status', 'requested')}" if outcome.status < 400
                 else f"error={body.get('error', {}).get('code', 'refund_refused')}")
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/orders/{order_id}?merchant={merchant.id}&{query}", status_code=303)


# -- products and alerts -----------------------------------------------------------------------
@get("/admin/products", include_in_schema=False)
async def admin_products(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "products")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    after = request.query_params.get("after") if ID_RE.match(request.query_params.get("after") or "") else None
    products, more = await svc.catalog.list(merchant_id=merchant.id, after_id=after, limit=_PAGE, active=None)

    def adjust(p) -> str:  # limited stock only: "+100" restocks, "-5" removes free units, atomically
        if p.stock is None:
            return ""
        return (f"<form method=post action='/admin/products/{esc(p.id)}/stock?merchant={esc(merchant.id)}' class=inline>"
                f"{csrf_input(page)}<input name=delta type=number step=1 required "
                f"aria-label='Adjust stock of {esc(p.sku)}' size=5><button type=submit>Adjust</button></form>")

    rows = "".join(
        f"<tr data-product='{esc(p.id)}'><td>{esc(p.sku)}</td><td>{esc(p.name)}</td><td>{esc(p.category)}</td>"
        f"<td>{', '.join(page.cash(a, c) for c, a in sorted(p.prices.items()))}</td>"
        f"<td data-stock>{'∞' if p.stock is None else p.stock}</td><td>{p.reserved}</td><td>{p.sold}</td>"
        f"<td>{'yes' if p.active else 'no'}</td><td class=actions>{adjust(p)}</td></tr>"
        for p in products) or "<tr><td colspan=9 class=muted>No products.</td></tr>"
    more_link = f"<a href='{page.url('/admin/products', after=products[-1].id)}'>More →</a>" if more else ""
    body = (f"{notice(request)}<div class='card scroll'><h1>Products and stock</h1><table id=products class=compact><tr>"
            f"<th>SKU</th><th>Name</th><th>Category</th><th>Prices</th><th>Free stock</th><th>Reserved</th><th>Sold</th>"
            f"<th>Active</th><th>Stock</th></tr>{rows}</table>{more_link}</div>")
    return layout(page, title="Products", body=body, active="products")


@post("/admin/products/{product_id:str}/stock", include_in_schema=False, status_code=200)
async def admin_adjust_stock(product_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, product_id)
    if isinstance(action, Response):
        return action
    page, form = action
    try:
        delta = int(form.get("delta", ""))
        outcome = await svc.catalog.update(merchant_id=page.merchant.id, product_id=product_id,
                                           command=ProductUpdate(stock_adjust=delta), idem=None)
        query = "done=stock_adjusted" if outcome.status < 400 else "error=stock_not_adjusted"
    except ValueError:
        query = "error=delta_not_a_whole_number"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/products?merchant={page.merchant.id}&{query}", status_code=303)


@get("/admin/alerts", include_in_schema=False)
async def admin_alerts(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "alerts")
    if isinstance(page, Response):
        return page
    merchant = page.merchant
    show_all = request.query_params.get("show") == "all"
    alerts, _ = await svc.alerts.list(merchant_id=merchant.id, after_id=None, limit=100, resolved=None if show_all else False, kind=None)
    rows = []
    for alert in alerts:
        resolve = "" if alert.resolved else (
            f"<form method=post action='/admin/alerts/{esc(alert.id)}/resolve?merchant={esc(merchant.id)}'>"
            f"{csrf_input(page)}<button type=submit class=small>Resolve</button></form>")
        rows.append(f"<tr data-alert='{esc(alert.id)}'><td>{esc(alert.created_at)}</td><td>{esc(alert.severity)}</td>"
                    f"<td>{esc(alert.kind)}</td><td class=ids>{opt(alert.object_id)}</td><td>{esc(alert.message)}</td>"
                    f"<td class=actions>{'resolved ' + opt(alert.resolved_at) if alert.resolved else resolve}</td></tr>")
    toggle = f"<a href='{page.url('/admin/alerts', show='' if show_all else 'all')}'>{'Open only' if show_all else 'Show resolved too'}</a>"
    body = (f"{notice(request)}<div class='card scroll'><h1>Alerts</h1>{toggle}<table id=alerts class=compact><tr><th>Raised</th>"
            f"<th>Severity</th><th>Kind</th><th>Object</th><th>Message</th><th></th></tr>"
            f"{''.join(rows) or '<tr><td colspan=6 class=muted>No open alerts.</td></tr>'}</table></div>")
    return layout(page, title="Alerts", body=body, active="alerts")


@post("/admin/alerts/{alert_id:str}/resolve", include_in_schema=False, status_code=200)
async def admin_resolve_alert(alert_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, alert_id)
    if isinstance(action, Response):
        return action
    page, _ = action
    try:
        await svc.alerts.resolve(merchant_id=page.merchant.id, alert_id=alert_id)
        query = "done=alert_resolved"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/alerts?merchant={page.merchant.id}&{query}", status_code=303)


ADMIN_HANDLERS = [admin_login_page, admin_login, admin_logout, admin_overview, admin_live, admin_orders, admin_order,
                  admin_refund_review, admin_refund, admin_products, admin_adjust_stock, admin_alerts, admin_resolve_alert,
                  *FINANCE_HANDLERS]
