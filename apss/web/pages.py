"""HTML pages reached through unguessable links: the sandbox payer page and the checkout page.

Plain server-rendered HTML with inline CSS: no request leaves for any other host."""

from __future__ import annotations

import html

from litestar import Request, Response, get, post
from litestar.response import Redirect

from apss.api.common import Services
from apss.domain.money import format_amount
from apss.errors import ApssError, NotFound

__all__ = ["checkout_page", "sandbox_pay_page", "sandbox_pay_action"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;margin:0;color:#1d2330}
main{max-width:420px;margin:8vh auto;background:#fff;border-radius:12px;padding:28px;box-shadow:0 2px 12px #0001}
h1{font-size:1.2rem;margin:0 0 4px}.muted{color:#6b7280;font-size:.9rem}.amount{font-size:2rem;margin:18px 0}
table{width:100%;border-collapse:collapse;margin:12px 0}td{padding:6px 0;border-bottom:1px solid #eee}
td:last-child{text-align:right}.row{display:flex;gap:12px;margin-top:20px}
button,.button{flex:1;padding:12px;border:0;border-radius:8px;font-size:1rem;cursor:pointer;text-align:center;text-decoration:none}
.pay{background:#2563eb;color:#fff}.fail{background:#e5e7eb;color:#111}.badge{display:inline-block;padding:2px 8px;border-radius:99px;background:#eef;font-size:.8rem}
"""


def _page(title: str, body: str, status: int = 200) -> Response:
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
                f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
                f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>")
    return Response(content=document, status_code=status, media_type="text/html")


def _not_found() -> Response:
    return _page("Not found", "<h1>This link is not valid</h1><p class=muted>It may have expired.</p>", 404)


@get("/sandbox/pay/{provider_ref:str}", include_in_schema=False)
async def sandbox_pay_page(provider_ref: str, svc: Services) -> Response:
    payment = await svc.sandbox.payer_page_data(provider_ref)
    if payment is None:
        return _not_found()
    ref = html.escape(provider_ref)
    body = (f"<span class=badge>APSS Sandbox · test mode</span><h1>{html.escape(payment['merchant_name'])}</h1>"
            f"<p class=muted>Order {html.escape(payment['order_id'])}</p>"
            f"<div class=amount>{html.escape(format_amount(payment['amount'], payment['currency']))}</div>"
            f"<p class=muted>No real money moves. Pay sends the sandbox's signed payment.succeeded callback; "
            f"Fail sends payment.failed.</p>"
            f"<div class=row><form method=post action='/sandbox/pay/{ref}/pay' style='flex:1;display:flex'>"
            f"<button class=pay type=submit>Pay</button></form>"
            f"<form method=post action='/sandbox/pay/{ref}/fail' style='flex:1;display:flex'>"
            f"<button class=fail type=submit>Fail</button></form></div>")
    return _page("Sandbox payment", body)


@post("/sandbox/pay/{provider_ref:str}/{action:str}", include_in_schema=False, status_code=200)
async def sandbox_pay_action(provider_ref: str, action: str, request: Request, svc: Services) -> Response:
    if action not in ("pay", "fail"):
        return _not_found()
    payment = await svc.sandbox.payer_page_data(provider_ref)
    if payment is None:
        return _not_found()
    try:
        await svc.sandbox.complete_by_ref(provider_ref=provider_ref, pay=action == "pay")
    except ApssError as error:
        return _page("Sandbox payment", f"<h1>Nothing to do</h1><p class=muted>{html.escape(error.message)}</p>", 409)
    back = payment["return_url"]
    link = f"<div class=row><a class='button pay' href='{html.escape(back)}'>Back to the store</a></div>" if back else ""
    verb = "paid" if action == "pay" else "declined"
    return _page("Sandbox payment", f"<h1>Payment {verb}</h1><p class=muted>The merchant is notified by callback "
                                    f"within a second.</p>{link}")


@get("/checkout/{token:str}", include_in_schema=False)
async def checkout_page(token: str, svc: Services) -> Response:
    try:
        order = await svc.checkout.by_checkout_token(token)
    except NotFound:
        return _not_found()
    rows = "".join(f"<tr><td>{html.escape(i.sku)} × {i.quantity}</td><td>{html.escape(format_amount(i.amount, order.currency))}</td></tr>"
                   for i in order.items)
    action = ""
    if order.status == "pending" and order.payment and order.payment.next_action and order.payment.next_action.url:
        action = (f"<div class=row><a class='button pay' href='{html.escape(order.payment.next_action.url)}'>"
                  f"Pay with {html.escape(order.channel)}</a></div>"
                  f"<p class=muted>Reserved until {html.escape(order.expires_at)}</p>")
    body = (f"<h1>Order {html.escape(order.id)}</h1><span class=badge>{html.escape(order.status)}</span>"
            f"<table>{rows}</table><div class=amount>{html.escape(format_amount(order.amount, order.currency))}</div>{action}")
    return _page("Checkout", body)

