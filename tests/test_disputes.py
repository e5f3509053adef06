"""Disputes through the real server: the sandbox raising and closing them, and Stripe-signed
`charge.dispute.*` events against the Stripe stand-in. Checked against the ledger (balances,
the ledger check, a raw scan of its transactions), the player's wallet and inventory, the stand-in's
own records of what it was sent, and the webhook outbox."""

from __future__ import annotations

import httpx
import pytest

from tests.channels.standin_stripe import StripeStandIn, signed_callback_request
from tests.conftest import assert_error, assert_ledger_ok, wait_for
from tests.test_channels_e2e import _Served

pytestmark = pytest.mark.both_backends
SECRET_KEY, WEBHOOK_SECRET = "sk_test_standin_disputes_01", "whsec_standin_disputes_01"


def _payable(client) -> int:
    """What the provider holds for the merchant (provider clearing, USD): a chargeback takes the
    disputed amount out of it, a won dispute puts it back (the merchant's payable and the
    commission move in proportion; the ledger check proves the rest balances)."""
    balances = client.get("/v1/ledger/balances").json()["data"]
    return sum(b["balance"] for b in balances if b["account"].startswith("provider_clearing:") and b["currency"] == "USD")


def _merchant_payable(client) -> int:
    balances = client.get("/v1/ledger/balances").json()["data"]
    return sum(b["balance"] for b in balances if b["account"].startswith("merchant_payable:") and b["currency"] == "USD")


def _ledger_kinds(server, reference: str) -> list[str]:
    return [r[0] for r in server.raw("SELECT kind FROM ledger_transactions WHERE reference = ? ORDER BY created_at_ms, id",
                                     (reference,))]


def _paid(merchant, client, *, player_id, grants, price=500):
    product = merchant.product(client, category="currency_pack", prices={"USD": price}, grants=grants)
    order = merchant.order(client, product["id"], player_id=player_id).json()
    assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/succeed").status_code == 202
    return wait_for(lambda: (o := client.get(f"/v1/orders/{order['id']}").json())["status"] == "fulfilled" and o)


def _one_dispute(client, order_id, status=None):
    def found():
        data = client.get("/v1/disputes", params={"status": status} if status else {}).json()["data"]
        mine = [d for d in data if d["order_id"] == order_id]
        return mine[0] if mine else None
    return wait_for(found)


def test_a_sandbox_dispute_books_revokes_bundles_and_a_won_one_reverses(merchant, server):
    with merchant.client() as client:
        client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
        order = _paid(merchant, client, player_id="dsp-alice", grants=[{"type": "currency", "currency": "GEMS", "amount": 50}])
        before, payable_before = _payable(client), _merchant_payable(client)
        assert client.get("/v1/players/dsp-alice/wallet").json()["balances"] == {"GEMS": 50}

        raised = client.post(f"/v1/sandbox/payments/{order['payment']['id']}/dispute", json={"reason": "fraudulent"})
        assert raised.status_code == 202, raised.text
        dispute = _one_dispute(client, order["id"])
        assert (dispute["status"], dispute["amount"], dispute["currency"], dispute["reason"], dispute["channel"]) == (
            "needs_response", 500, "USD", "fraudulent", "sandbox")
        assert dispute["id"].startswith("dsp_") and dispute["provider_dispute_id"] == raised.json()["sandbox_dispute_id"]
        assert dispute["evidence_due_by"] and dispute["policy"] == {"revoke_goods": True, "block_player": False}

        # booked: the merchant's payable went down by the disputed amount; goods taken back
        assert before - _payable(client) == 500
        assert 0 < payable_before - _merchant_payable(client) <= 500, "the merchant's balance bears its share"
        assert _ledger_kinds(server, dispute["chargeback_refund_id"]) == ["chargeback"]
        assert client.get("/v1/players/dsp-alice/wallet").json()["balances"] == {"GEMS": 0}
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert_ledger_ok(server)

        bundle = client.get(f"/v1/disputes/{dispute['id']}/evidence").json()
        assert bundle["order"]["id"] == order["id"] and bundle["dispute"]["id"] == dispute["id"]
        assert [e["to_status"] for e in bundle["order_events"]][:3] == ["pending", "paid", "fulfilled"]
        assert bundle["delivery"]["delivered_at"] and bundle["delivery"]["lines"][0]["grants"][0]["currency"] == "GEMS"
        assert [(w["currency"], w["amount"]) for w in bundle["delivery"]["wallet"]] == [("GEMS", 50), ("GEMS", -50)]
        assert bundle["player"]["player_id"] == "dsp-alice" and bundle["player"]["orders_total"] == 1
        assert [d["id"] for d in bundle["player"]["disputes"]] == [dispute["id"]]
        assert [r["reason"] for r in bundle["player"]["refunds"]] == ["chargeback"]
        assert bundle["network"] == {"ips": [], "devices": []}, "the order named no IP or device"
        assert bundle["risk_decision"]["action"] == "allow" and bundle["risk_decision"]["attributes"]["amount"] == order["amount"]

        submitted = client.post(f"/v1/disputes/{dispute['id']}/submit", json={"text": "The gems were spent in game."})
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["status"] == "under_review" and submitted.json()["evidence_submitted_at"]
        [evidence] = server.raw("SELECT evidence, status FROM sandbox_disputes WHERE id = ?", (dispute["provider_dispute_id"],))
        assert evidence[1] == "under_review" and "The gems were spent in game." in evidence[0]
        assert_error(client.post(f"/v1/disputes/{dispute['id']}/submit", json={}), 409, "conflict_error",
                     "dispute_evidence_already_submitted")

        assert client.post(f"/v1/sandbox/disputes/{dispute['id']}/close", json={"outcome": "won"}).status_code == 202
        won = _one_dispute(client, order["id"], status="won")
        assert won["closed_at"]
        assert _payable(client) == before, "won: the chargeback is reversed"
        assert _merchant_payable(client) == payable_before
        assert _ledger_kinds(server, dispute["chargeback_refund_id"]) == ["chargeback", "chargeback_reversed"]
        assert_ledger_ok(server)
        assert_error(client.post(f"/v1/sandbox/disputes/{dispute['id']}/close", json={"outcome": "lost"}), 409,
                     "conflict_error", "invalid_state")
        events = [e["type"] for e in client.get(f"/v1/disputes/{dispute['id']}/events").json()["data"]]
        assert events == ["dispute.created", "evidence_submitted", "dispute.updated", "dispute.closed"]
    types = [r[0] for r in server.raw("SELECT type FROM webhook_events WHERE merchant_id = ? AND type LIKE 'dispute.%'"
                                      " ORDER BY id", (merchant.id,))]  # ids sort in the order they were made
    assert types == ["dispute.created", "dispute.updated", "dispute.closed"]


def test_a_lost_dispute_keeps_the_chargeback_and_the_policy_can_keep_the_goods(merchant, server):
    with merchant.client() as client:
        policy = client.put("/v1/account/dispute_policy", json={"revoke_goods": False, "block_player": True})
        assert policy.status_code == 200 and policy.json() == {"revoke_goods": False, "block_player": True}
        order = _paid(merchant, client, player_id="dsp-bob", grants=[{"type": "currency", "currency": "GEMS", "amount": 20}])
        before = _payable(client)
        assert client.post(f"/v1/sandbox/payments/{order['payment']['id']}/dispute", json={"amount": 200}).status_code == 202
        dispute = _one_dispute(client, order["id"])
        assert dispute["amount"] == 200 and dispute["policy"] == {"revoke_goods": False, "block_player": True}
        assert before - _payable(client) == 200
        assert client.get("/v1/players/dsp-bob/wallet").json()["balances"] == {"GEMS": 20}, "the policy kept the goods"
        events = client.get(f"/v1/disputes/{dispute['id']}/events").json()["data"]
        [entry] = client.get("/v1/risk/lists/blocked_players/items").json()["data"]
        assert [(e["type"], e["detail"]) for e in events if e["type"] == "player_blocked"] == [
            ("player_blocked", f"blocked_players: {entry['id']}")]
        assert (entry["value"], entry["reason"]) == ("dsp-bob", f"dispute {dispute['id']}")
        again = merchant.order(client, order["items"][0]["product_id"], player_id="dsp-bob").json()
        assert again["status"] == "failed" and again["payment"]["failure_code"] == "risk_blocked", "the list blocks them"
        assert client.post(f"/v1/sandbox/disputes/{dispute['provider_dispute_id']}/close", json={"outcome": "lost"}).status_code == 202
        _one_dispute(client, order["id"], status="lost")
        assert before - _payable(client) == 200, "lost: the chargeback stays"
        assert _ledger_kinds(server, dispute["chargeback_refund_id"]) == ["chargeback"]
        assert_ledger_ok(server)
        client.put("/v1/account/dispute_policy", json={"revoke_goods": True, "block_player": False})


def test_sandbox_dispute_refusals(merchant):
    with merchant.client() as client:
        product = merchant.product(client)
        pending = merchant.order(client, product["id"], player_id="dsp-carol").json()
        assert_error(client.post(f"/v1/sandbox/payments/{pending['payment']['id']}/dispute", json={}), 409,
                     "conflict_error", "invalid_state")
        order = _paid(merchant, client, player_id="dsp-carol", grants=[{"type": "currency", "currency": "GEMS", "amount": 1}])
        assert_error(client.post(f"/v1/sandbox/payments/{order['payment']['id']}/dispute", json={"amount": 501}), 400,
                     "invalid_request_error", "dispute_amount_too_large", "amount")
        assert_error(client.get("/v1/disputes/dsp_nope"), 404, "invalid_request_error", "not_found")
        assert_error(client.get("/v1/disputes", params={"status": "open"}), 400, "invalid_request_error", "parameter_invalid",
                     "status")


def test_the_sandbox_refuses_to_refund_a_disputed_payment_until_the_dispute_is_won(merchant, server):
    """As card providers do (Stripe's `charge_disputed`): while the bank holds a dispute, a refund
    would pay the payer twice. The sandbox's own book is the witness: its refund rows."""
    with merchant.client() as client:
        order = _paid(merchant, client, player_id="dsp-gus", grants=[{"type": "currency", "currency": "GEMS", "amount": 5}])
        payment_id = order["payment"]["id"]
        assert client.post(f"/v1/sandbox/payments/{payment_id}/dispute", json={"amount": 200}).status_code == 202
        dispute = _one_dispute(client, order["id"])
        assert dispute["amount"] == 200

        refused = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 100})
        assert refused.status_code in (200, 201, 202), refused.text
        refund = wait_for(lambda: (r := client.get(f"/v1/refunds/{refused.json()['id']}").json())["status"] != "pending" and r)
        assert (refund["status"], refund["failure_code"]) == ("failed", "charge_disputed")
        book = server.raw("SELECT status, failure_code FROM sandbox_refunds WHERE payment_id = ?", (payment_id,))
        assert book == [("failed", "charge_disputed")], "the sandbox kept the refund refused"

        assert client.post(f"/v1/sandbox/disputes/{dispute['id']}/close", json={"outcome": "won"}).status_code == 202
        _one_dispute(client, order["id"], status="won")
        allowed = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 100})
        assert wait_for(lambda: client.get(f"/v1/refunds/{allowed.json()['id']}").json()["status"] == "succeeded")
        book = sorted(server.raw("SELECT status FROM sandbox_refunds WHERE payment_id = ?", (payment_id,)))
        assert book == [("failed",), ("succeeded",)]
        assert_ledger_ok(server)


@pytest.fixture(scope="module")
def stripe(server):
    standin = StripeStandIn(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET, now_s=lambda: server.clock.now_ms() // 1000)
    served = _Served(standin)
    yield standin, served.url
    served.stop()


def _post_stripe(server, merchant_id, event_type, obj, event_id=None):
    event = signed_callback_request(event_type, obj, secret=WEBHOOK_SECRET, now_s=server.clock.now_ms() // 1000,
                                    event_id=event_id)
    answer = httpx.post(f"{server.base_url}/v1/channels/stripe/webhook/{merchant_id}", content=event.body, headers=event.headers)
    assert answer.status_code == 200, answer.text


def test_a_stripe_dispute_is_recorded_once_submitted_with_evidence_and_won(server, stripe):
    standin, url = stripe
    merchant = server.new_merchant()
    with merchant.client() as client:
        assert client.put("/v1/channels/stripe", json={"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET,
                                                       "api_base": url}).status_code == 200
        product = merchant.product(client, category="item", prices={"USD": 1999}, grants=[{"type": "item", "sku": "sword", "quantity": 1}])
        order = merchant.order(client, product["id"], player_id="dsp-dave", channel="stripe", ip="203.0.113.9",
                               device_id="dev-dave").json()
        session_id = next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == order["payment"]["id"])
        intent = standin.pay(session_id)
        _post_stripe(server, merchant.id, "checkout.session.completed", standin.public_session(session_id))
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        assert client.get(f"/v1/orders/{order['id']}").json()["status"] == "fulfilled"
        assert [i["sku"] for i in client.get("/v1/players/dsp-dave/inventory").json()["items"]] == ["sword"]
        before = _payable(client)

        dispute_object = standin.open_dispute(intent, reason="fraudulent")
        _post_stripe(server, merchant.id, "charge.dispute.created", dispute_object)
        _post_stripe(server, merchant.id, "charge.dispute.created", dispute_object)  # the same dispute under a new event id
        [dispute] = client.get("/v1/disputes").json()["data"]
        assert (dispute["provider_dispute_id"], dispute["amount"], dispute["status"]) == (dispute_object["id"], 1999,
                                                                                          "needs_response")
        assert dispute["evidence_due_by"] is not None
        assert before - _payable(client) == 1999, "booked once, though created twice"
        assert client.get("/v1/players/dsp-dave/inventory").json()["items"] == [], "the sword was taken back"
        assert_ledger_ok(server)

        submitted = client.post(f"/v1/disputes/{dispute['id']}/submit", json={"text": "Delivered at once."})
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["status"] == "under_review"
        [call] = [r for r in standin.requests if r.method == "POST" and r.path == f"/v1/disputes/{dispute_object['id']}"]
        assert call.headers.get("idempotency-key") == f"{dispute['id']}:evidence"
        sent = standin.disputes[dispute_object["id"]]
        assert sent["evidence_details"]["submission_count"] == 1
        assert set(sent["evidence"]) >= {"product_description", "service_date", "uncategorized_text", "access_activity_log"}
        assert "sword" in sent["evidence"]["product_description"] and "Delivered at once." in sent["evidence"]["uncategorized_text"]
        assert order["id"] in sent["evidence"]["access_activity_log"]
        assert sent["evidence"]["customer_purchase_ip"] == "203.0.113.9"
        bundle = client.get(f"/v1/disputes/{dispute['id']}/evidence").json()
        assert bundle["network"] == {"ips": ["203.0.113.9"], "devices": ["dev-dave"]}
        decision = client.get(f"/v1/orders/{order['id']}/risk").json()
        assert bundle["risk_decision"]["action"] == decision["action"]  # (the score varies with the hour of day)
        assert bundle["risk_decision"]["stage"] == decision["stage"] == "callback"

        _post_stripe(server, merchant.id, "charge.dispute.updated", {**sent, "status": "under_review"})
        _post_stripe(server, merchant.id, "charge.dispute.closed", {**sent, "status": "won"})
        assert client.get(f"/v1/disputes/{dispute['id']}").json()["status"] == "won"
        assert _payable(client) == before
        _post_stripe(server, merchant.id, "charge.dispute.closed", {**sent, "status": "won"})  # again: nothing twice
        assert _payable(client) == before
        assert _ledger_kinds(server, dispute["chargeback_refund_id"]) == ["chargeback", "chargeback_reversed"]
        assert_ledger_ok(server)


def test_a_stripe_dispute_closed_before_its_created_event_is_booked_then_lost(server, stripe):
    standin, url = stripe
    merchant = server.new_merchant()
    with merchant.client() as client:
        client.put("/v1/channels/stripe", json={"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": url})
        product = merchant.product(client, category="currency_pack", prices={"USD": 1000},
                                   grants=[{"type": "currency", "currency": "GEMS", "amount": 10}])
        order = merchant.order(client, product["id"], player_id="dsp-erin", channel="stripe").json()
        session_id = next(s for s, v in standin.sessions.items() if v["metadata"].get("apss_payment_id") == order["payment"]["id"])
        intent = standin.pay(session_id)
        _post_stripe(server, merchant.id, "payment_intent.succeeded", intent)
        before = _payable(client)
        dispute_object = standin.open_dispute(intent, amount=400)
        _post_stripe(server, merchant.id, "charge.dispute.closed", {**dispute_object, "status": "lost"})
        _post_stripe(server, merchant.id, "charge.dispute.created", dispute_object)  # late: stale
        [dispute] = client.get("/v1/disputes").json()["data"]
        assert (dispute["status"], dispute["amount"]) == ("lost", 400)
        assert before - _payable(client) == 400
        assert_error(client.post(f"/v1/disputes/{dispute['id']}/submit", json={}), 409, "conflict_error", "invalid_state")
        # Stripe refuses to refund a charged-back charge (`charge_disputed`): the refund fails, nothing is booked twice
        refused = client.post(f"/v1/orders/{order['id']}/refunds", json={"amount": 100})
        assert refused.status_code in (200, 201, 202), refused.text
        refund = wait_for(lambda: (r := client.get(f"/v1/refunds/{refused.json()['id']}").json())["status"] != "pending" and r)
        assert refund["status"] == "failed" and refund["failure_code"] == "charge_disputed", refund
        assert not [r for r in standin.refunds.values() if r["payment_intent"] == intent["id"]], "Stripe executed no refund"
        assert before - _payable(client) == 400
        assert_ledger_ok(server)


def test_a_won_dispute_settles_as_a_chargeback_and_its_reversal(server):
    merchant = server.new_merchant()
    with merchant.client() as client:
        assert client.put("/v1/account/settlement_schedule", json={"cycle": "manual"}).status_code == 200
        order = _paid(merchant, client, player_id="dsp-fay", grants=[{"type": "currency", "currency": "GEMS", "amount": 5}])
        client.post(f"/v1/sandbox/payments/{order['payment']['id']}/dispute", json={})
        dispute = _one_dispute(client, order["id"])
        client.post(f"/v1/sandbox/disputes/{dispute['id']}/close", json={"outcome": "won"})
        _one_dispute(client, order["id"], status="won")
        server.clock.advance(seconds=1)
        made = client.post("/v1/settlements/run")
        assert made.status_code == 200, made.text
        [batch] = made.json()["data"]
        assert (batch["gross"], batch["chargebacks"]) == (500, 0), batch
        lines = client.get(f"/v1/settlements/{batch['id']}").json()["lines"]
        refund_id = dispute["chargeback_refund_id"]
        assert sorted((line["kind"], line["reference"], line["amount"]) for line in lines if line["kind"] == "chargeback") == [
            ("chargeback", refund_id, -500), ("chargeback", f"{refund_id}:reversed", 500)]
    assert_ledger_ok(server)
