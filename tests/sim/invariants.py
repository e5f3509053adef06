"""What must hold after every step and at the end, checked against the providers' own records
(each stand-in's charges and refunds in the simulation's memory, which survive our kills: Stripe's
PaymentIntents and refunds, PayPal's orders with their captures and refunds, Alipay's trades and
their refund requests, WeChat Pay's transactions and refunds; the sandbox's book,
sandbox_payments and sandbox_refunds) and raw scans of the database file, never our records
against themselves alone."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.sim.world import Sim

__all__ = ["ORDER_EVENT_TYPES", "Violation", "check_final", "check_step", "digest", "provider_disputes", "provider_paid",
           "provider_refunds"]

ORDER_EVENT_TYPES = frozenset({"order.paid", "order.delivering", "order.fulfilled", "order.expired", "order.canceled",
                               "order.failed", "order.partially_refunded", "order.refunded", "order.in_review"})
_DELIVERED = ("delivering", "fulfilled", "partially_refunded")  # orders whose items the player holds


class Violation(AssertionError):
    pass


def _fail(text: str) -> None:
    raise Violation(text)


def provider_paid(sim: Sim) -> dict[str, str]:
    """payment id -> channel, for every payment the provider says it charged."""
    paid = {payment_id: name for name, provider in sim.providers.items() for payment_id in provider.paid()}
    for row in sim.rows("SELECT payment_id FROM sandbox_payments WHERE outcome = 'succeeded'"):
        paid[row["payment_id"]] = "sandbox"
    return paid


def provider_disputes(sim: Sim) -> dict[tuple[str, str], dict]:
    """(channel, the provider's dispute id) -> {payment_id, amount, status} as the provider holds
    it: the Stripe stand-in's disputes (their PaymentIntent's apss_payment_id), the sandbox's
    sandbox_disputes."""
    by_intent = {i["id"]: i["metadata"].get("apss_payment_id") for i in sim.stripe.intents.values()}
    held = {("stripe", d["id"]): {"payment_id": by_intent[d["payment_intent"]], "amount": d["amount"],
                                  "status": d["status"]} for d in sim.stripe.disputes.values()}
    for row in sim.rows("SELECT id, payment_id, amount, status FROM sandbox_disputes"):
        held[("sandbox", row["id"])] = {"payment_id": row["payment_id"], "amount": row["amount"], "status": row["status"]}
    return held


def provider_refunds(sim: Sim) -> dict[str, tuple[str, int, str]]:
    """our refund id -> (channel, amount, status) as the provider holds it."""
    held = {refund_id: (name, amount, status) for name, provider in sim.providers.items()
            for refund_id, (amount, status) in provider.refunds().items()}
    for row in sim.rows("SELECT refund_id, amount, status FROM sandbox_refunds"):
        held[row["refund_id"]] = ("sandbox", row["amount"], row["status"])
    return held


async def check_step(sim: Sim) -> None:
    if sim.unrouted:
        _fail(f"the app called provider hosts no stand-in serves: {sorted(set(sim.unrouted))}")
    # Stock: never below zero (CHECK constraints) and stock + reserved + sold constant.
    for row in sim.rows("SELECT id, sku, stock, reserved, sold FROM products WHERE stock IS NOT NULL ORDER BY id"):
        if min(row["stock"], row["reserved"], row["sold"]) < 0:
            _fail(f"product {row['sku']}: stock {row['stock']}, reserved {row['reserved']}, sold {row['sold']}")
        total = row["stock"] + row["reserved"] + row["sold"]
        if total != sim.initial_stock[row["id"]]:
            _fail(f"product {row['sku']}: stock + reserved + sold = {total}, created with {sim.initial_stock[row['id']]}")
    # Paid here => charged by the provider.
    paid = provider_paid(sim)
    for row in sim.rows("SELECT id, channel, order_id FROM payments WHERE status = 'succeeded' ORDER BY id"):
        if row["channel"] != "wallet" and row["id"] not in paid:
            _fail(f"payment {row['id']} ({row['channel']}) is succeeded here but the provider never charged it")
    for row in sim.rows("SELECT o.id, o.status FROM orders o WHERE o.status IN ('paid', 'delivering', 'fulfilled', "
                        "'partially_refunded', 'refunded', 'in_review') AND o.channel != 'wallet' AND NOT EXISTS ("
                        "SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'succeeded') ORDER BY o.id"):
        _fail(f"order {row['id']} is {row['status']} without a succeeded payment")
    # Delivered once: each status reached at most once, items held = items of the delivered orders.
    for row in sim.rows("SELECT order_id, to_status, COUNT(*) AS n FROM order_events WHERE to_status IN ('paid', 'delivering', "
                        "'fulfilled', 'refunded') GROUP BY order_id, to_status "
                        "HAVING n > 1 ORDER BY order_id"):
        _fail(f"order {row['order_id']} entered {row['to_status']} {row['n']} times")
    expected: Counter = Counter()
    for row in sim.rows("SELECT o.player_id, i.quantity, i.grants FROM orders o JOIN order_items i ON i.order_id = o.id "
                        f"WHERE o.status IN {_DELIVERED} ORDER BY o.id, i.line"):
        for grant in json.loads(row["grants"]):
            if grant["type"] == "item":
                expected[(row["player_id"], grant["sku"])] += row["quantity"] * grant.get("quantity", 1)
    held = Counter({(r["player_id"], r["sku"]): r["quantity"] for r in
                    sim.rows("SELECT player_id, sku, quantity FROM inventory_items WHERE quantity > 0")})
    if held != expected:
        _fail(f"inventory differs from the delivered orders: held {dict(held)}, delivered {dict(expected)}")
    for row in sim.rows("SELECT order_id, COUNT(*) AS n FROM wallet_transactions WHERE order_id IS NOT NULL AND amount > 0 "
                        "AND reason IS NOT 'refund' GROUP BY order_id HAVING n > 1"):
        _fail(f"order {row['order_id']} credited the wallet {row['n']} times")
    for row in sim.rows("SELECT b.player_id, b.currency, b.balance, (SELECT COALESCE(SUM(t.amount), 0) FROM "
                        "wallet_transactions t WHERE t.merchant_id = b.merchant_id AND t.player_id = b.player_id AND "
                        "t.currency = b.currency) AS history FROM wallet_balances b ORDER BY b.player_id"):
        if row["balance"] != row["history"]:
            _fail(f"wallet {row['player_id']} {row['currency']}: balance {row['balance']}, history {row['history']}")
    # Refunds: booked succeeded => executed by the provider; never more than was captured.
    executed = provider_refunds(sim)
    for row in sim.rows("SELECT id, amount FROM refunds WHERE status = 'succeeded' AND reason IS NOT 'chargeback' ORDER BY id"):
        if executed.get(row["id"], (None, None, None))[2] != "succeeded":
            _fail(f"refund {row['id']} is succeeded here; the provider holds {executed.get(row['id'])}")
    # Never more than was captured: what left (refunds the provider made, chargebacks not won back), and what APSS
    # asked to refund. A refund still pending when a chargeback the bank opened earlier arrives
    # may overlap it for a while: the provider refuses such a refund (no refund of a disputed
    # charge), which its query finds; check_final holds the two together once nothing is pending.
    _check_refund_totals(sim, f"r.status = 'succeeded' AND {_NOT_WON_BACK}")
    _check_refund_totals(sim, "r.status != 'failed' AND r.reason IS NOT 'chargeback'")
    _check_disputes(sim)
    # The ledger: every transaction balances, every balance equals its entries.
    check = await sim.svc.ledger.check()
    if not check.ok:
        _fail(f"ledger check: {check.problem}")
    _check_outbox(sim)


# A chargeback whose dispute the merchant won came back (its reversal is booked): it no longer counts
# as money that left.
_NOT_WON_BACK = "NOT EXISTS (SELECT 1 FROM disputes d WHERE d.refund_id = r.id AND d.status = 'won')"


def _check_refund_totals(sim: Sim, which: str) -> None:
    for row in sim.rows("SELECT p.id, p.amount, SUM(r.amount) AS refunded FROM payments p JOIN refunds r ON "
                        f"r.payment_id = p.id WHERE {which} GROUP BY p.id HAVING refunded > p.amount"):
        _fail(f"payment {row['id']}: refunds {row['refunded']} ({which}) exceed the capture {row['amount']}")


def _check_disputes(sim: Sim) -> None:
    """Each dispute here is one the provider opened, for its payment and amount; its chargeback
    is a refund of exactly that amount booked once; a closed one closed as the provider says; a
    won one reversed once, a lost one never. Every chargeback belongs to a dispute."""
    held = provider_disputes(sim)
    for row in sim.rows("SELECT d.id, d.channel, d.provider_dispute_id, d.payment_id, d.amount, d.status, d.refund_id, "
                        "r.amount AS refund_amount, r.status AS refund_status FROM disputes d LEFT JOIN refunds r "
                        "ON r.id = d.refund_id ORDER BY d.id"):
        theirs = held.get((row["channel"], row["provider_dispute_id"]))
        if theirs is None or (theirs["payment_id"], theirs["amount"]) != (row["payment_id"], row["amount"]):
            _fail(f"dispute {row['id']} ({row['payment_id']}, {row['amount']}): the provider holds {theirs}")
        if row["status"] in ("won", "lost") and theirs["status"] != row["status"]:
            _fail(f"dispute {row['id']} is {row['status']} here; the provider says {theirs['status']}")
        if (row["refund_amount"], row["refund_status"]) != (row["amount"], "succeeded"):
            _fail(f"dispute {row['id']} of {row['amount']}: its chargeback is {row['refund_amount']} {row['refund_status']}")
        kinds = Counter(r["kind"] for r in sim.rows(
            "SELECT kind FROM ledger_transactions WHERE reference = ?", (row["refund_id"],)))
        wanted = Counter({"chargeback": 1, **({"chargeback_reversed": 1} if row["status"] == "won" else {})})
        if kinds != wanted:
            _fail(f"dispute {row['id']} ({row['status']}): the ledger holds {dict(kinds)} under {row['refund_id']}")
    for row in sim.rows("SELECT id FROM refunds r WHERE reason = 'chargeback' AND NOT EXISTS "
                        "(SELECT 1 FROM disputes d WHERE d.refund_id = r.id) ORDER BY id"):
        _fail(f"chargeback {row['id']} belongs to no dispute")


def _check_outbox(sim: Sim) -> None:
    """Merchant webhooks in the outbox are exactly the committed order moves and refund outcomes."""
    moves = Counter((r["order_id"], f"order.{r['to_status']}") for r in
                    sim.rows("SELECT order_id, to_status FROM order_events WHERE to_status != 'pending'"))
    refunds = Counter((r["id"], f"refund.{r['status']}") for r in
                      sim.rows("SELECT id, status FROM refunds WHERE status != 'pending'"))
    disputes = Counter((r["dispute_id"], r["type"]) for r in
                       sim.rows("SELECT dispute_id, type FROM dispute_events WHERE type LIKE 'dispute.%'"))
    sent: Counter = Counter()
    for row in sim.rows("SELECT type, payload FROM webhook_events ORDER BY id"):
        if row["type"] in ORDER_EVENT_TYPES or row["type"].startswith(("refund.", "dispute.")):
            sent[(json.loads(row["payload"])["data"]["object"]["id"], row["type"])] += 1
    wanted = moves + refunds + disputes
    if sent != wanted:
        missing, extra = wanted - sent, sent - wanted
        _fail(f"outbox differs from what was committed: missing {sorted(missing)[:4]}, extra {sorted(extra)[:4]}")


async def check_final(sim: Sim) -> None:
    """After the quiet phase (every recovery window passed)."""
    paid = provider_paid(sim)
    executed = provider_refunds(sim)
    for payment_id in sorted(paid):
        row = sim.rows("SELECT p.status, o.id AS order_id, o.status AS order_status FROM payments p JOIN orders o "
                       "ON o.id = p.order_id WHERE p.id = ?", (payment_id,))
        if not row:
            _fail(f"the provider charged payment {payment_id}, unknown here")
        row = row[0]
        if row["status"] != "succeeded":
            _fail(f"the provider charged payment {payment_id}; here it is {row['status']}")
        if row["order_status"] in PAID_STATES:
            continue
        late = sim.rows("SELECT id, status, amount FROM refunds WHERE payment_id = ? AND reason = 'late_payment'", (payment_id,))
        if late and late[0]["status"] == "failed" and executed.get(late[0]["id"], (None, None, None))[2] == "failed" and sim.rows(
                "SELECT 1 FROM alerts WHERE kind = 'refund_failed' AND object_id = ?", (late[0]["id"],)):
            continue  # the provider declined the refund (the sandbox's `refund_fails`): a person was alerted
        if not late or late[0]["status"] != "succeeded":
            _fail(f"order {row['order_id']} ({row['order_status']}): charged by the provider, neither delivered nor "
                  f"refunded by the late-payment policy ({[dict(r) for r in late]})")
    for refund_id, (_, amount, status) in sorted(executed.items()):
        if status != "succeeded":
            continue
        ours = sim.rows("SELECT status, amount, payment_id FROM refunds WHERE id = ?", (refund_id,))
        if not ours or (ours[0]["status"], ours[0]["amount"]) != ("succeeded", amount):
            _fail(f"the provider refunded {amount} for {refund_id}; here: {[dict(r) for r in ours]}")
        # Booked once: under its id, and (a refund beyond what the capture still covered, as when a
        # chargeback arrived while it was under way) its excess under `<id>:over`, with an alert.
        booked = Counter(r["reference"] for r in sim.rows(
            "SELECT reference FROM ledger_transactions WHERE kind = 'refund' AND reference IN (?, ?)",
            (refund_id, f"{refund_id}:over")))
        over = sim.rows("SELECT 1 FROM alerts WHERE kind = 'over_refund' AND object_id = ?", (ours[0]["payment_id"],))
        if not booked or max(booked.values()) != 1 or (f"{refund_id}:over" in booked and not over):
            _fail(f"refund {refund_id} executed by the provider is booked {dict(booked)} (over-refund alert: {bool(over)})")
    ours = {(r["channel"], r["provider_dispute_id"]): r["status"] for r in
            sim.rows("SELECT channel, provider_dispute_id, status FROM disputes")}
    for key, theirs in sorted(provider_disputes(sim).items()):
        if ours.get(key) != theirs["status"]:
            _fail(f"the provider's dispute {key} is {theirs['status']}; here: {ours.get(key)}")
    # Every callback a provider sent was acknowledged in the end: one that is always refused (a
    # signature or shape the channel cannot take) would otherwise hide behind the janitor's queries.
    unanswered = [(e["provider"], e["type"], e["id"]) for e in sim.outbox]
    if unanswered:
        _fail(f"provider callbacks never acknowledged after the quiet phase: {unanswered[:5]}")
    _check_refund_totals(sim, f"r.status != 'failed' AND {_NOT_WON_BACK}")
    running = sim.rows("SELECT key FROM idempotency_keys WHERE state = 'running' ORDER BY key")
    if running:
        _fail(f"idempotency keys still running after the recovery windows: {[r['key'] for r in running][:5]}")
    for row in sim.rows("SELECT sku, reserved FROM products WHERE reserved != 0"):
        _fail(f"product {row['sku']}: {row['reserved']} units still reserved after every order expired")
    # Unknown after the last query is allowed only as documented: with a payment_unresolved alert
    # for a person (never guessed), and never for a payment the provider charged (checked above).
    unknown = sim.rows("SELECT id FROM payments p WHERE status = 'unknown' AND NOT EXISTS (SELECT 1 FROM alerts a "
                       "WHERE a.kind = 'payment_unresolved' AND a.object_id = p.id) ORDER BY id")
    if unknown:
        _fail(f"payments still unknown after the janitor's last query: {[r['id'] for r in unknown][:5]}")
    _check_settlements(sim)


PAID_STATES = ("fulfilled", "partially_refunded", "refunded", "in_review", "delivering")


def _check_settlements(sim: Sim) -> None:
    """Every settlement batch's gross, refunds and chargebacks equal the ledger's of its period."""
    for row in sim.rows("SELECT id, currency, period_start_ms, period_end_ms, gross, refunds, chargebacks FROM settlements "
                        "ORDER BY id"):
        ledger = sim.rows(
            "SELECT t.kind, SUM(e.debit) AS debits, SUM(e.credit) AS credits FROM ledger_transactions t JOIN ledger_entries e "
            "ON e.transaction_id = t.id WHERE t.kind IN ('payment_captured', 'refund', 'chargeback', 'chargeback_reversed') "
            "AND e.currency = ? "
            "AND e.account LIKE 'provider_clearing:%' AND t.created_at_ms >= ? AND t.created_at_ms < ? GROUP BY t.kind",
            (row["currency"], row["period_start_ms"], row["period_end_ms"]))
        fees = sim.rows(
            "SELECT COALESCE(SUM(e.debit), 0) AS fees FROM ledger_transactions t JOIN ledger_entries e ON "
            "e.transaction_id = t.id WHERE t.kind = 'payment_captured' AND e.currency = ? AND e.account LIKE "
            "'fees_expense:%' AND t.created_at_ms >= ? AND t.created_at_ms < ?",
            (row["currency"], row["period_start_ms"], row["period_end_ms"]))[0]["fees"]
        by_kind = {r["kind"]: r for r in ledger}
        gross = (by_kind["payment_captured"]["debits"] if "payment_captured" in by_kind else 0) + fees
        refunded = by_kind["refund"]["credits"] if "refund" in by_kind else 0
        charged_back = sum(by_kind[k]["credits"] - by_kind[k]["debits"] for k in ("chargeback", "chargeback_reversed")
                           if k in by_kind)
        if (row["gross"], row["refunds"], row["chargebacks"]) != (gross, refunded, charged_back):
            _fail(f"settlement {row['id']}: gross {row['gross']}, refunds {row['refunds']}, chargebacks "
                  f"{row['chargebacks']}; the ledger's period says gross {gross}, refunds {refunded}, "
                  f"chargebacks {charged_back}")


def digest(sim: Sim) -> str:
    """A fingerprint of the end state and the trace: equal for two runs of one seed."""
    h = hashlib.sha256()
    for line in sim.trace:
        h.update(line.encode())
    try:
        for table, cols in (("orders", "id, status, amount"), ("payments", "id, status"), ("refunds", "id, status, amount"),
                            ("products", "id, stock, reserved, sold")):
            for row in sim.rows(f"SELECT {cols} FROM {table} ORDER BY id"):
                h.update(repr(tuple(row)).encode())
    except Exception as exc:  # noqa: BLE001 - a digest of a broken run is still a digest
        h.update(repr(exc).encode())
    return h.hexdigest()[:16]
