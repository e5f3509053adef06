"""The dashboard's money and operations pages: settlement batches (mark paid, CSV), reports (the
stored daily and weekly ones, each viewable and as CSV, and the live summary of any period),
reconciliation runs (statement upload, matches and discrepancies) and webhook deliveries (retry,
replay since a time). Every figure comes from the services the JSON API uses."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.response import Redirect

from apss.clock import format_rfc3339, parse_rfc3339
from apss.errors import ApssError, NotFound
from apss.services.container import Services
from apss.services.money.reconciliation import STATUSES as ITEM_STATUSES
from apss.services.money.reports import report_csv
from apss.services.notify.merchant_webhooks import WebhookReplay
from apss.web._admin_kit import (
    ID_RE,
    Page,
    admin_action,
    admin_page,
    badge,
    csrf_input,
    layout,
    notice,
    opt,
)
from apss.web._layout import esc

__all__ = ["FINANCE_HANDLERS"]

_PAGE = 50
_DAY_MS = 86_400_000
_STATEMENT_BYTES_MAX = 32 * 1024 * 1024  # as the API's statement upload
_PAYOUT_REFERENCE_MAX = 200
_SETTLEMENT_STATUSES = ("pending", "paid", "carried")
_DELIVERY_STATUSES = ("pending", "succeeded", "failed")
_DISCREPANCIES = tuple(s for s in ITEM_STATUSES if s != "matched")


def _csv(body: bytes | str, filename: str) -> Response:
    return Response(content=body, status_code=200, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


def _after(request: Request) -> str | None:
    after = request.query_params.get("after") or ""
    return after if ID_RE.match(after) else None


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    return value if value in allowed else None


def _status_filter(page: Page, path: str, name: str, allowed: tuple[str, ...], chosen: str | None) -> str:
    options = "".join(f"<option{' selected' if s == chosen else ''}>{s}</option>" for s in allowed)
    return (f"<form class=filters method=get action='{path}'><input type=hidden name=merchant value='{esc(page.merchant.id)}'>"
            f"<label>Status<br><select name={name}><option value=''>any</option>{options}</select></label>"
            f"<button type=submit>Filter</button></form>")


# -- settlements -------------------------------------------------------------------------------
def _settlement_actions(page: Page, s) -> str:
    csv = f"<a class='button small' href='{page.url(f'/admin/settlements/{s.id}/csv')}' data-csv>CSV</a>"
    if s.status != "pending":
        return csv
    return (f"<form method=post action='{page.url(f'/admin/settlements/{s.id}/paid')}'>{csrf_input(page)}"
            f"<input name=payout_reference required maxlength={_PAYOUT_REFERENCE_MAX} placeholder='payout ref' "
            f"aria-label='Payout reference of {esc(s.id)}'><button type=submit class='small primary' data-mark-paid>Mark paid</button>"
            f"</form> {csv}")


def _settlement_row(page: Page, s) -> str:
    cash = lambda amount: page.cash(amount, s.currency)  # noqa: E731
    payout = (f"{badge(s.status)}<br><span class=muted>{opt(s.payout_reference)} · {opt(s.paid_at)}</span>" if s.status == "paid"
              else f"{badge(s.status)}" + (f"<br><span class=muted>into {opt(s.carried_into)}</span>" if s.carried_into else ""))
    return (f"<tr data-settlement='{esc(s.id)}'><td><a class=ids href='{page.url(f'/admin/settlements/{s.id}')}'>{esc(s.id)}</a>"
            f"<br>{esc(s.currency)}</td><td class=muted>{esc(s.period_start[:16])}<br>→ {esc(s.period_end[:16])}</td>"
            f"<td class=num>{cash(s.gross)}</td><td class=num>{cash(s.refunds + s.chargebacks)}</td><td class=num>{cash(s.fees)}</td>"
            f"<td class=num>{cash(s.commission)}</td><td class=num>{cash(s.partner_shares)}</td>"
            f"<td class=num>{cash(s.reserve_held)}<br><span class=muted>released {cash(s.reserve_released)}</span></td>"
            f"<td class=num data-net-payable>{cash(s.net_payable)}</td><td>{payout}</td>"
            f"<td class=actions>{_settlement_actions(page, s)}</td></tr>")


@get("/admin/settlements", include_in_schema=False)
async def admin_settlements(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "settlements")
    if isinstance(page, Response):
        return page
    status = _choice(request, "status", _SETTLEMENT_STATUSES)
    batches, more = await svc.settlements.list(merchant_id=page.merchant.id, after_id=_after(request), limit=_PAGE, status=status)
    rows = "".join(_settlement_row(page, s) for s in batches) or "<tr><td colspan=11 class=muted>No settlement batches yet.</td></tr>"
    more_link = f"<a href='{page.url('/admin/settlements', after=batches[-1].id, status=status or '')}'>Older →</a>" if more else ""
    body = (f"{notice(request)}<div class=card><h1>Settlements</h1>"
            f"{_status_filter(page, '/admin/settlements', 'status', _SETTLEMENT_STATUSES, status)}"
            f"<p class=muted>Net payable = gross − refunds and chargebacks − commission − partner shares − reserve held "
            f"+ reserve released + carried in (provider fees are the platform's, covered by its commission). Mark a pending batch paid "
            f"once the payout is sent.</p>"
            f"<table id=settlements class=compact><tr><th>Batch</th><th>Period</th><th class=num>Gross</th>"
            f"<th class=num>Refunds</th><th class=num>Fees</th><th class=num>Commission</th><th class=num>Partner shares</th>"
            f"<th class=num>Reserve held</th><th class=num>Net payable</th><th>Payout</th><th></th></tr>{rows}</table>"
            f"{more_link}</div>")
    return layout(page, title="Settlements", body=body, active="settlements")


@get("/admin/settlements/{settlement_id:str}", include_in_schema=False)
async def admin_settlement(settlement_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "settlements")
    if isinstance(page, Response):
        return page
    try:
        batch = await svc.settlements.get(merchant_id=page.merchant.id, settlement_id=settlement_id)
    except NotFound:
        return layout(page, title="Not found", active="settlements", status=404,
                      body=f"<div class=card>No settlement {esc(settlement_id)} for this merchant.</div>")
    cash = lambda amount: page.cash(amount, batch.currency)  # noqa: E731
    lines = "".join(f"<tr><td>{line.line}</td><td>{esc(line.kind)}</td><td class=ids>{esc(line.reference)}</td>"
                    f"<td class=ids>{opt(line.order_id)}</td><td>{opt(line.channel)}</td><td class=num>{cash(line.amount)}</td>"
                    f"<td class=num>{cash(line.fee)}</td><td class=num>{cash(line.commission)}</td>"
                    f"<td class=num>{cash(line.partner_shares)}</td><td class=num>{cash(line.net)}</td><td>{esc(line.occurred_at)}</td></tr>"
                    for line in batch.lines) or "<tr><td colspan=11 class=muted>No lines.</td></tr>"
    body = (f"{notice(request)}<div class='card scroll'><h1>Settlement <span class=ids>{esc(batch.id)}</span> {badge(batch.status)}</h1>"
            f"<table id=settlements class=compact><tr><th>Batch</th><th>Period</th><th class=num>Gross</th><th class=num>Refunds</th>"
            f"<th class=num>Fees</th><th class=num>Commission</th><th class=num>Partner shares</th><th class=num>Reserve held</th>"
            f"<th class=num>Net payable</th><th>Payout</th><th></th></tr>{_settlement_row(page, batch)}</table>"
            f"<p class=muted>Cut-off {esc(batch.cutoff_at)} · reserve released at {opt(batch.reserve_release_at)} · carried in "
            f"{cash(batch.carried_in)}</p><h3>Lines</h3><table id=lines class=compact><tr><th>#</th><th>Kind</th><th>Reference</th>"
            f"<th>Order</th><th>Channel</th><th class=num>Amount</th><th class=num>Fee</th><th class=num>Commission</th>"
            f"<th class=num>Partner shares</th><th class=num>Net</th><th>At</th></tr>{lines}</table></div>")
    return layout(page, title=f"Settlement {batch.id}", body=body, active="settlements")


@get("/admin/settlements/{settlement_id:str}/csv", include_in_schema=False)
async def admin_settlement_csv(settlement_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "settlements")
    if isinstance(page, Response):
        return page
    try:
        body = await svc.settlements.csv(merchant_id=page.merchant.id, settlement_id=settlement_id)
    except NotFound:
        return Redirect(f"/admin/settlements?merchant={page.merchant.id}&error=settlement_not_found", status_code=303)
    return _csv(body, f"{settlement_id}.csv")


@post("/admin/settlements/{settlement_id:str}/paid", include_in_schema=False, status_code=200)
async def admin_settlement_paid(settlement_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, settlement_id)
    if isinstance(action, Response):
        return action
    page, form = action
    reference = str(form.get("payout_reference") or "").strip()
    back = f"/admin/settlements?merchant={page.merchant.id}"
    if not 1 <= len(reference) <= _PAYOUT_REFERENCE_MAX:
        return Redirect(f"{back}&error=payout_reference_required", status_code=303)
    try:
        await svc.settlements.get(merchant_id=page.merchant.id, settlement_id=settlement_id)  # another merchant's: 404
        await svc.settlements.mark_paid(settlement_id=settlement_id, payout_reference=reference)
        query = "done=settlement_marked_paid"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"{back}&{query}", status_code=303)


# -- reports -----------------------------------------------------------------------------------
_SUMMARY_HEAD = ("<tr><th>Currency</th><th class=num>Gross</th><th class=num>Refunds</th><th class=num>Chargebacks</th>"
                 "<th class=num>Net of refunds</th><th class=num>Fees</th><th class=num>Commission</th>"
                 "<th class=num>Partner shares</th><th class=num>Net to merchant</th><th class=num>Discounts</th>"
                 "<th class=num>Payments</th><th class=num>Refund count</th></tr>")


def _summary_rows(page: Page, lines) -> str:
    rows = []
    for s in lines:
        cash = lambda amount, c=s.currency: page.cash(amount, c)  # noqa: E731
        rows.append(f"<tr data-currency='{esc(s.currency)}'><td>{esc(s.currency)}</td><td class=num>{cash(s.gross)}</td>"
                    f"<td class=num>{cash(s.refunds)}</td><td class=num>{cash(s.chargebacks)}</td>"
                    f"<td class=num data-net-of-refunds>{cash(s.gross - s.refunds - s.chargebacks)}</td><td class=num>{cash(s.fees)}</td>"
                    f"<td class=num>{cash(s.commission)}</td><td class=num>{cash(s.partner_shares)}</td>"
                    f"<td class=num>{cash(s.net)}</td><td class=num>{cash(s.discounts)}</td><td class=num>{s.payments}</td>"
                    f"<td class=num>{s.refund_count}</td></tr>")
    return "".join(rows) or "<tr><td colspan=12 class=muted>No money moved in this period.</td></tr>"


_NET_NOTE = ("<p class=muted>Net of refunds = gross − refunds − chargebacks. Net to merchant also takes off commission and "
             "partner shares (provider fees are the platform's cost, covered by its commission).</p>")


def _day_ms(text: str) -> int | None:
    """A `YYYY-MM-DD` of a date input as the UTC midnight starting it; None if it is not one."""
    if len(text) != 10:
        return None
    try:
        return parse_rfc3339(f"{text}T00:00:00Z")
    except ValueError:
        return None


async def _live_summary(page: Page, svc: Services, request: Request) -> str:
    now_ms = svc.clock.now_ms()
    today = format_rfc3339(now_ms - now_ms % _DAY_MS)[:10]
    given_from, given_to = request.query_params.get("from") or "", request.query_params.get("to") or ""
    start, end = _day_ms(given_from or today), _day_ms(given_to or today)
    form = (f"<form class=filters method=get action='/admin/reports' id=summary-form>"
            f"<input type=hidden name=merchant value='{esc(page.merchant.id)}'>"
            f"<label>From (UTC day)<br><input type=date name=from id=summary-from value='{esc(given_from or today)}'></label>"
            f"<label>To (UTC day, included)<br><input type=date name=to id=summary-to value='{esc(given_to or today)}'></label>"
            f"<button type=submit id=summary-show>Show</button></form>")
    if start is None or end is None or end < start:
        result = "<p class='notice error' id=summary-error>Choose a from day on or before the to day.</p>"
    else:
        lines = await svc.reports.summary(merchant_id=page.merchant.id, from_ms=start, to_ms=end + _DAY_MS)
        result = (f"<p class=muted id=summary-period>{esc(format_rfc3339(start))} to {esc(format_rfc3339(end + _DAY_MS))} "
                  f"(live, from the ledger)</p><table id=summary class=compact>{_SUMMARY_HEAD}{_summary_rows(page, lines)}</table>")
    return f"<div class='card scroll'><h2>Live summary</h2>{form}{result}{_NET_NOTE}</div>"


def _report_row(page: Page, report) -> str:
    totals = "<br>".join(f"{esc(s.currency)}: {page.cash(s.gross, s.currency)} gross, "
                         f"{page.cash(s.gross - s.refunds - s.chargebacks, s.currency)} net of refunds"
                         for s in report.by_currency) or "<span class=muted>no money moved</span>"
    return (f"<tr data-report='{esc(report.id)}'><td>{esc(report.period)}</td><td>{esc(report.period_start[:10])}</td>"
            f"<td>{esc(report.period_end[:10])}</td><td>{totals}</td><td class=actions>"
            f"<a class='button small' href='{page.url(f'/admin/reports/{report.id}')}' data-view>View</a> "
            f"<a class='button small' href='{page.url(f'/admin/reports/{report.id}/csv')}' data-csv>CSV</a></td></tr>")


@get("/admin/reports", include_in_schema=False)
async def admin_reports(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "reports")
    if isinstance(page, Response):
        return page
    period = _choice(request, "period", ("daily", "weekly"))
    reports, more = await svc.reports.list(merchant_id=page.merchant.id, period=period, after_id=_after(request), limit=_PAGE)
    options = "".join(f"<option{' selected' if p == period else ''}>{p}</option>" for p in ("daily", "weekly"))
    picker = (f"<form class=filters method=get action='/admin/reports'><input type=hidden name=merchant value='{esc(page.merchant.id)}'>"
              f"<label>Period<br><select name=period><option value=''>any</option>{options}</select></label>"
              f"<button type=submit>Filter</button></form>")
    rows = "".join(_report_row(page, r) for r in reports) or "<tr><td colspan=5 class=muted>No stored reports yet.</td></tr>"
    more_link = f"<a href='{page.url('/admin/reports', after=reports[-1].id, period=period or '')}'>Older →</a>" if more else ""
    body = (f"{notice(request)}{await _live_summary(page, svc, request)}<div class='card scroll'><h2>Stored reports</h2>"
            f"<p class=muted>Made for every completed UTC day and week (from Monday).</p>{picker}"
            f"<table id=reports class=compact><tr><th>Period</th><th>Start</th><th>End</th><th>Totals</th><th></th></tr>{rows}"
            f"</table>{more_link}</div>")
    return layout(page, title="Reports", body=body, active="reports")


@get("/admin/reports/{report_id:str}", include_in_schema=False)
async def admin_report(report_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "reports")
    if isinstance(page, Response):
        return page
    try:
        report = await svc.reports.get(merchant_id=page.merchant.id, report_id=report_id)
    except NotFound:
        return layout(page, title="Not found", active="reports", status=404,
                      body=f"<div class=card>No report {esc(report_id)} for this merchant.</div>")
    channels = "".join(f"<tr><td>{esc(c.channel)}</td><td>{esc(c.currency)}</td><td class=num>{page.cash(c.gross, c.currency)}</td>"
                       f"<td class=num>{page.cash(c.refunds, c.currency)}</td><td class=num>{page.cash(c.chargebacks, c.currency)}</td>"
                       f"<td class=num>{page.cash(c.fees, c.currency)}</td><td class=num>{c.payments}</td><td class=num>{c.refund_count}</td></tr>"
                       for c in report.by_channel) or "<tr><td colspan=8 class=muted>None.</td></tr>"
    products = "".join(f"<tr><td>{esc(p.sku)}</td><td>{esc(p.currency)}</td><td class=num>{p.quantity}</td>"
                       f"<td class=num>{page.cash(p.gross, p.currency)}</td><td class=num>{p.orders}</td></tr>"
                       for p in report.by_product) or "<tr><td colspan=5 class=muted>None.</td></tr>"
    body = (f"<div class='card scroll'><h1>{esc(report.period.capitalize())} report {esc(report.period_start[:10])}</h1>"
            f"<p class=muted>{esc(report.period_start)} to {esc(report.period_end)} · made {esc(report.created_at)} · "
            f"<a href='{page.url(f'/admin/reports/{report.id}/csv')}' id=report-csv>Download CSV</a></p>"
            f"<h3>By currency</h3><table id=report-currency class=compact>{_SUMMARY_HEAD}{_summary_rows(page, report.by_currency)}"
            f"</table>{_NET_NOTE}<h3>By channel</h3><table id=report-channel class=compact><tr><th>Channel</th><th>Currency</th>"
            f"<th class=num>Gross</th><th class=num>Refunds</th><th class=num>Chargebacks</th><th class=num>Fees</th>"
            f"<th class=num>Payments</th><th class=num>Refund count</th></tr>{channels}</table><h3>By product</h3>"
            f"<table id=report-product class=compact><tr><th>SKU</th><th>Currency</th><th class=num>Units</th><th class=num>Gross</th>"
            f"<th class=num>Orders</th></tr>{products}</table></div>")
    return layout(page, title="Report", body=body, active="reports")


@get("/admin/reports/{report_id:str}/csv", include_in_schema=False)
async def admin_report_csv(report_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "reports")
    if isinstance(page, Response):
        return page
    try:
        report = await svc.reports.get(merchant_id=page.merchant.id, report_id=report_id)
    except NotFound:
        return Redirect(f"/admin/reports?merchant={page.merchant.id}&error=report_not_found", status_code=303)
    return _csv(report_csv(report), f"{report.id}.csv")


# -- reconciliation ----------------------------------------------------------------------------
def _statement_channels(svc: Services, page: Page) -> list[str]:
    return svc.reconciliation.statement_channels(page.merchant)


def _run_row(page: Page, run) -> str:
    counts = run.counts
    wrong = sum(counts.get(s, 0) for s in _DISCREPANCIES)
    detail = ", ".join(f"{s.replace('_', ' ')} {counts[s]}" for s in _DISCREPANCIES if counts.get(s))
    return (f"<tr data-run='{esc(run.id)}'><td>{esc(run.created_at)}</td><td>{esc(run.channel)}</td><td>{esc(run.source_name)}</td>"
            f"<td class=muted>{opt(run.span_start)}<br>→ {opt(run.span_end)}</td><td class=num>{counts.get('lines', 0)}</td>"
            f"<td class=num>{counts.get('matched', 0)}</td><td class=num data-discrepancies>{wrong}</td><td>{opt(detail)}</td>"
            f"<td class=actions><a class='button small' href='{page.url(f'/admin/reconciliation/{run.id}')}' data-view>View</a></td></tr>")


@get("/admin/reconciliation", include_in_schema=False)
async def admin_reconciliation(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "reconciliation")
    if isinstance(page, Response):
        return page
    runs, more = await svc.reconciliation.list_runs(merchant_id=page.merchant.id, after_id=_after(request), limit=_PAGE, channel=None)
    channels = "".join(f"<option>{esc(name)}</option>" for name in _statement_channels(svc, page))
    upload = (f"<form method=post enctype=multipart/form-data action='{page.url('/admin/reconciliation/statements')}' "
              f"class=filters id=statement-form>{csrf_input(page)}<label>Channel<br><select name=channel id=statement-channel>"
              f"{channels}</select></label><label>Statement (CSV, as the provider exports it)<br>"
              f"<input type=file name=statement id=statement-file accept='.csv,text/csv' required></label>"
              f"<button type=submit class=primary id=statement-upload>Upload and reconcile</button></form>")
    rows = "".join(_run_row(page, r) for r in runs) or "<tr><td colspan=9 class=muted>No reconciliation runs yet.</td></tr>"
    more_link = f"<a href='{page.url('/admin/reconciliation', after=runs[-1].id)}'>Older →</a>" if more else ""
    body = (f"{notice(request)}<div class=card><h1>Reconciliation</h1>{upload}<p class=muted>The same file uploaded again "
            f"shows its first run. Every discrepancy also raises an alert.</p></div><div class='card scroll'><h2>Runs</h2>"
            f"<table id=runs class=compact><tr><th>Imported</th><th>Channel</th><th>File</th><th>Span</th><th class=num>Lines</th>"
            f"<th class=num>Matched</th><th class=num>Discrepancies</th><th>Which</th><th></th></tr>{rows}</table>{more_link}</div>")
    return layout(page, title="Reconciliation", body=body, active="reconciliation")


@post("/admin/reconciliation/statements", include_in_schema=False, status_code=200, request_max_body_size=_STATEMENT_BYTES_MAX)
async def admin_statement_upload(request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc)
    if isinstance(action, Response):
        return action
    page, form = action
    back = f"/admin/reconciliation?merchant={page.merchant.id}"
    channel, upload = str(form.get("channel") or ""), form.get("statement")
    if channel not in _statement_channels(svc, page):
        return Redirect(f"{back}&error=channel_not_available", status_code=303)
    if upload is None or isinstance(upload, str):
        return Redirect(f"{back}&error=statement_empty", status_code=303)
    data = await upload.read()
    name = (upload.filename or f"{channel}-statement.csv")[:200]
    try:
        run, created = await svc.reconciliation.import_statement(merchant=page.merchant, channel=channel, data=data,
                                                                 source_name=name)
    except ApssError as error:
        return Redirect(f"{back}&error={error.code}", status_code=303)
    done = "statement_reconciled" if created else "statement_already_imported"
    return Redirect(f"/admin/reconciliation/{run.id}?merchant={page.merchant.id}&done={done}", status_code=303)


def _item_row(page: Page, item) -> str:
    ours = page.cash(item.ours_amount, item.currency) if item.ours_amount is not None else "—"
    theirs = page.cash(item.theirs_amount, item.theirs_currency or item.currency) if item.theirs_amount is not None else "—"
    ours_fee = page.cash(item.ours_fee, item.currency) if item.ours_fee is not None else "—"
    theirs_fee = page.cash(item.theirs_fee, item.theirs_currency or item.currency) if item.theirs_fee is not None else "—"
    kind = "" if item.status == "matched" else " class=discrepancy"
    return (f"<tr{kind} data-item-status='{esc(item.status)}'><td>{opt(item.line)}</td><td>{badge(item.status)}</td>"
            f"<td>{esc(item.kind)}</td><td class=ids>{opt(item.provider_ref)}</td><td class=ids>{opt(item.payment_id)}"
            f"{'<br>' + esc(item.refund_id) if item.refund_id else ''}</td><td class=num data-ours>{ours}</td>"
            f"<td class=num data-theirs>{theirs}</td><td class=num>{ours_fee}</td><td class=num>{theirs_fee}</td>"
            f"<td>{opt(item.detail)}</td></tr>")


@get("/admin/reconciliation/{run_id:str}", include_in_schema=False)
async def admin_reconciliation_run(run_id: str, request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "reconciliation")
    if isinstance(page, Response):
        return page
    status = _choice(request, "status", tuple(ITEM_STATUSES))
    try:
        run = await svc.reconciliation.get_run(merchant_id=page.merchant.id, run_id=run_id, status=status)
    except NotFound:
        return layout(page, title="Not found", active="reconciliation", status=404,
                      body=f"<div class=card>No reconciliation run {esc(run_id)} for this merchant.</div>")
    items = sorted(run.items, key=lambda i: (i.status == "matched", i.line or 0))  # discrepancies first
    rows = "".join(_item_row(page, i) for i in items) or "<tr><td colspan=10 class=muted>No items.</td></tr>"
    body = (f"{notice(request)}<div class='card scroll'><h1>Reconciliation run <span class=ids>{esc(run.id)}</span></h1>"
            f"<p class=muted>{esc(run.channel)} · {esc(run.source_name)} · span {opt(run.span_start)} to {opt(run.span_end)} · "
            f"imported {esc(run.created_at)}</p><table class=compact><tr><th></th><th>Runs</th></tr>{_run_row(page, run)}</table>"
            f"{_status_filter(page, f'/admin/reconciliation/{run.id}', 'status', tuple(ITEM_STATUSES), status)}"
            f"<table id=items class=compact><tr><th>Line</th><th>Status</th><th>Kind</th><th>Provider ref</th><th>Ours</th>"
            f"<th class=num>Our amount</th><th class=num>Their amount</th><th class=num>Our fee</th><th class=num>Their fee</th>"
            f"<th>Detail</th></tr>{rows}</table></div>")
    return layout(page, title="Reconciliation run", body=body, active="reconciliation")


# -- webhook deliveries ------------------------------------------------------------------------
def _endpoint_row(page: Page, endpoint, default_since: str) -> str:
    replay = "" if endpoint.status != "enabled" else (
        f"<form method=post action='{page.url(f'/admin/webhooks/endpoints/{endpoint.id}/replay')}'>{csrf_input(page)}"
        f"<input type=datetime-local name=since step=1 required value='{esc(default_since)}' "
        f"aria-label='Replay events since (UTC)' data-replay-since><button type=submit class=small data-replay>Replay since</button></form>")
    return (f"<tr data-endpoint='{esc(endpoint.id)}'><td class=ids>{esc(endpoint.id)}</td><td class=ids>{esc(endpoint.url)}</td>"
            f"<td>{esc(', '.join(endpoint.events))}</td><td>{badge(endpoint.status)} {opt(endpoint.disabled_reason) if endpoint.disabled_reason else ''}</td>"
            f"<td class=actions>{replay}</td></tr>")


def _delivery_row(page: Page, d) -> str:
    retry = (f"<form method=post action='{page.url(f'/admin/webhooks/deliveries/{d.id}/retry')}'>{csrf_input(page)}"
             f"<button type=submit class=small data-retry>Retry</button></form>")
    return (f"<tr data-delivery='{esc(d.id)}'><td>{esc(d.created_at)}</td><td>{esc(d.event_type)}<br>"
            f"<span class='ids muted'>{esc(d.event_id)}</span></td><td class=ids>{esc(d.endpoint_id)}</td><td>{badge(d.status)}</td>"
            f"<td class=num data-attempts>{d.attempts}</td><td>{opt(d.next_attempt_at)}</td>"
            f"<td class=num data-response-code>{opt(d.last_status_code)}</td><td>{opt(d.last_error)}</td>"
            f"<td>{opt(d.delivered_at)}</td><td class=actions>{retry}</td></tr>")


@get("/admin/webhooks", include_in_schema=False)
async def admin_webhooks(request: Request, svc: Services) -> Response:
    page = await admin_page(request, svc, "webhooks")
    if isinstance(page, Response):
        return page
    merchant_id = page.merchant.id
    status = _choice(request, "status", _DELIVERY_STATUSES)
    endpoints, _ = await svc.webhooks.list_endpoints(merchant_id=merchant_id, after_id=None, limit=100)
    deliveries, more = await svc.webhooks.list_deliveries(merchant_id=merchant_id, status=status, after_id=_after(request),
                                                          limit=_PAGE)
    now_ms = svc.clock.now_ms()
    since = format_rfc3339(now_ms - _DAY_MS)[:19]
    endpoint_rows = "".join(_endpoint_row(page, e, since) for e in endpoints) or (
        "<tr><td colspan=5 class=muted>No webhook endpoints (POST /v1/webhook_endpoints).</td></tr>")
    rows = "".join(_delivery_row(page, d) for d in deliveries) or "<tr><td colspan=10 class=muted>No deliveries.</td></tr>"
    more_link = f"<a href='{page.url('/admin/webhooks', after=deliveries[-1].id, status=status or '')}'>Older →</a>" if more else ""
    body = (f"{notice(request)}<div class='card scroll'><h1>Webhook endpoints</h1><p class=muted>Replay sends every event since "
            f"the time given (UTC) again, as new deliveries with the same event ids.</p><table id=endpoints class=compact><tr>"
            f"<th>Endpoint</th><th>URL</th><th>Events</th><th>Status</th><th></th></tr>{endpoint_rows}</table></div>"
            f"<div class='card scroll'><h2>Deliveries</h2>{_status_filter(page, '/admin/webhooks', 'status', _DELIVERY_STATUSES, status)}"
            f"<table id=deliveries class=compact><tr><th>Created</th><th>Event</th><th>Endpoint</th><th>Status</th>"
            f"<th class=num>Attempts</th><th>Next attempt</th><th class=num>Response</th><th>Error</th><th>Delivered</th><th></th></tr>"
            f"{rows}</table>{more_link}</div>")
    return layout(page, title="Webhook deliveries", body=body, active="webhooks")


@post("/admin/webhooks/deliveries/{delivery_id:str}/retry", include_in_schema=False, status_code=200)
async def admin_webhook_retry(delivery_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, delivery_id)
    if isinstance(action, Response):
        return action
    page, _ = action
    try:
        outcome = await svc.webhooks.retry_delivery(merchant_id=page.merchant.id, delivery_id=delivery_id, idem=None)
        query = "done=delivery_retried" if outcome.status < 400 else "error=delivery_not_retried"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"/admin/webhooks?merchant={page.merchant.id}&{query}", status_code=303)


def _since(typed: str) -> str | None:
    """A datetime-local value (`2026-11-25T15:04` or with seconds, taken as UTC) or RFC 3339, as RFC 3339."""
    typed = typed.strip()
    candidates = [typed, f"{typed}Z", f"{typed}:00Z"] if len(typed) <= 40 else []
    for candidate in candidates:
        try:
            return format_rfc3339(parse_rfc3339(candidate))
        except ValueError:
            continue
    return None


@post("/admin/webhooks/endpoints/{endpoint_id:str}/replay", include_in_schema=False, status_code=200)
async def admin_webhook_replay(endpoint_id: str, request: Request, svc: Services) -> Response:
    action = await admin_action(request, svc, endpoint_id)
    if isinstance(action, Response):
        return action
    page, form = action
    back = f"/admin/webhooks?merchant={page.merchant.id}"
    since = _since(str(form.get("since") or ""))
    if since is None:
        return Redirect(f"{back}&error=since_invalid", status_code=303)
    try:
        outcome = await svc.webhooks.replay(merchant_id=page.merchant.id, endpoint_id=endpoint_id,
                                            command=WebhookReplay(since=since), idem=None)
        query = "done=events_replayed" if outcome.status < 400 else "error=replay_refused"
    except ApssError as error:
        query = f"error={error.code}"
    return Redirect(f"{back}&{query}", status_code=303)


FINANCE_HANDLERS = [admin_settlements, admin_settlement, admin_settlement_csv, admin_settlement_paid, admin_reports,
                    admin_report, admin_report_csv, admin_reconciliation, admin_statement_upload, admin_reconciliation_run,
                    admin_webhooks, admin_webhook_retry, admin_webhook_replay]
