"""Pub/Sub push authentication: the OIDC token Google signs for an authenticated push
subscription, verified offline.

A push subscription with authentication sends `Authorization: Bearer <JWT>`: an ID token Google
signs (RS256) for the subscription's service account, with the audience the subscription names.
Verified as Google documents it (cloud.google.com/pubsub/docs/authenticate-push-subscriptions):
- a compact JWS whose header has `alg` RS256 and the `kid` of one of Google's signing keys; the
  keys come from Google's certificates URL (`push_certs_url`, default
  https://www.googleapis.com/oauth2/v1/certs: a map of key id to PEM certificate; the JWKS form
  `{"keys": [...]}` of .../oauth2/v3/certs is read too), cached for the answer's
  `Cache-Control: max-age` (at most a day), fetched again for a key id not in the cache (at most
  once a minute per URL: a forged key id cannot make APSS hammer Google);
- the RSA PKCS#1 v1.5 SHA-256 signature over `header.payload`;
- `iss` is accounts.google.com or https://accounts.google.com, `aud` the merchant's
  `push_audience`, `email` the merchant's `push_service_account_email` with `email_verified`
  true, `exp` not passed and `iat` not in the future (a minute's leeway for clocks).
Refusals raise AuthenticationFailed with the code `store_push_unauthenticated` (401 to the
caller, in APSS's error shape); nothing of the push is read before. Messages never quote the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apss.errors import AuthenticationFailed, ChannelUnavailable

__all__ = ["GOOGLE_CERTS_URL", "ISSUERS", "PushKeys", "verify_push_token"]

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
_LEEWAY_S = 60
_TOKEN_CHARS_MAX = 8192
_CACHE_DEFAULT_S = 3600
_CACHE_MAX_S = 86_400
_REFETCH_MIN_S = 60
_URLS_MAX = 64
_KEYS_MAX = 32
_CERTS_BYTES_MAX = 256 * 1024
_MAX_AGE = re.compile(r"max-age=(\d+)")


def _refuse(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"The Pub/Sub push is not authenticated: {message}.", code="store_push_unauthenticated")


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _int_of(text: str) -> int:
    return int.from_bytes(_b64url(text), "big")


def parse_keys(data: bytes) -> dict[str, rsa.RSAPublicKey]:
    """Google's signing keys by key id: `{kid: PEM certificate}` (v1) or a JWKS (v3)."""
    document = json.loads(data)
    keys: dict[str, rsa.RSAPublicKey] = {}
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        for jwk in document["keys"][:_KEYS_MAX]:
            if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str):
                keys[jwk["kid"]] = rsa.RSAPublicNumbers(_int_of(jwk["e"]), _int_of(jwk["n"])).public_key()
        return keys
    if not isinstance(document, dict):
        raise ValueError("neither a JWKS nor a map of certificates")
    for kid, pem in list(document.items())[:_KEYS_MAX]:
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        if isinstance(key, rsa.RSAPublicKey):
            keys[kid] = key
    return keys


class _Entry:
    __slots__ = ("keys", "fetched_s", "expires_s")

    def __init__(self, keys: dict[str, rsa.RSAPublicKey], fetched_s: int, expires_s: int) -> None:
        self.keys, self.fetched_s, self.expires_s = keys, fetched_s, expires_s


class PushKeys:
    """Google's signing keys per certificates URL, cached (see the module's docstring)."""

    def __init__(self, *, http: httpx.AsyncClient) -> None:
        self._http = http
        self._cache: dict[str, _Entry] = {}
        self.fetches = 0  # how many times the certificates were fetched (tests read it)

    async def key(self, url: str, kid: str, *, now_s: int) -> rsa.RSAPublicKey | None:
        entry = self._cache.get(url)
        fresh = entry is not None and entry.expires_s > now_s
        if fresh and kid in entry.keys:
            return entry.keys[kid]
        if fresh and entry.fetched_s + _REFETCH_MIN_S > now_s:
            return None  # fetched a moment ago, and the key is not there
        entry = await self._fetch(url, now_s=now_s)
        return entry.keys.get(kid)

    async def _fetch(self, url: str, *, now_s: int) -> _Entry:
        self.fetches += 1
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"google's signing certificates could not be fetched: {type(exc).__name__}") from exc
        if response.status_code != 200 or len(response.content) > _CERTS_BYTES_MAX:
            raise ChannelUnavailable(f"google's signing certificates answered {response.status_code}")
        try:
            keys = parse_keys(response.content)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            raise ChannelUnavailable("google's signing certificates are unreadable") from None
        matched = _MAX_AGE.search(response.headers.get("cache-control", ""))
        max_age = min(int(matched.group(1)), _CACHE_MAX_S) if matched else _CACHE_DEFAULT_S
        if len(self._cache) >= _URLS_MAX and url not in self._cache:
            self._cache.pop(next(iter(self._cache)))
        entry = _Entry(keys, now_s, now_s + max_age)
        self._cache[url] = entry
        return entry


async def verify_push_token(authorization: str | None, *, keys: PushKeys, certs_url: str, audience: str, email: str,
                            now_s: int) -> dict[str, Any]:
    """The verified claims of a push's `Authorization` header, or AuthenticationFailed."""
    if not authorization or not authorization.startswith("Bearer "):
        raise _refuse("no bearer token")
    token = authorization[len("Bearer "):].strip()
    if len(token) > _TOKEN_CHARS_MAX or token.count(".") != 2:
        raise _refuse("the token is not a compact JWS")
    head, body, sig = token.split(".")
    try:
        header, claims, signature = json.loads(_b64url(head)), json.loads(_b64url(body)), _b64url(sig)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _refuse("the token is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _refuse("the token's header and claims are not JSON objects")
    if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
        raise _refuse("the token is not RS256 with a key id")
    key = await keys.key(certs_url, header["kid"], now_s=now_s)
    if key is None:
        raise _refuse("the token's key is not one of Google's")
    try:
        key.verify(signature, f"{head}.{body}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise _refuse("the token's signature does not verify") from None
    if claims.get("iss") not in ISSUERS:
        raise _refuse("the token's issuer is not Google")
    if claims.get("aud") != audience:
        raise _refuse("the token's audience is not the channel's push_audience")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (exp, iat)):
        raise _refuse("the token has no exp or iat")
    if exp + _LEEWAY_S < now_s:
        raise _refuse("the token has expired")
    if iat - _LEEWAY_S > now_s:
        raise _refuse("the token is issued in the future")
    if not isinstance(claims.get("email"), str) or claims["email"].lower() != email.lower():
        raise _refuse("the token is not the push_service_account_email's")
    if claims.get("email_verified") is not True:
        raise _refuse("the token's email is not verified")
    return claims
