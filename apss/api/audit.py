"""The audit log's hook: every request to a route in `ACTIONS` (merchant and admin actions that
change money, rules, lists, keys, KYC or personal data) is recorded once it has its answer, and
before the answer is sent: who (merchant id or admin, and a key reference, never the key), what
(the action and the object id), when, from where (the client IP, sealed as personal data).

A new changing route joins by adding its (method, path template) here; tests/test_privacy.py
fails for a POST, PUT, PATCH or DELETE route that is in neither `ACTIONS` nor `NOT_AUDITED`.
Players appear only by pseudonym; requests that fail authentication are not recorded.

A route whose service can write the row inside its own transaction does so (`in_transaction`:
POST /v1/orders, whose sandbox orders are then one write transaction, not two); the middleware
then leaves that request alone. The row is the one the middleware would have written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from apss.api.common import authenticated_merchant, bearer_of
from apss.errors import ApssError
from apss.services.idempotency import Outcome
from apss.services.players.privacy import key_ref

__all__ = ["ACTIONS", "NOT_AUDITED", "AuditMiddleware", "in_transaction"]

log = logging.getLogger("apss.audit")

_AUDITED = "apss.audited"  # set in a request's scope once its row was committed with its own transaction

ACTIONS: dict[tuple[str, str], str] = {
    # admin
    ("POST", "/v1/merchants"): "merchant.create",
    ("POST", "/v1/merchants/{merchant_id}/keys"): "merchant.key_roll",
    ("PUT", "/v1/merchants/{merchant_id}/finance"): "merchant.finance_update",
    ("POST", "/v1/admin/ledger/adjustments"): "ledger.adjustment",
    ("POST", "/v1/admin/settlements/{settlement_id}/paid"): "settlement.mark_paid",
    ("PUT", "/v1/admin/fx_rates"): "fx_rates.set",
    ("POST", "/v1/admin/fx_rates/import"): "fx_rates.import",
    ("POST", "/v1/admin/clock/advance"): "clock.advance",
    ("POST", "/v1/admin/privacy/keys/rotate"): "privacy.key_rotate",
    # merchants: money
    ("POST", "/v1/orders"): "order.create",
    ("POST", "/v1/orders/{order_id}/cancel"): "order.cancel",
    ("POST", "/v1/orders/{order_id}/refunds"): "refund.create",
    ("POST", "/v1/players/{player_id}/wallet/debit"): "wallet.debit",
    ("POST", "/v1/iap/apple"): "iap.apple_purchase",
    ("POST", "/v1/iap/google"): "iap.google_purchase",
    ("POST", "/v1/subscriptions"): "subscription.create",
    ("POST", "/v1/subscriptions/{subscription_id}/cancel"): "subscription.cancel",
    ("POST", "/v1/subscriptions/{subscription_id}/resume"): "subscription.resume",
    ("POST", "/v1/subscriptions/{subscription_id}/change"): "subscription.change",
    ("POST", "/v1/settlements/run"): "settlement.run",
    ("PUT", "/v1/account/settlement_schedule"): "settlement_schedule.update",
    ("PUT", "/v1/account/finance"): "finance.update",
    ("POST", "/v1/reconciliation/{channel}/statements"): "reconciliation.statement_upload",
    ("POST", "/v1/sandbox/payments/{payment_id}/succeed"): "sandbox.payment_succeed",
    ("POST", "/v1/sandbox/payments/{payment_id}/fail"): "sandbox.payment_fail",
    # merchants: rules (prices, promotions, channels and routing), keys and secrets
    ("POST", "/v1/products"): "product.create",
    ("PATCH", "/v1/products/{product_id}"): "product.update",
    ("POST", "/v1/promotions"): "promotion.create",
    ("PATCH", "/v1/promotions/{promotion_id}"): "promotion.update",
    ("PUT", "/v1/channels/{channel}"): "channel.configure",
    ("PUT", "/v1/channels/routing"): "channel.routing_update",
    ("POST", "/v1/webhook_endpoints"): "webhook_endpoint.create",
    ("PATCH", "/v1/webhook_endpoints/{endpoint_id}"): "webhook_endpoint.update",
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}"): "webhook_endpoint.delete",
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/roll_secret"): "webhook_endpoint.secret_roll",
    # the admin dashboard (session cookie: recorded as the admin's session)
    ("POST", "/admin/orders/{order_id}/refund"): "refund.create",
    ("POST", "/admin/products/{product_id}/stock"): "product.stock_adjust",
    ("POST", "/admin/settlements/{settlement_id}/paid"): "settlement.mark_paid",
    ("POST", "/admin/reconciliation/statements"): "reconciliation.statement_upload",
    # admin: embedding and KYC
    ("PATCH", "/v1/merchants/{merchant_id}"): "merchant.origins_update",
    ("POST", "/v1/merchants/{merchant_id}/publishable_keys"): "merchant.publishable_key_roll",
    ("PUT", "/v1/merchants/{merchant_id}/kyc"): "merchant.kyc_update",
    # merchants: the account's embedding sites
    ("PATCH", "/v1/account"): "account.update",
    # merchants: risk rules, lists, reviews, AML, KYC and minors' limits
    ("PUT", "/v1/risk/rules"): "risk.rules_update",
    ("POST", "/v1/risk/lists/{list_name}/items"): "risk.list_item_add",
    ("DELETE", "/v1/risk/lists/{list_name}/items/{item_id}"): "risk.list_item_remove",
    ("PUT", "/v1/risk/precheck"): "risk.precheck_update",
    ("DELETE", "/v1/risk/precheck"): "risk.precheck_remove",
    ("POST", "/v1/risk/reviews/{order_id}/approve"): "risk.review_approve",
    ("POST", "/v1/risk/reviews/{order_id}/reject"): "risk.review_reject",
    ("PUT", "/v1/risk/aml/settings"): "aml.settings_update",
    ("POST", "/v1/risk/aml/cases/{case_id}"): "aml.case_update",
    ("PUT", "/v1/players/{player_id}/kyc"): "player.kyc_update",
    ("POST", "/v1/players/{player_id}/kyc"): "player.kyc_update",
    ("POST", "/v1/minor_limits"): "minor_limits.create",
    # merchants: disputes (money moves when they close)
    ("PUT", "/v1/account/dispute_policy"): "dispute_policy.update",
    ("POST", "/v1/disputes/{dispute_id}/submit"): "dispute.evidence_submit",
    ("POST", "/v1/sandbox/payments/{payment_id}/dispute"): "sandbox.dispute_raise",
    ("POST", "/v1/sandbox/disputes/{dispute_id}/close"): "sandbox.dispute_close",
    # personal data
    ("GET", "/v1/players/{player_id}/export"): "player.export",
    ("POST", "/v1/players/{player_id}/erase"): "player.erase",
}

# Changing routes that are not merchant or admin actions on money, rules, keys or personal data.
NOT_AUDITED: frozenset[tuple[str, str]] = frozenset({
    ("POST", "/v1/channels/{channel}/webhook/{merchant_id}"),  # providers' callbacks (signed by them)
    ("POST", "/v1/channels/{channel}/webhook/{merchant_id}/pix"),  # PIX callbacks (confirmed by a query)
    ("POST", "/v1/quotes"),                                    # prices only, changes nothing
    ("POST", "/v1/reports"),                                   # builds a report
    ("POST", "/v1/alerts/{alert_id}/resolve"),
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/replay"),
    ("POST", "/v1/webhook_deliveries/{delivery_id}/retry"),
    ("POST", "/v1/deliveries/{delivery_id}/ack"),
    ("POST", "/sandbox/pay/{provider_ref}/{action}"),          # the sandbox payer page (a payer, not a merchant)
    ("POST", "/v1/checkout/sessions"),                         # a browser starting a checkout (publishable key)
    ("POST", "/admin/webhooks/deliveries/{delivery_id}/retry"),
    ("POST", "/admin/webhooks/endpoints/{endpoint_id}/replay"),
    ("POST", "/admin/login"),
    ("POST", "/admin/logout"),
    ("POST", "/admin/alerts/{alert_id}/resolve"),
})


def route_key(method: str, template: str) -> tuple[str, str]:
    """(method, template without `:type` converters and without a trailing slash)."""
    parts = []
    for part in template.rstrip("/").split("/"):
        if part.startswith("{") and ":" in part:
            part = part.split(":", 1)[0] + "}"
        parts.append(part)
    return method, "/".join(parts) or "/"


class AuditMiddleware:
    """ASGI middleware (app-wide): holds a listed route's answer until its audit row is written."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        action = ACTIONS.get(route_key(scope["method"], scope.get("path_template", "")))
        if action is None:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._record(scope, action, held)
                for item in held:
                    await send(item)
                held.clear()

        await self.app(scope, receive, hold)
        for item in held:  # an answer that never finished its body: send what there is
            await send(item)

    async def _record(self, scope: Scope, action: str, held: list[Message]) -> None:
        if scope.get(_AUDITED):
            return  # written with the service's own transaction (in_transaction)
        start = next((m for m in held if m["type"] == "http.response.start"), None)
        status = int(start["status"]) if start else 500
        if status == 401:
            return  # not authenticated: nobody to name
        svc = scope["app"].state.services
        token = bearer_of(scope.get("headers"))
        if token is None:
            if scope["path"].startswith("/admin/") and status < 400:  # the dashboard: a valid session acted
                await self._write(svc, scope, actor="admin", merchant_id=None, ref="adm_session", action=action,
                                  object_id=_object_id(scope, held, svc, None), status=status)
            return
        known = authenticated_merchant(scope)  # the guard's: no second lookup of the key
        if known is not None:
            actor, merchant_id = "merchant", known.id
        elif svc.merchants.is_admin_token(token):
            actor, merchant_id = "admin", scope.get("path_params", {}).get("merchant_id")
        else:
            try:
                actor, merchant_id = "merchant", svc.merchants.authenticate(token).id
            except ApssError:
                return
        object_id = _object_id(scope, held, svc, merchant_id)
        if actor == "admin" and merchant_id is None and object_id and object_id.startswith("mch_"):
            merchant_id = object_id  # the merchant an admin created
        await self._write(svc, scope, actor=actor, merchant_id=merchant_id, ref=key_ref(token, actor=actor),
                          action=action, object_id=object_id, status=status)

    @staticmethod
    async def _write(svc: Any, scope: Scope, *, actor: str, merchant_id: str | None, ref: str, action: str,
                     object_id: str | None, status: int) -> None:
        client = scope.get("client")
        try:
            await svc.audit.record(actor=actor, merchant_id=merchant_id, key_ref=ref, action=action,
                                   object_id=object_id, status_code=status, ip=client[0] if client else None)
        except Exception:  # the action itself stands; the log says the audit row is missing
            log.exception("audit row for %s could not be written", action)


def in_transaction(scope: Scope) -> Callable[[Any, Outcome], None] | None:
    """For a merchant's request to an audited route: a function that writes its audit row in the
    transaction that produced the answer `outcome` (the caller runs it there for a final answer
    only, never for a replay, which the middleware records as it records any answer). None when
    the request is not a merchant's with a secret key (the middleware then does what it does)."""
    action = ACTIONS.get(route_key(scope["method"], scope.get("path_template", "")))
    merchant = authenticated_merchant(scope)
    token = bearer_of(scope.get("headers"))
    if action is None or merchant is None or token is None:
        return None
    svc = scope["app"].state.services
    client = scope.get("client")
    ref = key_ref(token, actor="merchant")

    def write(tx: Any, outcome: Outcome) -> None:  # the service's transaction handle
        svc.audit.record_tx(tx, actor="merchant", merchant_id=merchant.id, key_ref=ref, action=action,
                            object_id=_made_id(outcome.body), status_code=outcome.status,
                            ip=client[0] if client else None)
        tx.after_commit(lambda: scope.__setitem__(_AUDITED, True))

    return write


def _object_id(scope: Scope, held: list[Message], svc: Any, merchant_id: str | None) -> str | None:
    params = scope.get("path_params") or {}
    if "player_id" in params:  # players appear by pseudonym only
        return f"player:{svc.privacy.personal.pseudonym(merchant_id or '-', params['player_id'])}"
    for name in reversed(list(params)):
        if name.endswith("_id") and name != "merchant_id":
            return str(params[name])
    made = _made_id(b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body"))
    return made if made is not None else params.get("merchant_id") or params.get("channel")


def _made_id(body: bytes) -> str | None:
    """The answer's top-level "id" (the rest of the answer is skipped, not built)."""
    try:
        made = _made_decoder.decode(body) if body else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return made.id if made is not None else None


class _Made(msgspec.Struct):
    id: str | None = None


_made_decoder = msgspec.json.Decoder(_Made)
