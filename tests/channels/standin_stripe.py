"""A local stand-in for the parts of Stripe's API that the stripe channel uses.

A plain ASGI app (serve it with httpx.ASGITransport). It checks what Stripe checks: the Bearer
secret key, form encoding with nested bracket keys and no unknown parameter, the Idempotency-Key
(a replay with the same parameters returns the first answer with `Idempotent-Replayed: true`, with
other parameters a 400 idempotency_error), lower-case currencies and Stripe's amount rules; and it
answers with Stripe's JSON shapes, keeping sessions, PaymentIntents and refunds in memory.
Saved methods: a session made with `customer_creation=always` gets a Customer when the payer pays,
and with `payment_intent_data[setup_future_usage]=off_session` its payment method is attached to
that Customer; `POST /v1/payment_intents` (`off_session=true&confirm=true`) charges such a method,
declining with HTTP 402 `card_error` as Stripe does for the wire amounts in `OFF_SESSION_DECLINES`.
`signed_event` builds the webhook Stripe would send, signed by stripe-python's own
`WebhookSignature.generate_signature_header`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import stripe

from apss.channels.base import CallbackRequest
from tests.asgi import read_body

__all__ = ["OFF_SESSION_DECLINES", "Recorded", "StripeStandIn", "signed_callback_request"]

_ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
_SESSION_KEYS = {
    "mode", "success_url", "cancel_url", "client_reference_id",
    "line_items[0][price_data][currency]", "line_items[0][price_data][unit_amount]",
    "line_items[0][price_data][product_data][name]", "line_items[0][quantity]",
}
_OPTIONAL_SESSION_KEYS = {"expires_at", "customer_creation", "payment_intent_data[setup_future_usage]",
                          "payment_method_options[card][request_three_d_secure]"}
_INTENT_KEYS = {"amount", "currency", "customer", "payment_method", "off_session", "confirm", "description"}
# The stand-in's test cards: an off-session charge of these wire amounts is declined with this code
# (`authentication_required` is the bank asking for 3DS, which an absent payer cannot do).
OFF_SESSION_DECLINES = {4002: "insufficient_funds", 4041: "stolen_card", 4043: "lost_card", 4065: "authentication_required"}
# Dispute statuses under which Stripe refuses a refund (`charge_disputed`): the bank took the money
# back, or holds it while it decides. An inquiry (`warning_*`) took nothing: a refund closes it.
_CHARGED_BACK = ("needs_response", "under_review", "lost")
_SESSION_EXPIRY_S = (30 * 60, 24 * 3600)  # Stripe's window for expires_at, from the request's time
_METADATA_RE = re.compile(r"^(metadata|payment_intent_data\[metadata\])\[([A-Za-z0-9_]{1,40})\]$")


def _new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


class _StripeFailure(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        self.status = status
        self.error = error


def _invalid(message: str, *, code: str = "parameter_invalid", param: str | None = None) -> _StripeFailure:
    return _StripeFailure(400, {"type": "invalid_request_error", "code": code, "param": param, "message": message})


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StripeStandIn:
    secret_key: str
    webhook_secret: str
    # Recent API versions (2025-03-31.basil+) make no PaymentIntent until the payer confirms.
    pi_on_create: bool = False
    refund_status: str = "succeeded"
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses to answer next, in order
    lose_answers: int = 0  # carry out this many next POSTs, then answer 500 (an outcome the caller cannot know)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_methods: dict[str, str] = field(default_factory=dict)  # pm_ -> the cus_ it is attached to, or ""
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    now_s: Callable[[], int] = field(default=lambda: int(time.time()))  # Stripe's clock
    _idempotency: dict[str, tuple[str, bytes, int, bytes]] = field(default_factory=dict)

    # --- ASGI

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(scope, receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        record = Recorded(scope["method"], scope["path"], scope["query_string"].decode(), headers, body)
        self.requests.append(record)
        status, payload, extra = self._answer(record)
        out = [(b"content-type", b"application/json"), (b"request-id", b"req_standin")] + extra
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})

    def _answer(self, record: Recorded) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if self.fail_next:
            status = self.fail_next.pop(0)
            return status, json.dumps({"error": {"type": "api_error", "message": "stand-in failure"}}).encode(), []
        if record.headers.get("authorization") != f"Bearer {self.secret_key}":
            masked = "sk_test_****" + self.secret_key[-4:]
            error = {"type": "invalid_request_error", "message": f"Invalid API Key provided: {masked}"}
            return 401, json.dumps({"error": error}).encode(), []
        if record.method == "POST":
            answer = self._idempotent(record)
            if self.lose_answers > 0:
                self.lose_answers -= 1
                return 500, json.dumps({"error": {"type": "api_error", "message": "stand-in lost the answer"}}).encode(), []
            return answer
        return self._dispatch(record)

    def _idempotent(self, record: Recorded) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        key = record.headers.get("idempotency-key")
        assert key, "the channel must send an Idempotency-Key on every POST"
        if record.headers.get("content-type") != "application/x-www-form-urlencoded":
            return 400, b'{"error":{"type":"invalid_request_error","message":"form encoding expected"}}', []
        seen = self._idempotency.get(key)
        if seen is not None:
            if (seen[0], seen[1]) != (record.path, record.body):
                error = {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}
                return 400, json.dumps({"error": error}).encode(), []
            return seen[2], seen[3], [(b"idempotent-replayed", b"true")]
        status, payload, extra = self._dispatch(record)
        self._idempotency[key] = (record.path, record.body, status, payload)
        return status, payload, extra

    def _dispatch(self, record: Recorded) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            result = self._route(record)
        except _StripeFailure as failure:
            return failure.status, json.dumps({"error": failure.error}).encode(), []
        return 200, json.dumps(result, ensure_ascii=False).encode(), []

    def _route(self, record: Recorded) -> dict[str, Any]:
        method, path = record.method, record.path
        query = dict(parse_qsl(record.query, keep_blank_values=True))
        if (method, path) == ("POST", "/v1/checkout/sessions"):
            return self._create_session(_form(record.body))
        if (method, path) == ("POST", "/v1/refunds"):
            return self._create_refund(_form(record.body))
        if (method, path) == ("POST", "/v1/payment_intents"):
            return self._create_intent(_form(record.body))
        if (method, path) == ("GET", "/v1/payment_intents/search"):
            return self._search(query.get("query", ""))
        if (method, path) == ("GET", "/v1/checkout/sessions"):
            found = [self.public_session(s) for s, v in self.sessions.items()
                     if "payment_intent" not in query or v["payment_intent"] == query["payment_intent"]]
            return {"object": "list", "data": found[:int(query.get("limit", "10"))], "has_more": False, "url": path}
        if method == "POST" and re.fullmatch(r"/v1/checkout/sessions/[A-Za-z0-9_]+/expire", path):
            return self._expire(path.split("/")[4], _form(record.body))
        if (method, path) == ("GET", "/v1/refunds"):
            found = [r for r in self.refunds.values() if r["payment_intent"] == query.get("payment_intent", r["payment_intent"])]
            return {"object": "list", "data": found[:int(query.get("limit", "10"))], "has_more": False, "url": path}
        if method == "GET" and path.startswith("/v1/refunds/"):
            return self._get(self.refunds, path.rsplit("/", 1)[1])
        if method == "GET" and path.startswith("/v1/checkout/sessions/"):
            session = self._get(self.sessions, path.rsplit("/", 1)[1])
            if "payment_intent" in (query.get("expand[0]"), query.get("expand[]")) and session["payment_intent"]:
                return {**session, "payment_intent": self.intents[session["payment_intent"]]}
            return session
        if method == "POST" and re.fullmatch(r"/v1/disputes/[A-Za-z0-9_]+", path):
            return self._update_dispute(path.rsplit("/", 1)[1], _form(record.body))
        if method == "GET" and path.startswith("/v1/payment_intents/"):
            return self._get(self.intents, path.rsplit("/", 1)[1])
        raise _StripeFailure(404, {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method}: {path})"})

    @staticmethod
    def _get(table: dict[str, dict[str, Any]], object_id: str) -> dict[str, Any]:
        if object_id not in table:
            raise _invalid(f"No such object: '{object_id}'", code="resource_missing", param="id")
        return table[object_id]

    # --- resources

    def _create_session(self, form: dict[str, str]) -> dict[str, Any]:
        for key in form:
            if key not in _SESSION_KEYS | _OPTIONAL_SESSION_KEYS and not _METADATA_RE.match(key):
                raise _invalid(f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        missing = {k for k in _SESSION_KEYS if k != "client_reference_id"} - form.keys()
        if missing:
            raise _invalid(f"Missing required param: {sorted(missing)[0]}", code="parameter_missing")
        if form["mode"] != "payment" or form["line_items[0][quantity]"] != "1":
            raise _invalid("unexpected mode or quantity")
        if form.get("customer_creation", "if_required") not in ("always", "if_required"):
            raise _invalid("Invalid customer_creation", param="customer_creation")
        usage = form.get("payment_intent_data[setup_future_usage]")
        if usage not in (None, "on_session", "off_session"):
            raise _invalid("Invalid setup_future_usage", param="payment_intent_data[setup_future_usage]")
        three_ds = form.get("payment_method_options[card][request_three_d_secure]")
        if three_ds not in (None, "any", "automatic", "challenge"):
            raise _invalid("Invalid request_three_d_secure", param="payment_method_options[card][request_three_d_secure]")
        currency = form["line_items[0][price_data][currency]"]
        amount = _check_amount(form["line_items[0][price_data][unit_amount]"], currency)
        now_s = self.now_s()
        expires_at = form.get("expires_at", str(now_s + _SESSION_EXPIRY_S[1]))
        if not expires_at.isdigit() or not now_s + _SESSION_EXPIRY_S[0] <= int(expires_at) <= now_s + _SESSION_EXPIRY_S[1]:
            raise _invalid("The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                           code="parameter_invalid_integer", param="expires_at")
        session_id = _new_id("cs")
        metadata = _metadata(form, "metadata")
        session = {
            "id": session_id, "object": "checkout.session", "mode": "payment",
            "amount_subtotal": amount, "amount_total": amount, "currency": currency,
            "client_reference_id": form.get("client_reference_id"), "metadata": metadata,
            "payment_intent": None, "payment_status": "unpaid", "status": "open", "customer": None,
            "customer_creation": form.get("customer_creation", "if_required"),
            "success_url": form["success_url"], "cancel_url": form["cancel_url"], "expires_at": int(expires_at),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
            "_pi_metadata": _metadata(form, "payment_intent_data[metadata]"), "_setup_future_usage": usage,
            "_request_three_d_secure": three_ds,
        }
        self.sessions[session_id] = session
        if self.pi_on_create:
            session["payment_intent"] = self._new_intent(session)["id"]
        return {k: v for k, v in session.items() if not k.startswith("_")}

    def _expire(self, session_id: str, form: dict[str, str]) -> dict[str, Any]:
        if form:
            raise _invalid(f"Received unknown parameter: {next(iter(form))}", code="parameter_unknown")
        session = self._get(self.sessions, session_id)
        if session["status"] != "open":
            # Stripe's words; the channel must not depend on an error code here.
            raise _invalid('Only Checkout Sessions with a status in ["open"] can be expired.')
        session.update(status="expired")
        return self.public_session(session_id)

    def _new_intent(self, session: dict[str, Any]) -> dict[str, Any]:
        intent = {
            "id": _new_id("pi"), "object": "payment_intent", "amount": session["amount_total"],
            "amount_received": 0, "currency": session["currency"], "status": "requires_payment_method",
            "metadata": dict(session["_pi_metadata"]), "last_payment_error": None, "latest_charge": None,
            "customer": None, "payment_method": None, "setup_future_usage": session["_setup_future_usage"],
        }
        self.intents[intent["id"]] = intent
        return intent

    def _create_intent(self, form: dict[str, str]) -> dict[str, Any]:
        """A confirmed off-session PaymentIntent on a saved method (the only kind APSS creates)."""
        for key in form:
            if key not in _INTENT_KEYS and not (key.startswith("metadata[") and _METADATA_RE.match(key)):
                raise _invalid(f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        if (form.get("off_session"), form.get("confirm")) != ("true", "true"):
            raise _invalid("the stand-in takes only confirmed off-session PaymentIntents", param="off_session")
        customer, method = form.get("customer", ""), form.get("payment_method", "")
        if self.payment_methods.get(method) != customer or not customer:
            raise _invalid(f"The provided PaymentMethod {method!r} is not attached to customer {customer!r}.",
                           code="payment_method_invalid_parameter", param="payment_method")
        currency = form.get("currency", "")
        amount = _check_amount(form.get("amount", ""), currency)
        intent = {
            "id": _new_id("pi"), "object": "payment_intent", "amount": amount, "amount_received": 0, "currency": currency,
            "status": "requires_payment_method", "metadata": _metadata(form, "metadata"), "last_payment_error": None,
            "latest_charge": _new_id("ch"), "customer": customer, "payment_method": method, "setup_future_usage": None,
            "description": form.get("description"),
        }
        self.intents[intent["id"]] = intent
        decline = OFF_SESSION_DECLINES.get(amount)
        if decline is not None:
            code = "authentication_required" if decline == "authentication_required" else "card_declined"
            error = {"type": "card_error", "code": code, "decline_code": decline, "message": "Your card was declined.",
                     "payment_method": {"id": method}}
            intent["last_payment_error"] = error
            raise _StripeFailure(402, {**error, "payment_intent": dict(intent)})
        intent.update(status="succeeded", amount_received=amount)
        return intent

    def off_session_calls(self) -> list[dict[str, str]]:
        """The form of every off-session PaymentIntent the channel asked for."""
        return [_form(r.body) for r in self.requests if (r.method, r.path) == ("POST", "/v1/payment_intents")]

    def _create_refund(self, form: dict[str, str]) -> dict[str, Any]:
        allowed = {"payment_intent", "amount", "reason"}
        for key in form:
            if key not in allowed and not (key.startswith("metadata[") and _METADATA_RE.match(key)):
                raise _invalid(f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        intent = self._get(self.intents, form.get("payment_intent", ""))
        if intent["status"] != "succeeded":
            raise _invalid("This PaymentIntent has no successful charge to refund.", code="charge_not_refundable")
        if any(d["payment_intent"] == intent["id"] and d["status"] in _CHARGED_BACK for d in self.disputes.values()):
            raise _invalid(f"Charge {intent['latest_charge']} has been charged back; cannot issue a refund.",
                           code="charge_disputed")
        refunded = sum(r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent["id"] and r["status"] != "failed")
        amount = _check_amount(form.get("amount", str(intent["amount_received"] - refunded)), intent["currency"])
        if amount > intent["amount_received"] - refunded:
            raise _invalid("Refund amount is greater than unrefunded amount on charge", code="amount_too_large", param="amount")
        if "reason" in form and form["reason"] not in ("duplicate", "fraudulent", "requested_by_customer"):
            raise _invalid("Invalid reason", param="reason")
        refund = {
            "id": _new_id("re"), "object": "refund", "amount": amount, "currency": intent["currency"],
            "charge": intent["latest_charge"], "payment_intent": intent["id"], "status": self.refund_status,
            "reason": form.get("reason"), "metadata": _metadata(form, "metadata"), "failure_reason": None,
            "created": 1_700_000_000,
        }
        self.refunds[refund["id"]] = refund
        return refund

    def _search(self, query: str) -> dict[str, Any]:
        match = re.fullmatch(r"metadata\['([A-Za-z0-9_]+)'\]:'([^']*)'", query)
        if match is None:
            raise _invalid("Invalid search query", param="query")
        found = [i for i in self.intents.values() if i["metadata"].get(match[1]) == match[2]]
        return {"object": "search_result", "data": found[:1], "has_more": len(found) > 1, "url": "/v1/payment_intents/search"}

    # --- test controls (what the payer and Stripe do off the API)

    def pay(self, session_id: str, *, succeeded: bool = True, decline_code: str = "insufficient_funds") -> dict[str, Any]:
        """The payer completes (or fails) the Checkout page; returns the PaymentIntent."""
        session = self.sessions[session_id]
        assert session["status"] == "open", f"the payer cannot pay a {session['status']} checkout session"
        intent = self.intents[session["payment_intent"]] if session["payment_intent"] else self._new_intent(session)
        session["payment_intent"] = intent["id"]
        if succeeded:
            method = _new_id("pm")
            intent.update(status="succeeded", amount_received=intent["amount"], last_payment_error=None,
                          latest_charge=_new_id("ch"), payment_method=method)
            session.update(status="complete", payment_status="paid")
            if session["customer_creation"] == "always":
                session["customer"] = intent["customer"] = _new_id("cus")
            # setup_future_usage attaches the method to the Customer, when there is one
            saved = session["customer"] is not None and session["_setup_future_usage"] is not None
            self.payment_methods[method] = session["customer"] if saved else ""
        else:
            error = {"type": "card_error", "code": "card_declined", "decline_code": decline_code}
            intent.update(status="requires_payment_method", last_payment_error=error)
        return intent

    def expire_by_time(self, session_id: str) -> None:
        """Stripe expiring the session itself at its `expires_at`."""
        self.sessions[session_id]["status"] = "expired"

    def expire_calls(self) -> list[str]:
        """The session ids the channel asked to expire."""
        return [r.path.split("/")[4] for r in self.requests if r.method == "POST" and r.path.endswith("/expire")]

    def open_dispute(self, intent: dict[str, Any], *, amount: int | None = None, reason: str = "fraudulent",
                     status: str = "needs_response") -> dict[str, Any]:
        """The cardholder's bank disputes the charge: the dispute object Stripe's events carry."""
        dispute = {"id": _new_id("dp"), "object": "dispute", "amount": amount or intent["amount"],
                   "currency": intent["currency"], "charge": intent["latest_charge"], "payment_intent": intent["id"],
                   "reason": reason, "status": status, "created": self.now_s(), "livemode": False,
                   "evidence": {}, "evidence_details": {"due_by": self.now_s() + 7 * 86_400, "has_evidence": False,
                                                        "past_due": False, "submission_count": 0},
                   "is_charge_refundable": False, "metadata": {}}
        self.disputes[dispute["id"]] = dispute
        return dispute

    def _update_dispute(self, dispute_id: str, form: dict[str, str]) -> dict[str, Any]:
        """`POST /v1/disputes/{id}`: evidence[...] fields kept, `submit=true` submits them (once)."""
        dispute = self._get(self.disputes, dispute_id)
        if dispute["status"] not in ("needs_response", "warning_needs_response"):
            raise _invalid("This dispute is already closed or under review.", code="dispute_already_submitted")
        unknown = [k for k in form if not k.startswith(("evidence[", "metadata[")) and k not in ("submit",)]
        if unknown:
            raise _invalid(f"Received unknown parameter: {unknown[0]}", param=unknown[0])
        dispute["evidence"].update({k[len("evidence["):-1]: v for k, v in form.items() if k.startswith("evidence[")})
        dispute["metadata"].update(_metadata(form, "metadata"))
        if form.get("submit", "true") == "true":
            dispute["status"] = "under_review" if dispute["status"] == "needs_response" else "warning_under_review"
            dispute["evidence_details"]["submission_count"] += 1
            dispute["evidence_details"]["has_evidence"] = True
        return dispute

    def public_session(self, session_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.sessions[session_id].items() if not k.startswith("_")}

    def signed_event(self, event_type: str, obj: dict[str, Any], *, now_s: int, event_id: str | None = None,
                     timestamp_s: int | None = None) -> CallbackRequest:
        return signed_callback_request(
            event_type, obj, secret=self.webhook_secret, now_s=now_s, event_id=event_id, timestamp_s=timestamp_s
        )


def signed_callback_request(event_type: str, obj: dict[str, Any], *, secret: str, now_s: int,
                            event_id: str | None = None, timestamp_s: int | None = None) -> CallbackRequest:
    """The POST Stripe makes to the webhook endpoint: compact JSON (non-ASCII kept as UTF-8),
    `Stripe-Signature` from stripe-python's own generator."""
    event = {
        "id": event_id or _new_id("evt"), "object": "event", "api_version": "2025-03-31.basil",
        "created": now_s, "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": event_type,
    }
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    header = stripe.WebhookSignature.generate_signature_header(text, secret, timestamp=timestamp_s or now_s)
    headers = {"content-type": "application/json; charset=utf-8", "stripe-signature": header,
               "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    return CallbackRequest(headers=headers, body=text.encode(), now_s=now_s)


def _form(body: bytes) -> dict[str, str]:
    pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _invalid("a parameter was sent twice")
    return form


def _metadata(form: dict[str, str], prefix: str) -> dict[str, str]:
    metadata = {}
    for key, value in form.items():
        match = _METADATA_RE.match(key)
        if match and match[1] == prefix:
            metadata[match[2]] = value
    return metadata


def _check_amount(text: str, currency: str) -> int:
    if not text.isdigit():
        raise _invalid("Invalid integer", param="amount")
    if currency != currency.lower() or not re.fullmatch(r"[a-z]{3}", currency):
        raise _invalid(f"Invalid currency: {currency}", param="currency")
    amount = int(text)
    if currency in _THREE_DECIMAL and amount % 10:
        raise _invalid("Three-decimal amounts must end in 0", code="invalid_amount", param="amount")
    if currency == "isk" and amount % 100:
        raise _invalid("Currency ISK has become effectively zero-decimal", code="invalid_charge_amount_no_decimal_compatible")
    minimum = 50 if currency not in _ZERO_DECIMAL else 1
    if amount < minimum and currency == "usd":
        raise _invalid("Amount must be at least $0.50 usd", code="amount_too_small", param="amount")
    return amount
