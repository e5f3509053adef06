"""The app stores' reports reconciled through the real server, and their commission given back
on refunds.

Sample reports are written here from the published layouts (App Store Connect's Summary Sales
Report v1_3 and Financial Report columns, tab-separated; the Play Console's earnings report CSV),
with the times and amounts read from the raw database (the ledger's own rows), not from APSS's
answers. Each store refund must leave the store's clearing and fee accounts where a full refund
should: at zero for the refunded payment. The ledger check runs after each test.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.channels.apple_chain import BUNDLE_ID, AppleSigner
from tests.channels.test_google import _buy as google_buy
from tests.channels.test_google import _notify as google_notify
from tests.channels.test_google import _voided_push, play  # noqa: F401  (the stand-in fixture)
from tests.conftest import assert_error, assert_ledger_ok, unique_sku

SIGNER = AppleSigner()
PACIFIC = ZoneInfo("America/Los_Angeles")
SALES_HEADER = ("Provider", "Provider Country", "SKU", "Developer", "Title", "Version", "Product Type Identifier",
                "Units", "Developer Proceeds", "Begin Date", "End Date", "Customer Currency", "Country Code",
                "Currency of Proceeds", "Apple Identifier", "Customer Price", "Promo Code", "Parent Identifier",
                "Subscription", "Period", "Category", "CMB", "Device", "Supported Platforms", "Proceeds Reason",
                "Preserved Pricing", "Client", "Order Type")
FINANCIAL_HEADER = ("Start Date", "End Date", "UPC", "ISRC/ISBN", "Vendor Identifier", "Quantity", "Partner Share",
                    "Extended Partner Share", "Partner Share Currency", "Sales or Return", "Apple Identifier",
                    "Artist/Show/Developer/Author", "Title", "Label/Studio/Network/Developer/Publisher", "Grid",
                    "Product Type Identifier", "ISAN/Other Identifier", "Country Of Sale", "Pre-order Flag",
                    "Promo Code", "Customer Price", "Customer Currency")
EARNINGS_HEADER = ("Description", "Transaction Date", "Transaction Time", "Tax Type", "Transaction Type",
                   "Refund Type", "Product Title", "Product id", "Product Type", "Sku Id", "Hardware", "Buyer Country",
                   "Buyer State", "Buyer Postal Code", "Buyer Currency", "Amount (Buyer Currency)",
                   "Currency Conversion Rate", "Merchant Currency", "Amount (Merchant Currency)", "Base Plan ID",
                   "Offer ID", "Group ID", "First USD 1M Eligible", "Promotion ID", "Coupon Value", "Discount Rate",
                   "Featured Products ID", "Price Experiment ID")


def _balance(merchant, account: str) -> int:
    return merchant.server.raw("SELECT coalesce(sum(debit - credit), 0) FROM ledger_entries WHERE account = ?",
                               (account,))[0][0]


def _posted_ms(merchant, kind: str, reference: str) -> int:
    return merchant.server.raw("SELECT created_at_ms FROM ledger_transactions WHERE kind = ? AND reference = ?",
                               (kind, reference))[0][0]


def _import(client, channel: str, data: bytes):
    return client.post(f"/v1/reconciliation/{channel}/statements", content=data,
                       params={"source_name": f"{channel}-{uuid.uuid4().hex[:8]}.txt"},
                       headers={"Content-Type": "text/csv"})


def _counts(run: dict) -> dict[str, int]:
    return {k: v for k, v in run["counts"].items() if v}


# -- App Store -----------------------------------------------------------------------------------


@pytest.fixture
def apple_shop(merchant):
    with merchant.client() as client:
        response = client.put("/v1/channels/apple", json={"bundle_id": BUNDLE_ID, "environment": "Sandbox",
                                                          "root_certificates": SIGNER.root_pem})
        assert response.status_code == 200, response.text
        gems = merchant.product(client, sku=unique_sku("com.example.gems"), category="currency_pack",
                                prices={"USD": 499}, grants=[{"type": "currency", "currency": "GEMS", "amount": 500}])
        coins = merchant.product(client, sku=unique_sku("com.example.coins"), category="currency_pack",
                                 prices={"USD": 199}, grants=[{"type": "currency", "currency": "COINS", "amount": 100}])
        yield merchant, client, gems, coins


def _apple_buy(client, sku: str, price_milli: int) -> tuple[dict, dict]:
    transaction = SIGNER.transaction(productId=sku, price=price_milli)
    response = client.post("/v1/iap/apple", json={"player_id": "alice", "signed_transaction": SIGNER.sign(transaction)})
    assert response.status_code == 201, response.text
    return transaction, response.json()


def _apple_refund(merchant, client, transaction: dict) -> None:
    refunded = {**transaction, "revocationDate": int(time.time() * 1000), "revocationReason": 0}
    response = client.post(f"/v1/channels/apple/webhook/{merchant.id}", content=SIGNER.notification("REFUND", refunded),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_a_store_refund_gives_the_commission_back_and_clearing_nets_to_zero(apple_shop) -> None:
    merchant, client, gems, _ = apple_shop
    transaction, order = _apple_buy(client, gems["sku"], 4990)
    clearing, fees = f"provider_clearing:apple:{merchant.id}", f"fees_expense:apple:{merchant.id}"
    assert (_balance(merchant, clearing), _balance(merchant, fees)) == (499 - 150, 150)
    _apple_refund(merchant, client, transaction)
    assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
    assert (_balance(merchant, clearing), _balance(merchant, fees)) == (0, 0)
    # the refund's own ledger transaction carries the fee given back
    refund_id = merchant.server.raw("SELECT id FROM refunds WHERE order_id = ?", (order["id"],))[0][0]
    entries = merchant.server.raw("SELECT e.account, e.debit, e.credit FROM ledger_entries e JOIN ledger_transactions t"
                                  " ON t.id = e.transaction_id WHERE t.kind = 'refund' AND t.reference = ?",
                                  (refund_id,))
    by_account = {r["account"]: (r["debit"], r["credit"]) for r in entries}
    assert by_account[clearing] == (0, 349) and by_account[fees] == (0, 150)
    assert_ledger_ok(merchant.server)


def _pt_date(ms: int, days: int = 0) -> str:
    return (datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(PACIFIC) + timedelta(days=days)).strftime("%m/%d/%Y")


def _sales_report(rows: list[dict]) -> bytes:
    lines = ["\t".join(SALES_HEADER)]
    for row in rows:
        cells = dict.fromkeys(SALES_HEADER, "")
        cells.update({"Provider": "APPLE", "Provider Country": "US", "SKU": row["sku"], "Developer": "Studio",
                      "Title": row["sku"], "Product Type Identifier": row.get("type", "IA1"), "Units": str(row["units"]),
                      "Developer Proceeds": row["proceeds"], "Begin Date": row["begin"], "End Date": row["end"],
                      "Customer Currency": "USD", "Country Code": "US", "Currency of Proceeds": "USD",
                      "Apple Identifier": "1234567890", "Customer Price": row["price"], "Device": "iPhone"})
        lines.append("\t".join(cells[c] for c in SALES_HEADER))
    return ("\n".join(lines) + "\n").encode()


def _financial_report(rows: list[dict]) -> bytes:
    lines = ["\t".join(FINANCIAL_HEADER)]
    for row in rows:
        units = row["units"]
        cells = dict.fromkeys(FINANCIAL_HEADER, "")
        cells.update({"Start Date": row["begin"], "End Date": row["end"], "ISRC/ISBN": row["sku"],
                      "Vendor Identifier": row["sku"], "Quantity": str(units), "Partner Share": row["proceeds"],
                      "Extended Partner Share": "0.00", "Partner Share Currency": "USD",
                      "Sales or Return": "R" if units < 0 else "S", "Apple Identifier": "1234567890",
                      "Title": row["sku"], "Product Type Identifier": row.get("type", "IA1"), "Country Of Sale": "US",
                      "Customer Price": row["price"], "Customer Currency": "USD"})
        lines.append("\t".join(cells[c] for c in FINANCIAL_HEADER))
    # The file ends with its totals after a blank line, as App Store Connect writes it.
    lines += ["", "Total_Rows\t" + str(len(rows)), "Total_Amount\t0.00", "Total_Units\t0"]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("layout", ["summary_sales", "financial"])
def test_app_store_reports_match_per_product_and_period(apple_shop, layout) -> None:
    merchant, client, gems, coins = apple_shop
    bought = [_apple_buy(client, gems["sku"], 4990) for _ in range(2)] + [_apple_buy(client, coins["sku"], 1990)]
    _apple_refund(merchant, client, bought[0][0])
    refund_id = merchant.server.raw("SELECT id FROM refunds WHERE order_id = ?", (bought[0][1]["id"],))[0][0]
    times = [_posted_ms(merchant, "payment_captured", order["payment"]["id"]) for _, order in bought]
    times.append(_posted_ms(merchant, "refund", refund_id))
    # A period around every posting (Pacific days, as Apple counts them), so midnight cannot split it.
    begin, end = _pt_date(min(times), -1), _pt_date(max(times), 1)
    period = {"begin": begin, "end": end}
    rows = [
        {"sku": gems["sku"], "units": 2, "price": "4.99", "proceeds": "3.49", **period},   # 2 x (499 - 150)
        {"sku": gems["sku"], "units": -1, "price": "4.99", "proceeds": "3.49", **period},  # the refund
        {"sku": coins["sku"], "units": 2, "price": "1.99", "proceeds": "1.39", **period},  # we sold one
        {"sku": "com.example.not_ours", "units": 1, "price": "0.99", "proceeds": "0.70", **period},
        {"sku": "com.example.game", "type": "1F", "units": 40, "price": "0", "proceeds": "0", **period},  # downloads
    ]
    report = (_sales_report if layout == "summary_sales" else _financial_report)(rows)
    response = _import(client, "apple", report)
    assert response.status_code == 201, response.text
    run = client.get(f"/v1/reconciliation/runs/{response.json()['id']}").json()
    assert _counts(run) == {"lines": 5, "skipped": 1, "matched": 2, "amount_mismatch": 1, "missing_here": 1}
    items = {item["line"]: item for item in run["items"]}
    sale, returned, short, foreign = items[1], items[2], items[3], items[4]
    assert (sale["status"], sale["ours_amount"], sale["theirs_amount"], sale["ours_fee"], sale["theirs_fee"]) == (
        "matched", 998, 998, 300, 300)
    assert sorted(bought[i][1]["payment"]["id"] for i in (0, 1)) == sorted(
        p for p in (bought[0][1]["payment"]["id"], bought[1][1]["payment"]["id"]) if p in sale["detail"])
    assert (returned["status"], returned["kind"], returned["refund_id"], returned["ours_amount"], returned["ours_fee"],
            returned["theirs_fee"]) == ("matched", "refund", refund_id, 499, -150, -150)
    assert (short["status"], short["ours_amount"], short["theirs_amount"]) == ("amount_mismatch", 199, 398)
    assert short["payment_id"] == bought[2][1]["payment"]["id"] and "1 units (the statement: 2)" in short["detail"]
    assert foreign["status"] == "missing_here"
    alerts = client.get("/v1/alerts", params={"limit": 100}).json()["data"]
    assert sorted(a["kind"] for a in alerts if a["kind"].startswith("reconciliation_")) == [
        "reconciliation_amount_mismatch", "reconciliation_missing_here"]
    assert _import(client, "apple", report).status_code == 200  # the same file: the first run, nothing twice
    assert_ledger_ok(merchant.server)


def test_a_sale_missing_from_the_report_and_a_malformed_report(apple_shop) -> None:
    merchant, client, gems, coins = apple_shop
    _, sold = _apple_buy(client, gems["sku"], 4990)
    _, unreported = _apple_buy(client, coins["sku"], 1990)
    posted = _posted_ms(merchant, "payment_captured", sold["payment"]["id"])
    period = {"begin": _pt_date(posted, -1), "end": _pt_date(posted, 1)}
    report = _sales_report([{"sku": gems["sku"], "units": 1, "price": "4.99", "proceeds": "3.49", **period}])
    run = client.get(f"/v1/reconciliation/runs/{_import(client, 'apple', report).json()['id']}").json()
    assert _counts(run) == {"lines": 1, "matched": 1, "missing_at_provider": 1}
    assert [i["payment_id"] for i in run["items"] if i["status"] == "missing_at_provider"] == [
        unreported["payment"]["id"]]
    huge = _sales_report([{"sku": gems["sku"], "units": 10**9, "price": "999999999.99", "proceeds": "1.00", **period}])
    bad = [report.replace(b"4.99", b"4.9x"), b"Provider\tSKU\n", report.replace(b"USD", b"XXX", 1), huge]
    for data in bad:
        assert_error(_import(client, "apple", data), 400, "invalid_request_error", "statement_malformed", "statement")
    assert_ledger_ok(merchant.server)


# -- Google Play ---------------------------------------------------------------------------------


@pytest.fixture
def google_shop(merchant, play):  # noqa: F811
    with merchant.client() as client:
        play.follow(merchant.server)
        response = client.put("/v1/channels/google", json={"package_name": play.package_name, "api_base": play.url,
                                                           "service_account": play.service_account()})
        assert response.status_code == 200, response.text
        gems = merchant.product(client, sku=unique_sku("gems"), category="currency_pack", prices={"USD": 499},
                                grants=[{"type": "currency", "currency": "GEMS", "amount": 500}])
        yield merchant, client, gems


def _earnings_row(order_id: str, ms: int, kind: str, amount: str, sku: str, **extra: str) -> str:
    local = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(PACIFIC)
    cells = dict.fromkeys(EARNINGS_HEADER, "")
    cells.update({"Description": order_id, "Transaction Date": local.strftime("%b %d, %Y").replace(" 0", " "),
                  "Transaction Time": local.strftime("%I:%M:%S %p ").lstrip("0") + local.tzname(),
                  "Transaction Type": kind, "Product Title": "500 Gems (Game)", "Product id": "com.example.game",
                  "Product Type": "inapp", "Sku Id": sku, "Hardware": "phone", "Buyer Country": "US",
                  "Buyer State": "CA", "Buyer Postal Code": "94043", "Buyer Currency": "USD",
                  "Amount (Buyer Currency)": amount, "Currency Conversion Rate": "1.000000", "Merchant Currency": "USD",
                  "Amount (Merchant Currency)": amount, "First USD 1M Eligible": "Yes", **extra})
    return ",".join(f'"{cells[c]}"' if "," in cells[c] else cells[c] for c in EARNINGS_HEADER)


def test_google_earnings_report_matches_each_order_by_its_order_id(google_shop, play) -> None:  # noqa: F811
    merchant, client, gems = google_shop
    tokens = [play.buy(gems["sku"]) for _ in range(3)]
    orders = [google_buy(client, gems["sku"], token).json() for token in tokens]
    order_ids = [play.products[(play.package_name, token)]["orderId"] for token in tokens]
    play.void(tokens[1])
    assert google_notify(merchant, client, _voided_push(play, tokens[1], order_ids[1])).status_code == 200
    assert client.get(f"/v1/orders/{orders[1]['id']}").json()["status"] == "refunded"
    clearing, fees = f"provider_clearing:google:{merchant.id}", f"fees_expense:google:{merchant.id}"
    assert (_balance(merchant, clearing), _balance(merchant, fees)) == (2 * (499 - 150), 2 * 150)
    payments = {row["id"]: row["provider_ref"] for row in merchant.server.raw(
        "SELECT id, provider_ref FROM payments WHERE merchant_id = ?", (merchant.id,))}
    refund_id = merchant.server.raw("SELECT id FROM refunds WHERE order_id = ?", (orders[1]["id"],))[0][0]
    assert all(payments[o["payment"]["id"]] == t for o, t in zip(orders, tokens, strict=True)), \
        "the payments' reference is the token: the report's order id must be found another way"
    paid = [_posted_ms(merchant, "payment_captured", o["payment"]["id"]) for o in orders]
    refunded = _posted_ms(merchant, "refund", refund_id)
    sku = gems["sku"]
    rows = [
        _earnings_row(order_ids[0], paid[0], "Charge", "4.99", sku),
        _earnings_row(order_ids[0], paid[0], "Google fee", "-1.50", sku),
        _earnings_row(order_ids[1], paid[1], "Charge", "4.99", sku),
        _earnings_row(order_ids[1], paid[1], "Google fee", "-1.50", sku),
        _earnings_row(order_ids[1], refunded, "Charge refund", "-4.99", sku, **{"Refund Type": "Full refund"}),
        _earnings_row(order_ids[1], refunded, "Google fee refund", "1.50", sku, **{"Refund Type": "Full refund"}),
        _earnings_row(order_ids[2], paid[2], "Charge", "4.99", sku),
        _earnings_row(order_ids[2], paid[2], "Google fee", "-0.75", sku),  # Google took 15%: we booked 30%
        _earnings_row(order_ids[2], paid[2], "Tax", "-0.10", sku, **{"Tax Type": "Sales tax"}),
        _earnings_row("GPA.3300-0000-0000-99999", paid[2], "Charge", "4.99", sku),
    ]
    report = ("\n".join([",".join(EARNINGS_HEADER), *rows]) + "\n").encode()
    response = _import(client, "google", report)
    assert response.status_code == 201, response.text
    run = client.get(f"/v1/reconciliation/runs/{response.json()['id']}").json()
    assert _counts(run) == {"lines": 6, "skipped": 1, "matched": 3, "fee_mismatch": 1, "missing_here": 1}
    by_ref = {(i["provider_ref"], i["kind"]): i for i in run["items"]}
    assert by_ref[(order_ids[0], "payment")]["payment_id"] == orders[0]["payment"]["id"]
    assert by_ref[(order_ids[1], "refund")]["refund_id"] == refund_id
    assert (by_ref[(order_ids[1], "refund")]["ours_fee"], by_ref[(order_ids[1], "refund")]["theirs_fee"]) == (-150, -150)
    mismatch = by_ref[(order_ids[2], "payment")]
    assert (mismatch["status"], mismatch["payment_id"], mismatch["ours_fee"], mismatch["theirs_fee"]) == (
        "fee_mismatch", orders[2]["payment"]["id"], 150, 75)
    assert by_ref[("GPA.3300-0000-0000-99999", "payment")]["status"] == "missing_here"
    bad = report.replace(b"1:", b"13:", 1).replace(b" PST", b" CET").replace(b" PDT", b" CET")
    assert_error(_import(client, "google", bad), 400, "invalid_request_error", "statement_malformed", "statement")
    assert_ledger_ok(merchant.server)
