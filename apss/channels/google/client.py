"""Google Play through the Play Developer API (androidpublisher v3), as Google's own client
libraries call it.

- Auth: a service account's JSON key (`service_account`). A JWT (RS256, `kid` = private_key_id;
  iss = client_email, scope androidpublisher, aud = the key's token_uri, iat, exp = iat + 1 h) is
  exchanged at token_uri (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) for an access
  token, cached until a minute before it expires and fetched again once after a 401. The
  token_uri is Google's, or, when `api_base` is overridden (a stand-in), on api_base's own origin:
  the signed assertion never goes to a host the settings did not vet.
- Purchases: `GET .../purchases/products/{productId}/tokens/{token}` (ProductPurchase) for a
  one-time product, `GET .../purchases/subscriptionsv2/tokens/{token}` (SubscriptionPurchaseV2)
  for a subscription; the package is the URL's, so a token of another app is unknown (404).
- Acknowledgement: `POST .../purchases/products/{productId}/tokens/{token}:acknowledge` (or
  `.../purchases/subscriptions/{subscriptionId}/tokens/{token}:acknowledge`); a 400 is read back:
  a purchase already acknowledged is a success.
- Real-time developer notifications (a Pub/Sub push of a base64 DeveloperNotification) are never
  trusted: the package must be the merchant's, and what they name is read from the API (the
  purchase, or for a voided purchase the Voided Purchases API's list) before anything is applied;
  a subscription notification is applied only if the API's subscriptionState agrees with it.
  With `push_audience` and `push_service_account_email` set, the push's OIDC token is verified
  first, offline (push.py): a push without Google's token for them is refused (401
  `store_push_unauthenticated`) before APSS reads it or asks Google anything.

Errors: not reached -> ChannelUnreachable; no answer in time -> ChannelTimeout; 401/403 ->
`store_access_denied`, 404/410 -> `store_purchase_not_found`, 400 -> `store_purchase_invalid`
(CallbackRejected, 400 to the caller); 408, 429, 5xx and unreadable answers -> ChannelUnavailable.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import json
import logging
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apss.channels.base import (
    CallbackReply,
    CallbackRequest,
    Credentials,
    Setting,
    StatementLine,
    StoreNotification,
    StorePurchase,
    StoreReceipt,
)
from apss.channels.google import mapping, push
from apss.channels.tokens import AccessTokens
from apss.clock import Clock
from apss.domain.money import is_iso_currency
from apss.errors import (
    ApssError,
    CallbackRejected,
    ChannelTimeout,
    ChannelUnavailable,
    ChannelUnreachable,
    InvalidRequest,
)

__all__ = ["DEFAULT_API_BASE", "GOOGLE_TOKEN_URI", "GoogleChannel", "SCOPE", "service_account_jwt"]

log = logging.getLogger("apss.channels.google")

DEFAULT_API_BASE = "https://androidpublisher.googleapis.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/androidpublisher"
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_JWT_LIFETIME_S = 3600
_TOKEN_MARGIN_S = 60
_CACHE_MAX = 256
_NOTIFICATION_BYTES_MAX = 64 * 1024
_VOIDED_WINDOW_MS = 86_400_000  # a voided purchase is listed from a day before its notification
_VOIDED_HORIZON_MS = 30 * 86_400_000 - 60_000  # the API lists 30 days back at most
_VOIDED_PAGES_MAX = 20
_T = TypeVar("_T")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@functools.lru_cache(maxsize=64)
def _load(text: str) -> tuple[mapping.ServiceAccount, rsa.RSAPrivateKey]:
    account = mapping.service_account(text)
    try:
        key = serialization.load_pem_private_key(account.private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise CallbackRejected("the google service account's private_key is not a PEM key",
                               code="store_settings_invalid") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CallbackRejected("the google service account's key is not RSA", code="store_settings_invalid")
    return account, key


def service_account_jwt(account: mapping.ServiceAccount, key: rsa.RSAPrivateKey, *, now_s: int) -> str:
    """The signed assertion exchanged for an access token (RFC 7523, Google's service accounts)."""
    header = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    claims = {"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri, "iat": now_s,
              "exp": now_s + _JWT_LIFETIME_S}
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


class _Settings:
    """One merchant's Google Play settings. Its repr shows no secret."""

    __slots__ = ("account", "key", "package_name", "api_base", "currency", "push_audience", "push_email",
                 "push_certs_url")

    def __init__(self, credentials: Credentials) -> None:
        package_name = credentials.get("package_name", "")
        if not package_name:
            raise CallbackRejected("the google channel's package_name is not set", code="store_settings_invalid")
        self.package_name = package_name
        self.account, self.key = _load(credentials.get("service_account", ""))
        self.api_base = (credentials.get("api_base") or DEFAULT_API_BASE).rstrip("/")
        token_origin = _origin(self.account.token_uri)
        if self.account.token_uri != GOOGLE_TOKEN_URI and (
                self.api_base == DEFAULT_API_BASE or token_origin != _origin(self.api_base)):
            raise CallbackRejected("the service account's token_uri is neither Google's nor on api_base's host",
                                   code="store_settings_invalid")
        self.currency = credentials.get("currency", "USD")
        if not is_iso_currency(self.currency):
            raise CallbackRejected("the google channel's currency is not a supported currency",
                                   code="store_settings_invalid")
        # Pub/Sub push authentication (push.py): both or neither, since a token Google signed for
        # another service account or another audience must never pass.
        self.push_audience = credentials.get("push_audience")
        self.push_email = credentials.get("push_service_account_email")
        self.push_certs_url = credentials.get("push_certs_url") or push.GOOGLE_CERTS_URL
        if (self.push_audience is None) != (self.push_email is None):
            raise CallbackRejected("the google channel's push_audience and push_service_account_email go together",
                                   code="store_settings_invalid")

    def __repr__(self) -> str:
        return f"_Settings(package_name={self.package_name!r}, api_base={self.api_base!r})"

    def path(self, tail: str) -> str:
        return f"{self.api_base}/androidpublisher/v3/applications/{quote(self.package_name, safe='')}/purchases/{tail}"


class GoogleChannel:
    """Channel `google`: reads purchases and confirms notifications at the Play Developer API;
    payments happen in Google Play's own purchase flow."""

    name = "google"
    test_only = False
    settings = {
        "package_name": Setting(secret=False),
        "service_account": Setting(secret=True),  # the service account's JSON key
        "api_base": Setting(secret=False, required=False),  # default https://androidpublisher.googleapis.com
        # The currency orders are booked in: Google's purchases carry no price (README "In-app purchases").
        "currency": Setting(secret=False, required=False),
        "fee_tier": Setting(secret=False, required=False),  # standard (30%) | reduced (15%), config [finance]
        # Pub/Sub push authentication (push.py): the push subscription's audience and service
        # account; when set, every notification must carry Google's OIDC token for them.
        "push_audience": Setting(secret=False, required=False),
        "push_service_account_email": Setting(secret=False, required=False),
        "push_certs_url": Setting(secret=False, required=False),  # default Google's; vetted like api_base
    }

    def __init__(self, *, http: httpx.AsyncClient, clock: Clock) -> None:
        self._http = http
        self._clock = clock
        self._push_keys = push.PushKeys(http=http)
        self._tokens = AccessTokens(now_s=lambda: self._clock.now_ms() // 1000, margin_s=_TOKEN_MARGIN_S,
                                    entries_max=_CACHE_MAX)  # by account digest

    def __repr__(self) -> str:
        return "GoogleChannel()"

    # ---- purchases ----

    async def verify_purchase(self, receipt: StoreReceipt, credentials: Credentials) -> StorePurchase:
        settings = _Settings(credentials)
        assert receipt.product_id is not None, "a Google purchase is read by product"
        return await self._purchase(settings, token=receipt.token, product_id=receipt.product_id,
                                    subscription=receipt.subscription)

    async def _purchase(self, settings: _Settings, *, token: str, product_id: str | None,
                        subscription: bool) -> StorePurchase:
        now_ms = self._clock.now_ms()
        quoted = quote(token, safe="")
        if subscription:
            return (await self._subscription(settings, token=token, product_id=product_id))[1]
        assert product_id is not None
        resource = await self._call(settings, "GET", settings.path(f"products/{quote(product_id, safe='')}/tokens/{quoted}"),
                                    mapping.ProductPurchase)
        return mapping.product_purchase(resource, token=token, product_id=product_id, package=settings.package_name,
                                        currency=settings.currency, now_ms=now_ms)

    async def _subscription(self, settings: _Settings, *, token: str, product_id: str | None
                            ) -> tuple[mapping.SubscriptionPurchaseV2, StorePurchase]:
        resource = await self._call(settings, "GET", settings.path(f"subscriptionsv2/tokens/{quote(token, safe='')}"),
                                    mapping.SubscriptionPurchaseV2)
        return resource, mapping.subscription_purchase(resource, token=token, product_id=product_id,
                                                       package=settings.package_name, currency=settings.currency,
                                                       now_ms=self._clock.now_ms())

    async def acknowledge_purchase(self, receipt: StoreReceipt, credentials: Credentials) -> None:
        settings = _Settings(credentials)
        assert receipt.product_id is not None
        kind = "subscriptions" if receipt.subscription else "products"
        path = settings.path(f"{kind}/{quote(receipt.product_id, safe='')}/tokens/{quote(receipt.token, safe='')}"
                             ":acknowledge")
        try:
            await self._send(settings, "POST", path, json={})
        except CallbackRejected as refused:
            if refused.code != "store_purchase_invalid":
                raise
            current = await self._purchase(settings, token=receipt.token, product_id=receipt.product_id,
                                           subscription=receipt.subscription)
            if not current.acknowledged:  # refused for another reason than an acknowledgement before
                raise

    # ---- notifications ----

    async def verify_notification(self, request: CallbackRequest, credentials: Credentials) -> StoreNotification:
        settings = _Settings(credentials)
        if settings.push_audience is not None:  # authenticated before anything of the push is read
            await push.verify_push_token(request.headers.get("authorization"), keys=self._push_keys,
                                         certs_url=settings.push_certs_url, audience=settings.push_audience,
                                         email=settings.push_email, now_s=request.now_s)
        if len(request.body) > _NOTIFICATION_BYTES_MAX:
            raise CallbackRejected("the notification body is too large", code="store_payload_invalid")
        message_id, notification = mapping.decode_notification(request.body)
        if notification.packageName != settings.package_name:
            raise CallbackRejected("the notification is for another app", code="store_app_mismatch")
        event_ms = int(notification.eventTimeMillis)

        def made(kind: str, **fields: Any) -> StoreNotification:
            return StoreNotification(notification_id=message_id, type=kind, subtype=None, signed_at_ms=event_ms,
                                     **fields)

        if notification.testNotification is not None:
            return made("TEST")
        if (part := notification.oneTimeProductNotification) is not None:
            number = mapping.part_field(part, "notificationType", int)
            kind = mapping.ONE_TIME_TYPES.get(number, f"ONE_TIME_PRODUCT_{number}")
            purchase = await self._purchase(settings, token=mapping.part_field(part, "purchaseToken", str),
                                            product_id=mapping.part_field(part, "sku", str), subscription=False)
            return made(kind, purchase=purchase, action="deliver" if number == 1 else "record")
        if (part := notification.subscriptionNotification) is not None:
            number = mapping.part_field(part, "notificationType", int)
            kind = mapping.SUBSCRIPTION_TYPES.get(number, f"SUBSCRIPTION_{number}")
            resource, purchase = await self._subscription(settings, token=mapping.part_field(part, "purchaseToken", str),
                                                          product_id=None)
            return made(kind, purchase=purchase, action=mapping.subscription_action(kind, resource.subscriptionState))
        if (part := notification.voidedPurchaseNotification) is not None:
            return await self._voided(settings, part, event_ms=event_ms, made=made)
        return made("UNKNOWN")

    async def _voided(self, settings: _Settings, part: dict, *, event_ms: int, made: Any) -> StoreNotification:
        """Confirmed by the Voided Purchases API: the purchase (and order) must be listed there."""
        token = mapping.part_field(part, "purchaseToken", str)
        order_id = part.get("orderId")
        subscription = part.get("productType") == 1
        now_ms = self._clock.now_ms()
        params: dict[str, Any] = {"startTime": max(event_ms - _VOIDED_WINDOW_MS, now_ms - _VOIDED_HORIZON_MS),
                                  "type": 1, "maxResults": 1000}
        for _ in range(_VOIDED_PAGES_MAX):
            page = await self._call(settings, "GET", settings.path("voidedpurchases"), mapping.VoidedPurchases,
                                    params=params)
            for voided in page.voidedPurchases:
                if voided.purchaseToken == token and (order_id is None or voided.orderId == order_id):
                    purchase = mapping.voided_purchase(voided, subscription=subscription,
                                                       package=settings.package_name, now_ms=now_ms)
                    partial = part.get("refundType") == 2 and voided.voidedQuantity
                    return made("VOIDED_PURCHASE", purchase=purchase, action="refund",
                                refund_quantity=voided.voidedQuantity if partial else None)
            following = page.tokenPagination.nextPageToken if page.tokenPagination else None
            if not following:
                break
            params["token"] = following
        raise CallbackRejected("the Voided Purchases API does not list the voided purchase",
                               code="store_notification_unconfirmed")

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        """The Play Console's earnings report (CSV): a line per order and direction (mapping)."""
        try:
            return mapping.earnings_lines(data)
        except (ValueError, KeyError, UnicodeDecodeError, csv.Error) as exc:
            raise InvalidRequest(f"Google Play earnings report is malformed: {exc}", code="statement_malformed",
                                 param="statement") from None

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        # Pub/Sub push takes any 2xx as an acknowledgement and redelivers the rest, with backoff.
        return CallbackReply(status_code=200 if accepted else 400)

    # ---- API calls ----

    async def _call(self, settings: _Settings, method: str, url: str, answer_type: type[_T], **kwargs: Any) -> _T:
        response = await self._send(settings, method, url, **kwargs)
        try:
            return msgspec.json.decode(response.content, type=answer_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ChannelUnavailable(f"google answer malformed: {exc}") from None

    async def _send(self, settings: _Settings, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(2):
            token = await self._token(settings)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            response = await self._request(method, url, headers=headers, **kwargs)
            if response.status_code == 401 and attempt == 0:
                self._tokens.forget(self._token_key(settings))  # expired early or revoked: once more
                continue
            if response.status_code >= 300:
                raise _error(response, settings)
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _token_key(settings: _Settings) -> str:
        material = "\0".join((settings.account.token_uri, settings.account.client_email, settings.account.private_key))
        return hashlib.sha256(material.encode()).hexdigest()

    async def _token(self, settings: _Settings) -> str:
        key = self._token_key(settings)
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        assertion = service_account_jwt(settings.account, settings.key, now_s=self._clock.now_ms() // 1000)
        response = await self._request("POST", settings.account.token_uri, data={"grant_type": _JWT_GRANT,
                                                                                  "assertion": assertion},
                                       headers={"Accept": "application/json"})
        if response.status_code >= 300:
            raise _error(response, settings, token=True)
        try:
            token = msgspec.json.decode(response.content, type=mapping.Token)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ChannelUnavailable("google token answer malformed") from None
        if token.token_type.lower() != "bearer" or not token.access_token:
            raise ChannelUnavailable("google token is not a bearer token")
        self._tokens.put(key, token.access_token, expires_in_s=token.expires_in)
        return token.access_token

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        target = f"{method} {urlsplit(url).path.rsplit('/tokens/', 1)[0]}"  # never the purchase token
        try:
            return await self._http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChannelUnreachable(f"google could not be reached: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise ChannelTimeout(f"google did not answer {target} in time") from exc
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"google unreachable: {type(exc).__name__}") from exc


def _error(response: httpx.Response, settings: _Settings, *, token: bool = False) -> ApssError:
    """A refusal naming Google's status and message (cut short: they describe the request)."""
    status = response.status_code
    try:
        body = msgspec.json.decode(response.content, type=mapping.ApiError)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = mapping.ApiError()
    if isinstance(body.error, str):
        what = f"{body.error} {body.error_description}".strip()
    else:
        what = f"{body.error.status} {body.error.message}".strip()
    where = "token endpoint" if token else "Play Developer API"
    message = f"google {where} answered {status}: {what[:200]}".rstrip(": ")
    if token and status in (400, 401, 403):  # invalid_grant: a key revoked, deleted or not this account's
        return CallbackRejected(f"{message} (the service account key of {settings.package_name})",
                                code="store_access_denied")
    if status in (401, 403):
        return CallbackRejected(f"{message} (does the service account have access to {settings.package_name}?)",
                                code="store_access_denied")
    if status in (404, 410):
        return CallbackRejected(f"{message} (no such purchase for {settings.package_name})",
                                code="store_purchase_not_found")
    if status == 400:
        return CallbackRejected(message, code="store_purchase_invalid")
    return ChannelUnavailable(message)
