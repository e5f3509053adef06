"""Pages a payer reaches through unguessable links: the hosted checkout page (`checkout_url`), its
status endpoint, and the sandbox payer page. English and Chinese, phone-sized, server-rendered;
nothing is fetched from any other host (see _layout's CSP).

Embedded (README "Embedding the checkout"): both pages may be framed by the merchant's
`allowed_origins` (CSP frame-ancestors) and by nothing else. Opened with `?embed=<origin>` of one
of those sites (apss.js adds it), they carry it along, show a close button and post `paid`,
`failed` and `closed` to the parent window with that origin as the target, so no other page can
receive them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import quote

import segno
from litestar import Request, Response, get, post
from litestar.response import Redirect

from apss.clock import parse_rfc3339
from apss.domain.money import format_amount
from apss.errors import ApssError, NotFound, PaymentClosed
from apss.services.container import Services
from apss.services.merchants.keys import Merchant
from apss.services.orders.queries import CheckoutContext
from apss.services.views import OrderView
from apss.web._i18n import choose_language, money, text
from apss.web._layout import Document, esc, html_response

__all__ = ["checkout_page", "checkout_status", "sandbox_pay_action", "sandbox_pay_page"]

_LINES_SHOWN_MAX = 50
_POLL_INTERVAL_MS = 1500
_BACK_RE = re.compile(r"^/checkout/[A-Za-z0-9_\-]{8,64}$")
_PAID = ("paid", "delivering", "fulfilled", "in_review")  # in review: paid; the goods wait for the merchant
_CHANNEL_LABELS = {"sandbox": "Sandbox", "stripe": "Card · Stripe", "paypal": "PayPal", "alipay": "Alipay 支付宝",
                   "wechatpay": "WeChat Pay 微信支付"}

_CSS = """
main{max-width:440px;margin:6vh auto;background:#fff;border-radius:14px;padding:24px;box-shadow:0 2px 12px #0001}
@media (max-width:480px){main{margin:0;border-radius:0;min-height:100vh;padding:18px}}
h1{font-size:1.25rem;margin:6px 0 2px}.top{display:flex;justify-content:space-between;align-items:center;gap:8px}
.total{display:flex;justify-content:space-between;align-items:baseline;margin:8px 0 16px}.amount{font-size:1.9rem;font-weight:600}
td:last-child{text-align:right;white-space:nowrap}.actions{display:flex;flex-direction:column;gap:10px;margin-top:16px}
.actions form{display:flex}.actions form button,.actions .button{flex:1;width:100%}
.channels{display:flex;flex-wrap:wrap;gap:6px;padding:0;margin:6px 0 0;list-style:none}
.channels li{border:1px solid #d1d5db;border-radius:8px;padding:6px 10px;font-size:.9rem}.channels li.current{border-color:#2563eb;color:#2563eb}
.qr{display:flex;justify-content:center;margin:12px 0}.qr svg{width:220px;height:220px}
.countdown{font-variant-numeric:tabular-nums;font-weight:600}.state{font-size:1.2rem;margin:14px 0 4px}
.hidden{display:none}
"""


def _lang(request: Request) -> str:
    return choose_language(query=request.query_params.get("lang"), accept_language=request.headers.get("accept-language"))


def _page(lang: str, title: str, body: str, *, status: int = 200, script: str = "",
          frame_ancestors: tuple[str, ...] | None = None) -> Response:
    return html_response(Document(title=title, body=f"<main>{body}</main>", lang=lang, css=_CSS, script=script, status=status,
                                  frame_ancestors=frame_ancestors))


def _embed_origin(svc: Services, merchant_id: str, value: str | None) -> str | None:
    """The parent page's origin when it is one of the merchant's sites, else None (not embedded)."""
    return value if value is not None and value in svc.merchants.allowed_origins(merchant_id) else None


def _embed_query(embed: str | None) -> str:
    return f"&embed={quote(embed, safe='')}" if embed else ""


# Posts {source, event, order_id, status} to the parent, only to the listed origin the page was
# opened for: a page of any other origin never receives it. The values come first, as JSON.
_EMBED_SCRIPT = """
if(window.parent!==window){var status=document.body.dataset.status||'';
var post=function(event){window.parent.postMessage({source:'apss',event:event,order_id:embed.order,status:status},embed.target);};
if(embed.paid.indexOf(status)>=0)post('paid');else if(embed.ended.indexOf(status)>=0)post('failed');
var close=document.getElementById('close-checkout');if(close)close.addEventListener('click',function(){post('closed');});}})();
"""


def _embed_script(embed: str, order_id: str) -> str:
    values = {"target": embed, "order": order_id, "paid": list(_PAID), "ended": ["failed", "expired", "canceled"]}
    literal = json.dumps(values).replace("<", "\\u003c")  # JSON inside a script: no value can close the tag
    return f"(function(){{var embed={literal};" + _EMBED_SCRIPT


def _close_button(lang: str) -> str:
    return f"<button id=close-checkout type=button aria-label='{text(lang, 'close')}'>{text(lang, 'close')}</button>"


def _not_found(lang: str) -> Response:
    return _page(lang, text(lang, "not_found"), f"<h1>{text(lang, 'not_found')}</h1>"
                                                f"<p class=muted>{text(lang, 'not_found_note')}</p>", status=404)


def _closed(lang: str) -> Response:
    """A sandbox payment its provider closed (the order ended unpaid): 410, nothing to pay."""
    return _page(lang, text(lang, "sandbox_closed"), f"<h1>{text(lang, 'sandbox_closed')}</h1>"
                                                     f"<p class=muted>{text(lang, 'sandbox_closed_note')}</p>", status=410)


def _language_switch(lang: str, embed: str | None = None) -> str:
    other = "en" if lang == "zh" else "zh"
    return f"<a class=muted href='?lang={other}{esc(_embed_query(embed))}' hreflang={other}>{text(lang, 'language')}</a>"


class _Context:
    """What the checkout page needs beyond the order view: whose order it is, where to go back."""

    def __init__(self, merchant: Merchant | None, return_url: str | None, sandbox_ref: str | None,
                 embed: str | None) -> None:
        self.merchant, self.return_url, self.sandbox_ref, self.embed = merchant, return_url, sandbox_ref, embed


def _context(svc: Services, checkout: CheckoutContext, embed: str | None) -> _Context:
    action = checkout.order.payment.next_action if checkout.order.payment else None
    sandbox_ref = None
    if action is not None and action.url and action.url.startswith(f"{svc.config.public_url}/sandbox/pay/"):
        sandbox_ref = action.url.rsplit("/", 1)[1]
    return _Context(svc.merchants.by_id(checkout.merchant_id), checkout.return_url, sandbox_ref,
                    _embed_origin(svc, checkout.merchant_id, embed))


async def _item_rows(svc: Services, order: OrderView, merchant: Merchant | None, lang: str) -> str:
    rows = []
    for item in order.items[:_LINES_SHOWN_MAX]:
        name = item.sku
        if merchant is not None:
            try:
                name = (await svc.catalog.get(merchant_id=merchant.id, product_id=item.product_id)).name
            except NotFound:
                pass
        rows.append(f"<tr><td>{esc(name)} <span class=muted>{text(lang, 'qty')} {item.quantity}</span></td>"
                    f"<td>{esc(money(item.amount, order.currency, lang))}</td></tr>")
    return "".join(rows)


def _channels(svc: Services, order: OrderView, merchant: Merchant | None) -> list[str]:
    if merchant is None:
        return [order.channel]
    try:
        names = [c.name for c in svc.channels.candidates(merchant, currency=order.currency, country=None, requested=None)]
    except ApssError:
        names = []
    return names if order.channel in names else [order.channel, *names]


def _next_step(order: OrderView, ctx: _Context, token: str, lang: str) -> str:
    action = order.payment.next_action if order.payment else None
    if action is None:
        return f"<p class=muted id=waiting>{text(lang, 'waiting')}</p>"
    if action.type == "redirect" and action.url:
        label = text(lang, "continue") if ctx.sandbox_ref else text(lang, "pay_with", channel=_CHANNEL_LABELS.get(order.channel, order.channel))
        url = f"{action.url}?back=/checkout/{token}&lang={lang}{_embed_query(ctx.embed)}" if ctx.sandbox_ref else action.url
        # A provider's own page will not be framed: embedded, it opens in the whole window.
        target = " target=_top" if ctx.embed and not ctx.sandbox_ref else ""
        return f"<div class=actions><a id=pay class='button primary' href='{esc(url)}'{target}>{esc(label)}</a></div>"
    if action.type == "qr_code" and action.data:
        svg = segno.make(action.data, error="m").svg_inline(scale=4, dark="#111", light="#fff", title=text(lang, "scan"))
        return f"<p class=muted>{text(lang, 'scan')}</p><div class=qr data-qr='{esc(action.data)}'>{svg}</div>"
    return f"<p class=muted>{text(lang, 'in_app')}</p>"


def _state_section(order: OrderView, ctx: _Context, token: str, lang: str, remaining_s: int) -> str:
    target = " target=_top" if ctx.embed else ""
    back = (f"<div class=actions><a id=back class='button primary' href='{esc(ctx.return_url)}'{target}>"
            f"{text(lang, 'back')}</a></div>" if ctx.return_url else "")
    if order.status in _PAID:
        note = text(lang, "fulfilled_note" if order.status == "fulfilled" else "paid_note")
        return f"<p class=state id=success><span class='badge ok'>✓</span> {text(lang, 'paid')}</p><p class=muted>{note}</p>{back}"
    if order.status == "pending":
        minutes, seconds = divmod(max(remaining_s, 0), 60)
        return (f"<p class=muted>{text(lang, 'expires_in')} <span class=countdown id=countdown data-remaining-s={remaining_s}>"
                f"{minutes:02d}:{seconds:02d}</span></p>{_next_step(order, ctx, token, lang)}")
    key = {"failed": "failed", "expired": "expired", "canceled": "canceled"}.get(order.status, "refunded")
    note = f"<p class=muted>{text(lang, 'failed_note' if key == 'failed' else 'expired_note')}</p>" if key != "refunded" else ""
    return f"<p class=state id=ended><span class='badge bad'>{esc(order.status)}</span> {text(lang, key)}</p>{note}{back}"


_CHECKOUT_SCRIPT = """
(function(){var c=document.getElementById('countdown'),left=c?parseInt(c.dataset.remainingS,10):0;
function tick(){if(!c)return;left=Math.max(left-1,0);var m=Math.floor(left/60),s=left%60;
c.textContent=(m<10?'0':'')+m+':'+(s<10?'0':'')+s;}
if(c)setInterval(tick,1000);
var initial=document.body.dataset.status;if(initial!=='pending')return;
function poll(){fetch(location.pathname+'/status',{cache:'no-store'}).then(function(r){return r.ok?r.json():null})
.then(function(s){if(s&&s.status!==initial){location.reload();}else{setTimeout(poll,POLL_MS);}})
.catch(function(){setTimeout(poll,2*POLL_MS);});}
setTimeout(poll,POLL_MS);})();
""".replace("POLL_MS", str(_POLL_INTERVAL_MS))


@get("/checkout/{token:str}", include_in_schema=False)
async def checkout_page(token: str, request: Request, svc: Services) -> Response:
    lang = _lang(request)
    try:
        checkout = await svc.orders.by_checkout_token(token)
    except NotFound:
        return _not_found(lang)
    order, ctx = checkout.order, _context(svc, checkout, request.query_params.get("embed"))
    remaining_s = (parse_rfc3339(order.expires_at) - svc.clock.now_ms()) // 1000
    channels = "".join(f"<li class='{'current' if name == order.channel else ''}' data-channel='{esc(name)}'>"
                       f"{esc(_CHANNEL_LABELS.get(name, name))}</li>" for name in _channels(svc, order, ctx.merchant))
    merchant_name = esc(ctx.merchant.name) if ctx.merchant else ""
    close = _close_button(lang) if ctx.embed else ""
    body = (f"<div data-status='{esc(order.status)}' id=checkout><div class=top><span class=muted>{merchant_name}</span>"
            f"{_language_switch(lang, ctx.embed)}{close}</div><h1>{text(lang, 'checkout')}</h1>"
            f"<p class=muted>{text(lang, 'order')} <code>{esc(order.id)}</code></p>"
            f"<table>{await _item_rows(svc, order, ctx.merchant, lang)}</table>"
            f"<div class=total><span>{text(lang, 'total')}</span><span class=amount id=total data-amount-minor={order.amount} "
            f"data-currency={esc(order.currency)}>{esc(money(order.amount, order.currency, lang))}</span></div>"
            f"<p class=muted>{text(lang, 'channels')}</p><ul class=channels>{channels}</ul>"
            f"{_state_section(order, ctx, token, lang, remaining_s)}</div>")
    script = "document.body.dataset.status=document.getElementById('checkout').dataset.status;" + _CHECKOUT_SCRIPT
    if ctx.embed:
        script += _embed_script(ctx.embed, order.id)
    return _page(lang, f"{text(lang, 'checkout')} · {order.id}", body, script=script,
                 frame_ancestors=svc.merchants.allowed_origins(checkout.merchant_id))


@get("/checkout/{token:str}/status", include_in_schema=False)
async def checkout_status(token: str, svc: Services) -> Response:
    """What the checkout page polls: the order's and its payment's status, nothing more."""
    try:
        order = (await svc.orders.by_checkout_token(token)).order
    except NotFound:
        return Response(content={"error": {"type": "invalid_request_error", "code": "not_found", "message": "No such checkout."}},
                        status_code=404, headers={"Cache-Control": "no-store"})
    return Response(content={"status": order.status, "payment_status": order.payment.status if order.payment else None,
                             "expires_at": order.expires_at}, headers={"Cache-Control": "no-store"})


@get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    """Where a person who opened the server's address goes next: the dashboard and the API docs."""
    lang = _lang(request)
    links = [("/admin", "Admin dashboard", "orders, products, refunds, settlements, reports"),
             ("/schema/swagger", "API reference", "every endpoint, tried from the browser"),
             ("/schema/openapi.json", "OpenAPI document", "for client generators"),
             ("/healthz", "Health", "200 when the database takes writes")]
    items = "".join(f"<li><a href='{href}'>{esc(name)}</a> <span class=muted>{esc(note)}</span></li>"
                    for href, name, note in links)
    return _page(lang, "APSS", f"<h1>APSS</h1><p class=muted>Automated Payment &amp; Settlement System</p><ul>{items}</ul>")


@get("/sandbox/pay/{provider_ref:str}", include_in_schema=False)
async def sandbox_pay_page(provider_ref: str, request: Request, svc: Services) -> Response:
    lang = _lang(request)
    payment = await svc.sandbox.payer_page_data(provider_ref)
    if payment is None:
        return _not_found(lang)
    if await svc.sandbox.is_closed(payment["id"]):
        return _closed(lang)
    back = request.query_params.get("back", "")
    ancestors = svc.merchants.allowed_origins(payment["merchant_id"])
    embed = _embed_origin(svc, payment["merchant_id"], request.query_params.get("embed"))
    state = await svc.sandbox.state_of(payment["id"])
    if state is not None:  # the payer acted already: its outcome and a way back, no buttons
        return _outcome(lang, paid=state[0] == "succeeded", return_url=payment["return_url"], ancestors=ancestors,
                        embed=embed, order_id=payment["order_id"])
    hidden = (f"<input type=hidden name=lang value={lang}>"
              + (f"<input type=hidden name=back value='{esc(back)}'>" if _BACK_RE.match(back) else "")
              + (f"<input type=hidden name=embed value='{esc(embed)}'>" if embed else ""))
    ref = esc(provider_ref)
    close = _close_button(lang) if embed else ""
    if request.query_params.get("step") == "3ds" and await svc.sandbox.needs_challenge(payment):
        return _three_ds_step(lang, ref=ref, hidden=hidden, payment=payment, embed=embed, ancestors=ancestors)
    close = _close_button(lang) if embed else ""
    body = (f"<div class=top><span class=badge>{text(lang, 'sandbox')}</span>{_language_switch(lang, embed)}{close}</div>"
            f"<h1>{esc(payment['merchant_name'])}</h1><p class=muted>{text(lang, 'order')} <code>{esc(payment['order_id'])}</code></p>"
            f"<div class=total><span>{text(lang, 'total')}</span><span class=amount>{esc(money(payment['amount'], payment['currency'], lang))}"
            f"</span></div><p class=muted>{esc(format_amount(payment['amount'], payment['currency']))}</p>"
            f"<p class=muted>{text(lang, 'sandbox_note')}</p><div class=actions>"
            f"<form method=post action='/sandbox/pay/{ref}/pay'>{hidden}<button id=sandbox-pay class=primary type=submit>"
            f"{text(lang, 'pay')}</button></form>"
            f"<form method=post action='/sandbox/pay/{ref}/fail'>{hidden}<button id=sandbox-fail type=submit>"
            f"{text(lang, 'fail')}</button></form></div>")
    return _page(lang, text(lang, "sandbox"), body, script=_embed_script(embed, payment["order_id"]) if embed else "",
                 frame_ancestors=ancestors)


@post("/sandbox/pay/{provider_ref:str}/{action:str}", include_in_schema=False, status_code=200)
async def sandbox_pay_action(provider_ref: str, action: str, request: Request, svc: Services) -> Response:
    form = await request.form()
    lang = choose_language(query=form.get("lang"), accept_language=request.headers.get("accept-language"))
    if action not in ("pay", "fail", "3ds_pass", "3ds_fail"):
        return _not_found(lang)
    payment = await svc.sandbox.payer_page_data(provider_ref)
    if payment is None:
        return _not_found(lang)
    back = form.get("back") or ""
    embed = _embed_query(_embed_origin(svc, payment["merchant_id"], form.get("embed")))
    if action == "pay" and await svc.sandbox.needs_challenge(payment):  # a risk rule asked for 3-D Secure
        extra = f"&back={quote(back, safe='/')}" if _BACK_RE.match(back) else ""
        return Redirect(f"/sandbox/pay/{quote(provider_ref, safe='')}?step=3ds&lang={lang}{extra}{embed}", status_code=303)
    challenge = {"3ds_pass": "pass", "3ds_fail": "fail"}.get(action)
    try:
        await svc.sandbox.complete_by_ref(provider_ref=provider_ref, pay=action != "fail", challenge=challenge)
    except PaymentClosed:
        return _closed(lang)
    except ApssError as error:
        return _page(lang, text(lang, "sandbox"), f"<h1>{text(lang, 'nothing')}</h1><p class=muted>{esc(error.message)}</p>", status=409)
    if _BACK_RE.match(back):  # only our own checkout page: never an open redirect
        return Redirect(f"{back}?lang={lang}{embed}", status_code=303)
    # Post, redirect, get: the outcome page is a GET, so a reload never posts again.
    return Redirect(f"/sandbox/pay/{quote(provider_ref, safe='')}?lang={lang}{embed}", status_code=303)


def _three_ds_step(lang: str, *, ref: str, hidden: str, payment: Mapping, embed: str | None,
                   ancestors: tuple[str, ...]) -> Response:
    """The sandbox's stand-in for the card issuer's 3-D Secure challenge."""
    close = _close_button(lang) if embed else ""
    body = (f"<div class=top><span class=badge>{text(lang, 'sandbox')}</span>{_language_switch(lang, embed)}{close}</div>"
            f"<h1 id=sandbox-3ds>{text(lang, 'three_ds_title')}</h1>"
            f"<div class=total><span>{text(lang, 'total')}</span><span class=amount>"
            f"{esc(money(payment['amount'], payment['currency'], lang))}</span></div>"
            f"<p class=muted>{text(lang, 'three_ds_note')}</p><div class=actions>"
            f"<form method=post action='/sandbox/pay/{ref}/3ds_pass'>{hidden}<button id=sandbox-3ds-pass class=primary"
            f" type=submit>{text(lang, 'three_ds_pass')}</button></form>"
            f"<form method=post action='/sandbox/pay/{ref}/3ds_fail'>{hidden}<button id=sandbox-3ds-fail type=submit>"
            f"{text(lang, 'three_ds_fail')}</button></form></div>")
    return _page(lang, text(lang, "three_ds_title"), body,
                 script=_embed_script(embed, payment["order_id"]) if embed else "", frame_ancestors=ancestors)


def _outcome(lang: str, *, paid: bool, return_url: str | None, ancestors: tuple[str, ...], embed: str | None,
             order_id: str) -> Response:
    target = " target=_top" if embed else ""
    link = (f"<div class=actions><a class='button primary' href='{esc(return_url)}'{target}>{text(lang, 'back')}</a></div>"
            if return_url else "")
    close = f"<div class=actions>{_close_button(lang)}</div>" if embed else ""
    title = text(lang, "sandbox_paid" if paid else "sandbox_declined")
    # The payer's action, not yet the order's outcome (that comes with the callback): only `closed`.
    return _page(lang, title, f"<h1 id=sandbox-outcome>{title}</h1><p class=muted>{text(lang, 'sandbox_done_note')}</p>"
                              f"{link}{close}", script=_embed_script(embed, order_id) if embed else "",
                 frame_ancestors=ancestors)
