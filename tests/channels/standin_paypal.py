"""A local stand-in for PayPal's REST API (OAuth2, Orders v2, Payments v2 refunds, webhook certs).

A plain ASGI app: inject it with `httpx.ASGITransport(app=standin)`. It checks what PayPal
checks (Basic auth on the token endpoint, the Bearer token, PayPal-Request-Id replay, amount
precision per currency, capture only after approval, refund not above the capture), answers
with the documented JSON shapes, and keeps orders in memory. It also signs webhooks the way
PayPal does (its own implementation of the CRC32 message, independent of the channel's).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import secrets
import uuid
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from apss.channels.base import CallbackRequest
from tests.asgi import read_body

__all__ = ["CERT_URL", "PayPalStandin", "SigningCert", "capture_resource", "make_signing_cert", "rfc3339", "sign_headers"]

CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-standin"
_ZERO_DECIMAL = {"JPY", "TWD", "HUF"}
_SUPPORTED = {"AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "JPY",
              "MXN", "MYR", "NOK", "NZD", "PHP", "PLN", "SEK", "SGD", "THB", "TWD", "USD"}


class SigningCert:
    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.pem = cert.public_bytes(serialization.Encoding.PEM)


@functools.cache
def make_signing_cert(common_name: str = "messageverificationcerts.paypal.com", *, valid: bool = True) -> SigningCert:
    """A self-signed RSA-2048 certificate like PayPal's webhook signing certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=1), now + dt.timedelta(days=30)) if valid else (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return SigningCert(key, cert)


def rfc3339(now_s: int) -> str:
    return dt.datetime.fromtimestamp(now_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_headers(
    body: bytes, *, signer: SigningCert, webhook_id: str, transmission_time: str, transmission_id: str | None = None,
    cert_url: str = CERT_URL,
) -> dict[str, str]:
    """The five PAYPAL-* headers PayPal sends (lower-cased, as the channel receives them)."""
    transmission_id = transmission_id or str(uuid.uuid4())
    message = "|".join([transmission_id, transmission_time, webhook_id, str(zlib.crc32(body) & 0xFFFFFFFF)])
    signature = signer.key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return {
        "content-type": "application/json",
        "paypal-auth-algo": "SHA256withRSA",
        "paypal-cert-url": cert_url,
        "paypal-transmission-id": transmission_id,
        "paypal-transmission-sig": base64.b64encode(signature).decode(),
        "paypal-transmission-time": transmission_time,
    }


def _paypal_id() -> str:
    return "".join(secrets.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(17))


def _error(status: int, name: str, issue: str | None = None, message: str = "") -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"name": name, "message": message or name, "debug_id": secrets.token_hex(6)}
    if issue:
        body["details"] = [{"issue": issue, "description": issue.replace("_", " ").lower()}]
    return status, body


def _amount_issue(money: Any) -> str | None:
    if not isinstance(money, dict) or not isinstance(money.get("value"), str):
        return "MISSING_REQUIRED_PARAMETER"
    if money.get("currency_code") not in _SUPPORTED:
        return "CURRENCY_NOT_SUPPORTED"
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", money["value"]):
        return "INVALID_PARAMETER_SYNTAX"
    try:
        exponent = -Decimal(money["value"]).as_tuple().exponent  # type: ignore[operator]
    except InvalidOperation:
        return "INVALID_PARAMETER_SYNTAX"
    allowed = 0 if money["currency_code"] in _ZERO_DECIMAL else 2
    return "DECIMAL_PRECISION" if exponent > allowed else None


class PayPalStandin:
    def __init__(self, *, client_id: str, client_secret: str, webhook_id: str, signer: SigningCert) -> None:
        self.client_id, self.client_secret, self.webhook_id, self.signer = client_id, client_secret, webhook_id, signer
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.cert_fetches = 0
        self.orders: dict[str, dict[str, Any]] = {}
        self.captures: dict[str, str] = {}  # capture id -> order id
        self.replays: dict[tuple[str, str], tuple[bytes, int, dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []  # every API request, for assertions
        self.capture_status = "COMPLETED"  # what the next capture ends as
        self.refund_status = "COMPLETED"
        self.fail_next: list[tuple[int, dict[str, Any]]] = []  # canned errors for the next API calls

    # --- ASGI ---

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(scope, receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, payload, media = self._dispatch(scope["method"], scope["path"], headers, body)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", media.encode())]})
        await send({"type": "http.response.body", "body": raw})

    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, str]:
        if method == "GET" and path.startswith("/v1/notifications/certs/"):
            self.cert_fetches += 1
            return 200, self.signer.pem, "application/x-pem-file"
        if method == "POST" and path == "/v1/oauth2/token":
            return (*self._token(headers, body), "application/json")
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return (*_error(401, "AUTHENTICATION_FAILURE", message="Authentication failed due to invalid authentication credentials."), "application/json")
        if self.fail_next:
            return (*self.fail_next.pop(0), "application/json")
        return (*self._api(method, path, headers, body), "application/json")

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("authorization") != expected:
            return 401, {"error": "invalid_client", "error_description": "Client Authentication failed"}
        if parse_qs(body.decode()).get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"}
        token = "A21AA" + secrets.token_urlsafe(40)
        self.tokens.add(token)
        return 200, {"scope": "https://uri.paypal.com/services/payments/payment", "access_token": token,
                     "token_type": "Bearer", "app_id": "APP-80W284485P519543T", "expires_in": 32400, "nonce": secrets.token_hex(8)}

    def _api(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        request_id = headers.get("paypal-request-id")
        if method == "POST" and request_id:
            replay = self.replays.get((path, request_id))
            if replay is not None:
                if replay[0] != body:
                    return _error(422, "UNPROCESSABLE_ENTITY", "PAYPAL_REQUEST_ID_PREVIOUSLY_USED")
                return (200 if replay[1] == 201 else replay[1]), replay[2]
        status, payload = self._route(method, path, headers, body)
        if method == "POST" and request_id and status < 300:
            # A snapshot: PayPal replays the first answer, not the current state.
            self.replays[(path, request_id)] = (body, status, json.loads(json.dumps(payload)))
        return status, payload

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        data = json.loads(body) if body else {}
        if method == "POST" and path == "/v2/checkout/orders":
            return self._create_order(data)
        if (match := re.fullmatch(r"/v2/checkout/orders/([A-Z0-9]+)/capture", path)) and method == "POST":
            return self._capture(match.group(1))
        if (match := re.fullmatch(r"/v2/checkout/orders/([A-Z0-9]+)", path)) and method == "GET":
            order = self.orders.get(match.group(1))
            return (200, order) if order else _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        if (match := re.fullmatch(r"/v2/payments/captures/([A-Z0-9]+)/refund", path)) and method == "POST":
            return self._refund(match.group(1), data)
        if (match := re.fullmatch(r"/v2/payments/refunds/([A-Z0-9]+)", path)) and method == "GET":
            found = [r for o in self.orders.values() for u in o["purchase_units"] for r in u.get("payments", {}).get("refunds", [])
                     if r["id"] == match.group(1)]
            return (200, found[0]) if found else _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        return _error(404, "NOT_FOUND", message=f"no route {method} {path}")

    # --- orders ---

    def _create_order(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        units = data.get("purchase_units")
        if data.get("intent") != "CAPTURE" or not isinstance(units, list) or len(units) != 1:
            return _error(400, "INVALID_REQUEST", "INVALID_PARAMETER_VALUE")
        issue = _amount_issue(units[0].get("amount"))
        if issue:
            return _error(422, "UNPROCESSABLE_ENTITY", issue)
        if any(o["purchase_units"][0].get("invoice_id") == units[0].get("invoice_id") for o in self.orders.values()):
            return _error(422, "UNPROCESSABLE_ENTITY", "DUPLICATE_INVOICE_ID")
        order_id = _paypal_id()
        wallet = data.get("payment_source", {}).get("paypal")
        status, rel = ("PAYER_ACTION_REQUIRED", "payer-action") if wallet is not None else ("CREATED", "approve")
        context = (wallet or {}).get("experience_context") or data.get("application_context") or {}
        self.orders[order_id] = {
            "id": order_id, "intent": "CAPTURE", "status": status,
            "purchase_units": [{k: v for k, v in units[0].items() if k in ("reference_id", "amount", "custom_id", "invoice_id", "description")}],
            "create_time": rfc3339(0),
            "links": [
                {"href": f"https://api.sandbox.paypal.com/v2/checkout/orders/{order_id}", "rel": "self", "method": "GET"},
                {"href": f"https://www.sandbox.paypal.com/checkoutnow?token={order_id}", "rel": rel, "method": "GET"},
            ],
            "_return_url": context.get("return_url"),
        }
        if wallet is not None:
            self.orders[order_id]["payment_source"] = {"paypal": {}}
        return 201, self._public(order_id)

    def _public(self, order_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.orders[order_id].items() if not k.startswith("_")}

    def approve(self, order_id: str) -> None:
        """What the payer's click on PayPal's page does."""
        assert self.orders[order_id]["status"] in ("PAYER_ACTION_REQUIRED", "CREATED")
        self.orders[order_id]["status"] = "APPROVED"

    def _capture(self, order_id: str) -> tuple[int, dict[str, Any]]:
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        if order["status"] == "COMPLETED":
            return _error(422, "UNPROCESSABLE_ENTITY", "ORDER_ALREADY_CAPTURED")
        if order["status"] != "APPROVED":
            return _error(422, "UNPROCESSABLE_ENTITY", "ORDER_NOT_APPROVED")
        unit = order["purchase_units"][0]
        capture_id = _paypal_id()
        capture: dict[str, Any] = {
            "id": capture_id, "status": self.capture_status, "amount": unit["amount"], "final_capture": True,
            "custom_id": unit.get("custom_id"), "invoice_id": unit.get("invoice_id"),
            "links": [{"href": f"https://api.sandbox.paypal.com/v2/payments/captures/{capture_id}", "rel": "self", "method": "GET"},
                      {"href": f"https://api.sandbox.paypal.com/v2/checkout/orders/{order_id}", "rel": "up", "method": "GET"}],
        }
        if self.capture_status == "DECLINED":
            capture["status_details"] = {"reason": "DECLINED_BY_RISK_FRAUD_CONTROLS"}
        unit["payments"] = {"captures": [capture]}
        order["status"] = "COMPLETED"
        self.captures[capture_id] = order_id
        return 201, self._public(order_id)

    def _refund(self, capture_id: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        order_id = self.captures.get(capture_id)
        if order_id is None:
            return _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        payments = self.orders[order_id]["purchase_units"][0]["payments"]
        capture = payments["captures"][0]
        issue = _amount_issue(data.get("amount"))
        if issue or data["amount"]["currency_code"] != capture["amount"]["currency_code"]:
            return _error(422, "UNPROCESSABLE_ENTITY", issue or "REFUND_CURRENCY_MISMATCH")
        refunded = sum(Decimal(r["amount"]["value"]) for r in payments.get("refunds", []) if r["status"] != "FAILED")
        total = refunded + Decimal(data["amount"]["value"])
        if total > Decimal(capture["amount"]["value"]):
            return _error(422, "UNPROCESSABLE_ENTITY", "REFUND_AMOUNT_EXCEEDED")
        refund_id = _paypal_id()
        refund = {
            "id": refund_id, "status": self.refund_status, "amount": data["amount"],
            "invoice_id": data.get("invoice_id"), "custom_id": data.get("custom_id"), "note_to_payer": data.get("note_to_payer"),
            "links": [{"href": f"https://api.sandbox.paypal.com/v2/payments/refunds/{refund_id}", "rel": "self", "method": "GET"},
                      {"href": f"https://api.sandbox.paypal.com/v2/payments/captures/{capture_id}", "rel": "up", "method": "GET"}],
        }
        if self.refund_status == "FAILED":
            refund["status_details"] = {"reason": "ECHECK"}
        payments.setdefault("refunds", []).append(refund)
        if self.refund_status != "FAILED":
            capture["status"] = "REFUNDED" if total == Decimal(capture["amount"]["value"]) else "PARTIALLY_REFUNDED"
        return 201, refund

    # --- webhooks ---

    def webhook(
        self, event_type: str, resource: dict[str, Any], *, event_id: str, now_s: int, resource_type: str = "capture",
        transmission_time: str | None = None,
    ) -> CallbackRequest:
        """The POST PayPal would send to the listener, signed, with non-ASCII text in `summary`."""
        envelope = {
            "id": event_id, "event_version": "1.0", "create_time": rfc3339(now_s), "resource_type": resource_type,
            "resource_version": "2.0", "event_type": event_type, "summary": f"{event_type} 支付通知 – ünïcode",
            "resource": resource,
            "links": [{"href": f"https://api.sandbox.paypal.com/v1/notifications/webhooks-events/{event_id}", "rel": "self", "method": "GET"}],
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        headers = sign_headers(body, signer=self.signer, webhook_id=self.webhook_id, transmission_time=transmission_time or rfc3339(now_s))
        return CallbackRequest(headers=headers, body=body, now_s=now_s)

    def capture_resource(self, order_id: str) -> dict[str, Any]:
        """The capture of an order, as PAYMENT.CAPTURE.* webhooks carry it (with related ids)."""
        capture = dict(self.orders[order_id]["purchase_units"][0]["payments"]["captures"][0])
        capture["supplementary_data"] = {"related_ids": {"order_id": order_id}}
        return capture


def capture_resource(*, capture_id: str, order_id: str | None, payment_id: str, value: str, currency: str, status: str) -> dict[str, Any]:
    """A capture resource for any payment (the harness's callbacks need no stored order)."""
    resource: dict[str, Any] = {
        "id": capture_id, "status": status, "amount": {"currency_code": currency, "value": value},
        "final_capture": True, "custom_id": payment_id, "invoice_id": payment_id,
        "seller_protection": {"status": "ELIGIBLE", "dispute_categories": ["ITEM_NOT_RECEIVED", "UNAUTHORIZED_TRANSACTION"]},
        "create_time": "2024-01-01T00:00:00Z", "update_time": "2024-01-01T00:00:01Z",
    }
    if order_id is not None:
        resource["supplementary_data"] = {"related_ids": {"order_id": order_id}}
    if status in ("DECLINED", "FAILED"):
        resource["status_details"] = {"reason": "DECLINED_BY_RISK_FRAUD_CONTROLS"}
    return resource
