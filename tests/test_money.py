"""Money: ledger postings, refunds with clawback policies, chargebacks, the ledger check, the summary."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apss.channels.sandbox import SIGNATURE_HEADER, build_event, sign_callback
from apss.domain.payments import CallbackKind
from apss.ids import new_id
from apss.store.migrate import apply_migrations
from tests.conftest import ADMIN_TOKEN, wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.both_backends


def _paid_order(merchant, client, *, product, player_id, quantity=1, metadata=None):
    order = merchant.order(client, product["id"], player_id=player_id, quantity=quantity, metadata=metadata or {}).json()
    client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed")
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _balances(client) -> dict[str, int]:
    return {f"{b['account'].rsplit(':', 1)[0]}": b["balance"] for b in client.get("/v1/ledger/balances").json()["data"]}


def _gems(merchant, client, amount=100, price=1000):
    return merchant.product(client, category="currency_pack", prices={"USD": price},
                            grants=[{"type": "currency", "currency": "GEMS", "amount": amount}])


def test_a_capture_posts_fee_commission_splits_and_the_merchant_share(server):
    merchant = server.new_merchant()
    with server.admin() as admin:
        set_finance = admin.put(f"/v1/merchants/{merchant.id}/finance", json={"commission_bps": 2000})
        assert set_finance.status_code == 200 and set_finance.json()["commission_bps"] == 2000
    with merchant.client() as client:
        assert client.put("/v1/account/finance", json={"commission_bps": 0}).status_code == 400, "commission is the admin's"
        splits = client.put("/v1/account/finance", json={"splits": [{"recipient": "publisher", "share_bps": 1500}]})
        assert splits.status_code == 200, splits.text
        too_much = client.put("/v1/account/finance", json={"splits": [{"recipient": "a", "share_bps": 9000}]})
        assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "shares_exceed_whole"
        product = merchant.product(client, prices={"USD": 1999})
        _paid_order(merchant, client, product=product, player_id="buyer")
        # fee: 2.9% of 1999 = 57.971 -> 58, + 30 fixed = 88; commission 20% = 399.8 -> 400;
        # publisher 15% = 299.85 -> 300; merchant: 1999 - 400 - 300 = 1299
        assert _balances(client) == {
            "provider_clearing:sandbox": 1999 - 88, "fees_expense:sandbox": 88, "platform_revenue": 400,
            "partner_payable:publisher": 300, "merchant_payable": 1299}
    with server.admin() as admin:
        check = admin.get("/v1/admin/ledger/check")
        assert check.status_code == 200 and check.json()["ok"] is True and check.json()["problem"] is None


def test_partial_refunds_up_to_the_captured_amount(merchant):
    with merchant.client() as client:
        product = merchant.product(client, sku="sword_r", prices={"USD": 1000}, stock=5)
        order = _paid_order(merchant, client, product=product, player_id="refund-me")
        pending = merchant.order(client, product["id"], player_id="not-paid").json()
        assert client.post(f"/v1/orders/{pending['id']}/refunds", json={}).status_code == 409
        first = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 300, "reason": "goodwill"},
                            headers={"Idempotency-Key": "rf-1"})
        assert first.status_code == 201, first.text
        body = first.json()
        assert (body["status"], body["amount"], body["currency"], body["reason"]) == ("succeeded", 300, "USD", "goodwill")
        again = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 300, "reason": "goodwill"},
                            headers={"Idempotency-Key": "rf-1"})
        assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == body["id"]
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "partially_refunded"
        too_much = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 701})
        assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "refund_amount_too_large"
        assert client.get("/v1/players/refund-me/inventory").json()["items"] == [{"sku": "sword_r", "quantity": 1}]
        rest = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert rest.status_code == 201 and rest.json()["amount"] == 700
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert client.get("/v1/players/refund-me/inventory").json()["items"] == [], "a full refund takes the item back"
        assert [r["amount"] for r in client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]] == [300, 700]
        balances = _balances(client)
        # the provider keeps its fee (2.9% of 1000 + 30 = 59); commission and the merchant share are reversed in full
        assert balances["provider_clearing:sandbox"] == -59 and balances["fees_expense:sandbox"] == 59
        assert balances["platform_revenue"] == 0 and balances["merchant_payable"] == 0
        events = [e["to_status"] for e in client.get(f"/v1/orders/{order['id']}/events").json()["data"]]
        assert events[-2:] == ["partially_refunded", "refunded"]


def test_refund_of_spent_currency_under_each_policy(merchant):
    with merchant.client() as client:
        pack = _gems(merchant, client)
        order = _paid_order(merchant, client, product=pack, player_id="spender")
        assert client.post("/v1/players/spender/wallet/debit", json={"currency": "GEMS", "amount": 80}).status_code == 201
        refused = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "refund_refused_currency_spent"
        half = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 100})  # takes back 10 GEMS: available
        assert half.status_code == 201 and half.json()["clawback"]["currency"] == [
            {"currency": "GEMS", "amount": 10, "taken": 10, "debt": 0}]
        assert client.get("/v1/players/spender/wallet").json()["balances"] == {"GEMS": 10}
        assert client.put("/v1/account/finance", json={"clawback_policy": "debt"}).status_code == 200
        rest = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert rest.status_code == 201, rest.text
        assert rest.json()["clawback"] == {"policy": "debt", "currency": [{"currency": "GEMS", "amount": 90, "taken": 10, "debt": 80}],
                                           "items": [], "memberships": [], "entitlements": []}
        assert client.get("/v1/players/spender/wallet").json()["balances"] == {"GEMS": -80}
        debit = client.post("/v1/players/spender/wallet/debit", json={"currency": "GEMS", "amount": 1})
        assert debit.status_code == 409, "a game debit never goes below zero"
        _paid_order(merchant, client, product=pack, player_id="spender")
        assert client.get("/v1/players/spender/wallet").json()["balances"] == {"GEMS": 20}, "debt is paid off first"


def test_a_failed_refund_changes_nothing_but_raises_an_alert(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        order = _paid_order(merchant, client, product=product, player_id="nope", metadata={"sandbox_outcome": "refund_fails"})
        refund = client.post(f"/v1/orders/{order['id']}/refunds", json={})
        assert refund.status_code == 201 and refund.json()["status"] == "failed"
        assert refund.json()["failure_code"] == "refund_declined"
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        assert [a["kind"] for a in client.get("/v1/alerts").json()["data"]] == ["refund_failed"]
        retry = client.post(f"/v1/orders/{order['id']}/refunds", json={}).json()
        assert retry["amount"] == 500, "a failed refund does not use up the refundable amount"


def test_a_chargeback_takes_the_money_and_the_goods_back(merchant):
    with merchant.client() as client:
        pack = _gems(merchant, client, amount=50, price=500)
        order = _paid_order(merchant, client, product=pack, player_id="disputer")
        secret = client.get("/v1/account").json()["sandbox_webhook_secret"]
        provider_ref = order["payment"]["next_action"]["url"].rsplit("/", 1)[1]
        now_s = merchant.server.clock.now_ms() // 1000
        body = build_event(event_id=new_id("evt"), kind=CallbackKind.DISPUTE_CREATED, created_s=now_s,
                           payment_id=order["payment"]["id"], amount=500, currency="USD", provider_ref=provider_ref)
        headers = {SIGNATURE_HEADER: sign_callback(secret=secret, body=body, now_s=now_s)}
        for _ in range(2):  # delivered twice, applied once
            answer = httpx.post(f"{merchant.server.base_url}/v1/channels/sandbox/webhook/{merchant.id}", content=body, headers=headers)
            assert answer.status_code == 200
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert client.get("/v1/players/disputer/wallet").json()["balances"] == {"GEMS": 0}
        refunds = client.get(f"/v1/orders/{order['id']}/refunds").json()["data"]
        assert [(r["reason"], r["amount"], r["status"]) for r in refunds] == [("chargeback", 500, "succeeded")]
        assert "dispute_created" in [a["kind"] for a in client.get("/v1/alerts").json()["data"]]


def test_summary_from_the_ledger(merchant):
    with merchant.client() as client:
        product = merchant.product(client, prices={"USD": 1000})
        for n in range(3):
            order = _paid_order(merchant, client, product=product, player_id=f"sum-{n}")
        client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 400})
        summary = client.get("/v1/reports/summary", params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
        assert summary.status_code == 200, summary.text
        [usd] = summary.json()["data"]
        # each payment: fee 59, commission 300; the refund reverses 120 commission and 280 merchant share
        assert usd == {"currency": "USD", "gross": 3000, "refunds": 400, "chargebacks": 0, "fees": 177,
                       "commission": 900 - 120, "partner_shares": 0, "net": 2100 - 280, "payments": 3, "refund_count": 1,
                       "discounts": 0}
        bad = client.get("/v1/reports/summary", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
        assert bad.status_code == 400


def test_ledger_check_cli_finds_the_first_bad_entry(tmp_path):
    env = {**os.environ, "APSS_DATABASE_PATH": str(tmp_path / "l.sqlite"), "APSS_SEED_DEMO": "false",
           "APSS_ADMIN_TOKEN": ADMIN_TOKEN}
    run = lambda: subprocess.run([sys.executable, "-m", "apss", "ledger", "check"], cwd=ROOT, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    apply_migrations(str(tmp_path / "l.sqlite"))  # the check reads; it never migrates (tests/test_cli.py)
    ok = run()
    assert ok.returncode == 0 and "every transaction balances" in ok.stdout
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        db.execute("INSERT INTO ledger_accounts VALUES ('merchant_payable:m', 'USD', 'liability', 'm', 0)")
        db.execute("INSERT INTO ledger_transactions VALUES ('ltx_bad', 'm', 'adjustment', 'r', NULL, 0)")
        db.execute("INSERT INTO ledger_entries (transaction_id, account, currency, debit, credit)"
                   " VALUES ('ltx_bad', 'merchant_payable:m', 'USD', 5, 0)")
    bad = run()
    assert bad.returncode == 1 and "ltx_bad" in bad.stdout and "unbalanced" in bad.stdout


def test_manual_adjustment_needs_a_reason_and_balances(server):
    merchant = server.new_merchant()
    with server.admin() as admin:
        no_reason = admin.post("/v1/admin/ledger/adjustments", json={"merchant_id": merchant.id, "account": "merchant_payable",
                                                                     "amount": -500, "currency": "USD"})
        assert no_reason.status_code == 400
        made = admin.post("/v1/admin/ledger/adjustments", json={"merchant_id": merchant.id, "account": "merchant_payable",
                                                                "amount": -500, "currency": "USD", "reason": "bonus for launch"})
        assert made.status_code == 201, made.text
        assert admin.get("/v1/admin/ledger/check").json()["ok"] is True
    with merchant.client() as client:
        assert _balances(client) == {"merchant_payable": 500, "adjustments": -500}


def test_seeded_random_money_operations_keep_the_ledger_balanced(server):
    """Blnk-style invariant run: random payments, partial refunds, chargebacks and settlements
    (settled and paid out) over the API; after each step the ledger check passes, and in the end
    clearing equals captures minus fees, refunds and payouts."""
    import random

    rng = random.Random(20261125)
    merchant = server.new_merchant()
    with merchant.client() as client, server.admin() as admin:
        client.put("/v1/account/finance", json={"splits": [{"recipient": "pub", "share_bps": 1234}], "clawback_policy": "debt"})
        product = merchant.product(client, prices={"USD": 777})
        paid: list[dict] = []
        for step in range(25):
            action = rng.choice(["pay", "pay", "refund", "chargeback", "settle"]) if paid else "pay"
            if action == "settle":  # no schedule: the manual cycle settles up to now, then the admin pays out
                server.clock.advance(seconds=1)
                for batch in client.post("/v1/settlements/run").json()["data"]:
                    if batch["status"] == "pending":
                        paid_out = admin.post(f"/v1/admin/settlements/{batch['id']}/paid", json={"payout_reference": f"po-{step}"})
                        assert paid_out.status_code == 200, paid_out.text
            elif action == "pay":
                paid.append(_paid_order(merchant, client, product=product, player_id=f"inv-{step}"))
            elif action == "refund":
                order = rng.choice(paid)
                client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": rng.randint(1, 400)})
            else:
                order = rng.choice(paid)
                secret = client.get("/v1/account").json()["sandbox_webhook_secret"]
                now_s = server.clock.now_ms() // 1000
                body = build_event(event_id=new_id("evt"), kind=CallbackKind.DISPUTE_CREATED, created_s=now_s,
                                   payment_id=order["payment"]["id"], amount=rng.randint(1, 777), currency="USD",
                                   provider_ref=order["payment"]["next_action"]["url"].rsplit("/", 1)[1])
                httpx.post(f"{server.base_url}/v1/channels/sandbox/webhook/{merchant.id}", content=body,
                           headers={SIGNATURE_HEADER: sign_callback(secret=secret, body=body, now_s=now_s)})
            check = admin.get("/v1/admin/ledger/check").json()
            assert check["ok"] is True, (step, action, check)
        [usd] = client.get("/v1/reports/summary", params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}).json()["data"]
        balances = _balances(client)
        payouts = sum(s["net_payable"] for s in client.get("/v1/settlements", params={"limit": 100}).json()["data"]
                      if s["status"] == "paid")
        assert payouts > 0, "the run settled and paid out"
        assert balances["provider_clearing:sandbox"] == (usd["gross"] - usd["fees"] - usd["refunds"] - usd["chargebacks"]
                                                         - payouts)
        total_refunded = sum(r["amount"] for o in paid for r in client.get(f"/v1/orders/{o['id']}/refunds").json()["data"]
                             if r["status"] == "succeeded")
        assert usd["refunds"] + usd["chargebacks"] == total_refunded


def test_virtual_currency_is_deferred_revenue_until_spent(merchant):
    def vc(client) -> dict[str, int]:
        return {k.split(":")[0]: v for k, v in _balances(client).items() if k.startswith("vc_")}

    with merchant.client() as client:
        pack = _gems(merchant, client, amount=100, price=1000)  # merchant share: 1000 - 30% commission = 700
        order = _paid_order(merchant, client, product=pack, player_id="deferred")
        assert vc(client) == {"vc_sales": -700, "vc_deferred": 700}, "sold, not yet earned"
        client.post("/v1/players/deferred/wallet/debit", json={"currency": "GEMS", "amount": 25})
        assert vc(client) == {"vc_sales": -700, "vc_deferred": 525, "vc_recognised": 175}, "25 of 100 spent: 25% earned"
        client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 500})  # takes back 50 GEMS at average cost
        assert vc(client) == {"vc_sales": -350, "vc_deferred": 175, "vc_recognised": 175}
        client.post("/v1/players/deferred/wallet/debit", json={"currency": "GEMS", "amount": 25})
        assert vc(client) == {"vc_sales": -350, "vc_deferred": 0, "vc_recognised": 350}, "all spent: all earned"
    with merchant.server.admin() as admin:
        assert admin.get("/v1/admin/ledger/check").json()["ok"] is True
