"""A local stand-in for Google Play's Play Developer API (androidpublisher v3) and its OAuth token
endpoint, for tests only.

A plain ASGI app (served on a real port by uvicorn, or through httpx.ASGITransport). It checks
each request as Google does, written from Google's documentation and not from the channel's code:
- `POST /token`: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an `assertion` JWT
  verified here with `cryptography` against the service account's public key (RS256, `kid` the
  key's id, iss the client_email, aud this token endpoint, the androidpublisher scope, at most an
  hour between iat and exp); answers `{"access_token", "expires_in", "token_type": "Bearer"}` or
  OAuth's `{"error": "invalid_grant", "error_description"}`.
- every API call needs a bearer token it issued (401 UNAUTHENTICATED otherwise); a package the
  service account was not given answers 403 PERMISSION_DENIED; an unknown token 404 NOT_FOUND; a
  token of another product 400 INVALID_ARGUMENT; acknowledging one acknowledged before (or still
  pending) 400 FAILED_PRECONDITION; Google's error documents `{"error": {"code", "message",
  "status", "errors": [...]}}`.
- purchases.products.get / :acknowledge, purchases.subscriptionsv2.get,
  purchases.subscriptions.acknowledge, purchases.voidedpurchases.list (startTime, type,
  maxResults, token paging).
- Google's OIDC signing certificates for Pub/Sub push authentication: `GET /oauth2/v1/certs`
  (`{kid: PEM certificate}`) and `GET /oauth2/v3/certs` (a JWKS), with `Cache-Control: max-age`;
  `push_token` signs an ID token as Pub/Sub does, with google-auth's own signer
  (`google.auth.crypt.RSASigner`, `google.auth.jwt.encode`), not APSS's code.
A test makes purchases (`buy`, `subscribe`, `renew`, `set_state`, `void`) and Pub/Sub pushes (`push`).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.asgi import read_body

__all__ = ["GooglePlayStandIn"]

_SCOPE = "https://www.googleapis.com/auth/androidpublisher"
_PREFIX = "/androidpublisher/v3/applications/"
_ROUTES = [
    ("GET", re.compile(r"^(?P<pkg>[^/]+)/purchases/products/(?P<pid>[^/]+)/tokens/(?P<token>[^/:]+)$"), "product"),
    ("POST", re.compile(r"^(?P<pkg>[^/]+)/purchases/products/(?P<pid>[^/]+)/tokens/(?P<token>[^/:]+):acknowledge$"),
     "ack_product"),
    ("GET", re.compile(r"^(?P<pkg>[^/]+)/purchases/subscriptionsv2/tokens/(?P<token>[^/:]+)$"), "subscription"),
    ("POST", re.compile(r"^(?P<pkg>[^/]+)/purchases/subscriptions/(?P<pid>[^/]+)/tokens/(?P<token>[^/:]+):acknowledge$"),
     "ack_subscription"),
    ("GET", re.compile(r"^(?P<pkg>[^/]+)/purchases/voidedpurchases$"), "voided"),
]
_THIRTY_DAYS_MS = 30 * 86_400_000


class _Fail(Exception):
    def __init__(self, status: int, google_status: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        errors = [{"message": message, "domain": "androidpublisher" if reason else "global", "reason": reason or google_status}]
        self.body = {"error": {"code": status, "message": message, "errors": errors, "status": google_status}}


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _purchase_token() -> str:
    """Google's tokens are long opaque strings of letters, digits, dots, dashes and underscores."""
    return secrets.token_urlsafe(96).replace("-", "a") + ".AO-J1O" + secrets.token_urlsafe(24)


def _order_id() -> str:
    digits = "".join(secrets.choice("0123456789") for _ in range(16))
    return f"GPA.{digits[:4]}-{digits[4:8]}-{digits[8:12]}-{digits[12:]}{secrets.randbelow(10)}"


def _rfc3339(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@dataclass
class GooglePlayStandIn:
    package_name: str
    other_packages: tuple[str, ...] = ("com.example.othergame",)  # the account has these too
    url: str = "http://google.standin.test"  # set to where it is served (the token endpoint's aud)
    token_expires_in: int = 3599
    jwt_skew_s: int = 86_400  # the server's test clock may stand still for a while
    # The time the token endpoint checks assertions against: Google's real time is the server's
    # wall clock, which in the tests is its TestClock (follow()); an earlier test may have moved it.
    now_s: Callable[[], float] = time.time
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    client_email: str = "apss-verifier@game-project.iam.gserviceaccount.com"
    private_key_id: str = field(default_factory=lambda: secrets.token_hex(20))
    products: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (package, token) -> purchase
    subscriptions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    voided: list[dict[str, Any]] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    assertions: list[dict[str, Any]] = field(default_factory=list)  # the verified JWTs: header, claims
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, route name)
    fail_next: dict[str, int] = field(default_factory=dict)  # route name -> how many 503s to answer first
    oidc_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537,
                                                                                          key_size=2048))
    oidc_kid: str = field(default_factory=lambda: secrets.token_hex(20))
    push_email: str = "play-rtdn-push@game-project.iam.gserviceaccount.com"

    def follow(self, server) -> None:
        """Check the assertions APSS signs against `server`'s clock (a tests.conftest.RunningServer)."""
        self.now_s = lambda: server.clock.now_ms() / 1000

    # ---- the key Google hands the developer ----

    def service_account(self) -> str:
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        return json.dumps({
            "type": "service_account", "project_id": "game-project", "private_key_id": self.private_key_id,
            "private_key": pem, "client_email": self.client_email, "client_id": "104836912345678901234",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": f"{self.url}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/apss-verifier",
        })

    # ---- what happens in Google Play ----

    def buy(self, product_id: str, *, package: str | None = None, state: int = 0, quantity: int | None = None,
            test: bool = False, **fields: Any) -> str:
        """A one-time product bought; its purchase token."""
        token = _purchase_token()
        purchase = {"kind": "androidpublisher#productPurchase", "purchaseTimeMillis": str(int(time.time() * 1000)),
                    "purchaseState": state, "consumptionState": 0, "developerPayload": "", "orderId": _order_id(),
                    "acknowledgementState": 0, "regionCode": "US", "productId": product_id, **fields}
        if quantity is not None:
            purchase["quantity"] = quantity
        if test:
            purchase["purchaseType"] = 0
            del purchase["orderId"]
        self.products[(package or self.package_name, token)] = purchase
        return token

    def subscribe(self, product_id: str, *, state: str = "SUBSCRIPTION_STATE_ACTIVE", start_ms: int | None = None,
                  expiry_ms: int | None = None) -> str:
        token = _purchase_token()
        now_ms = start_ms if start_ms is not None else int(time.time() * 1000)
        order = _order_id()
        self.subscriptions[(self.package_name, token)] = {
            "kind": "androidpublisher#subscriptionPurchaseV2", "regionCode": "US", "startTime": _rfc3339(now_ms),
            "subscriptionState": state, "latestOrderId": order, "acknowledgementState": "ACKNOWLEDGEMENT_STATE_PENDING",
            "lineItems": [{"productId": product_id,
                           "expiryTime": _rfc3339(expiry_ms if expiry_ms is not None else now_ms + 30 * 86_400_000),
                           "autoRenewingPlan": {"autoRenewEnabled": True}, "offerDetails": {"basePlanId": "monthly"}}],
            "_order": order, "_renewals": 0,
        }
        return token

    def renew(self, token: str, *, expiry_ms: int | None = None) -> str:
        """The next period is charged: a new latestOrderId (`<first>..n`), a later expiry; active again."""
        sub = self.subscriptions[(self.package_name, token)]
        sub["_renewals"] += 1
        sub["latestOrderId"] = f"{sub['_order']}..{sub['_renewals'] - 1}"
        sub["subscriptionState"] = "SUBSCRIPTION_STATE_ACTIVE"
        sub["lineItems"][0]["autoRenewingPlan"] = {"autoRenewEnabled": True}
        sub["lineItems"][0]["expiryTime"] = _rfc3339(
            expiry_ms if expiry_ms is not None else int(time.time() * 1000) + (1 + sub["_renewals"]) * 30 * 86_400_000)
        return sub["latestOrderId"]

    def set_state(self, token: str, state: str, *, expiry_ms: int | None = None) -> None:
        """The subscription moves at Google (grace period, on hold, canceled, expired...): no new order."""
        sub = self.subscriptions[(self.package_name, token)]
        sub["subscriptionState"] = state
        sub["lineItems"][0]["autoRenewingPlan"] = {"autoRenewEnabled": state not in (
            "SUBSCRIPTION_STATE_CANCELED", "SUBSCRIPTION_STATE_EXPIRED")}
        if expiry_ms is not None:
            sub["lineItems"][0]["expiryTime"] = _rfc3339(expiry_ms)

    def expiry_ms(self, token: str) -> int:
        text = self.subscriptions[(self.package_name, token)]["lineItems"][0]["expiryTime"]
        seconds, _, millis = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(millis or 0)

    # ---- Pub/Sub push authentication ----

    def push_token(self, *, audience: str, email: str | None = None, key: rsa.RSAPrivateKey | None = None,
                   kid: str | None = None, **claims: Any) -> str:
        """An ID token as Pub/Sub signs it for a push subscription's service account (claims override)."""
        from google.auth import crypt
        from google.auth import jwt as google_jwt

        pem = (key or self.oidc_key).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())
        signer = crypt.RSASigner.from_string(pem, key_id=kid or self.oidc_kid)
        now = int(time.time())
        payload = {"aud": audience, "azp": "104836912345678901234", "email": email or self.push_email,
                   "email_verified": True, "exp": now + 3600, "iat": now, "iss": "https://accounts.google.com",
                   "sub": "104836912345678901234", **claims}
        return google_jwt.encode(signer, payload).decode()

    def oidc_certificate_pem(self) -> str:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.oidc_kid)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(self.oidc_key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(days=1))
                       .not_valid_after(now + datetime.timedelta(days=14)).sign(self.oidc_key, hashes.SHA256()))
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    def _jwks(self) -> dict[str, Any]:
        numbers = self.oidc_key.public_key().public_numbers()

        def b64(value: int) -> str:
            return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.oidc_kid, "n": b64(numbers.n),
                          "e": b64(numbers.e)}]}

    def void(self, token: str, *, quantity: int | None = None) -> dict[str, Any]:
        """Google refunds a purchase (a chargeback, the player's request, a missed acknowledgement)."""
        product = self.products.get((self.package_name, token))
        sub = self.subscriptions.get((self.package_name, token))
        assert product or sub
        now_ms = int(time.time() * 1000)
        entry = {"kind": "androidpublisher#voidedPurchase", "purchaseToken": token,
                 "purchaseTimeMillis": product["purchaseTimeMillis"] if product else str(now_ms),
                 "voidedTimeMillis": str(now_ms), "orderId": product.get("orderId") if product else sub["latestOrderId"],
                 "voidedSource": 0, "voidedReason": 1}
        if quantity is not None:
            entry["voidedQuantity"] = quantity
        elif product:
            product["purchaseState"] = 1
        self.voided.append(entry)
        return entry

    def push(self, notification: dict[str, Any], *, package: str | None = None, message_id: str | None = None) -> bytes:
        """The Pub/Sub push body of a DeveloperNotification (its `...Notification` part given)."""
        developer = {"version": "1.0", "packageName": package or self.package_name,
                     "eventTimeMillis": str(int(time.time() * 1000)), **notification}
        message_id = message_id or str(uuid.uuid4().int)[:16]
        return json.dumps({
            "message": {"data": base64.b64encode(json.dumps(developer).encode()).decode(),
                        "messageId": message_id, "message_id": message_id,
                        "publishTime": _rfc3339(int(time.time() * 1000)), "attributes": {}},
            "subscription": "projects/game-project/subscriptions/play-rtdn"}).encode()

    # ---- ASGI ----

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(scope, receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        extra: list[tuple[bytes, bytes]] = []
        if scope["method"] == "GET" and scope["path"] in ("/oauth2/v1/certs", "/oauth2/v3/certs"):
            self.calls.append(("GET", "certs"))
            status = 200
            answer = {self.oidc_kid: self.oidc_certificate_pem()} if "v1" in scope["path"] else self._jwks()
            extra = [(b"cache-control", b"public, max-age=19800, must-revalidate, no-transform")]
        else:
            try:
                status, answer = self._handle(scope["method"], scope["path"], headers, query, body)
            except _Fail as failed:
                status, answer = failed.status, failed.body
        payload = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json; charset=UTF-8"), *extra]})
        await send({"type": "http.response.body", "body": payload})

    def _handle(self, method: str, path: str, headers: dict[str, str], query: dict[str, str],
                body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/token":
            self.calls.append((method, "token"))
            return self._token(body)
        if not path.startswith(_PREFIX):
            raise _Fail(404, "NOT_FOUND", "Not Found")
        tail = unquote(path[len(_PREFIX):])
        for route_method, pattern, name in _ROUTES:
            matched = pattern.match(tail)
            if matched and route_method == method:
                self.calls.append((method, name))
                return self._api(name, matched.groupdict(), headers, query)
        raise _Fail(404, "NOT_FOUND", "Not Found")

    def _token(self, body: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        reason = self._bad_assertion(form.get("assertion", ""))
        if reason:
            return 400, {"error": "invalid_grant", "error_description": reason}
        token = "ya29." + secrets.token_urlsafe(48)
        self.access_tokens.add(token)
        return 200, {"access_token": token, "expires_in": self.token_expires_in, "token_type": "Bearer"}

    def _bad_assertion(self, assertion: str) -> str | None:
        parts = assertion.split(".")
        if len(parts) != 3:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        try:
            header, claims = (json.loads(_b64url_decode(p)) for p in parts[:2])
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            return "Invalid JWT: malformed."
        if header.get("alg") != "RS256" or header.get("kid") != self.private_key_id:
            return "Invalid JWT Signature."
        try:
            self.key.public_key().verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                                         hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        if claims.get("iss") != self.client_email:
            return "Invalid JWT: iss is not the service account."
        if claims.get("aud") != f"{self.url}/token":
            return "Invalid JWT: Failed audience check."
        if _SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: no scope."
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and isinstance(exp, int) and iat < exp <= iat + 3600):
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        now = self.now_s()
        if exp < now - self.jwt_skew_s or iat > now + self.jwt_skew_s:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        self.assertions.append({"header": header, "claims": claims})
        return None

    def _api(self, name: str, args: dict[str, str], headers: dict[str, str],
             query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            raise _Fail(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential.")
        if self.fail_next.get(name):
            self.fail_next[name] -= 1
            raise _Fail(503, "UNAVAILABLE", "The service is currently unavailable.")
        package = args["pkg"]
        if package != self.package_name and package not in self.other_packages:
            raise _Fail(403, "PERMISSION_DENIED", "The caller does not have permission")
        if name == "voided":
            return 200, self._voided(query)
        token = args["token"]
        if name in ("product", "ack_product"):
            purchase = self.products.get((package, token))
            if purchase is None:
                raise _Fail(404, "NOT_FOUND", "The purchase token was not found.", "purchaseTokenNotFound")
            if purchase["productId"] != args["pid"]:
                raise _Fail(400, "INVALID_ARGUMENT", "The purchase token does not match the product ID.",
                            "purchaseTokenDoesNotMatchProductId")
            if name == "product":
                return 200, {k: v for k, v in purchase.items() if k != "productId"}
            if purchase["acknowledgementState"] == 1 or purchase["purchaseState"] != 0:
                raise _Fail(400, "FAILED_PRECONDITION", "The purchase is not in a state that can be acknowledged.",
                            "invalidPurchaseState")
            purchase["acknowledgementState"] = 1
            return 200, {}
        sub = self.subscriptions.get((package, token))
        if sub is None:
            raise _Fail(404, "NOT_FOUND", "The purchase token was not found.", "purchaseTokenNotFound")
        if name == "subscription":
            return 200, {k: v for k, v in sub.items() if not k.startswith("_")}
        if sub["lineItems"][0]["productId"] != args["pid"]:
            raise _Fail(400, "INVALID_ARGUMENT", "The purchase token does not match the subscription ID.",
                        "purchaseTokenDoesNotMatchSubscriptionId")
        if sub["acknowledgementState"] == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED":
            raise _Fail(400, "FAILED_PRECONDITION", "The subscription purchase is already acknowledged.",
                        "invalidPurchaseState")
        sub["acknowledgementState"] = "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
        return 200, {}

    def _voided(self, query: dict[str, str]) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        try:
            start = int(query.get("startTime", now_ms - _THIRTY_DAYS_MS))
            size = min(int(query.get("maxResults", 1000)), 1000)
            offset = int(query.get("token", "0"))
        except ValueError:
            raise _Fail(400, "INVALID_ARGUMENT", "Invalid Value") from None
        if start < now_ms - _THIRTY_DAYS_MS - 60_000 or size < 1:
            raise _Fail(400, "INVALID_ARGUMENT", "startTime is older than 30 days.")
        kinds = query.get("type", "0")
        listed = [v for v in self.voided if int(v["voidedTimeMillis"]) >= start
                  and (kinds == "1" or (self.package_name, v["purchaseToken"]) in self.products)]
        page = listed[offset:offset + size]
        answer: dict[str, Any] = {"pageInfo": {"totalResults": len(listed), "resultPerPage": size, "startIndex": offset},
                                  "voidedPurchases": page}
        if offset + size < len(listed):
            answer["tokenPagination"] = {"nextPageToken": str(offset + size)}
        return answer
