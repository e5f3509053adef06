"""The App Store: StoreKit 2 signed transactions and App Store Server Notifications v2, verified
offline as Apple's own app-store-server-library does.

A JWS from Apple is `header.payload.signature` (base64url), ES256, with the header's `x5c`
holding three certificates: the leaf that signed, Apple's intermediate, and the root. Verified:
- `alg` is ES256 and `x5c` holds exactly three base64 DER certificates;
- the leaf is issued and signed by the intermediate, the intermediate by one of the configured
  root certificates (by default Apple Root CA - G3, shipped here; the third x5c entry is not
  trusted for anything, as in Apple's library); every certificate of the chain is valid at the
  payload's `signedDate` (or now, without one), the intermediate and the root are CAs;
- the leaf carries Apple's marker extension 1.2.840.113635.100.6.11.1 and the intermediate
  1.2.840.113635.100.6.2.1 (a certificate merely chaining to Apple's root is not enough: Apple
  issues other certificates under it);
- the ES256 signature (raw r||s) over `header.payload` with the leaf's P-256 key;
- then the payload: `bundleId` and `environment` are the merchant's (and for notifications in
  Production, `appAppleId`). A notification's `signedTransactionInfo` and `signedRenewalInfo`
  (the subscription's renewal state: its billing grace period) are verified the same way.
No online check (OCSP) is made: purchases are verified without reaching Apple.

Refusals raise CallbackRejected with a code naming the broken rule (`store_signature_invalid`,
`store_app_mismatch`, `store_environment_mismatch`, `store_payload_invalid`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
from importlib import resources
from typing import Any

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from apss.channels.apple import mapping
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
from apss.errors import CallbackRejected, InvalidRequest

__all__ = ["AppleChannel", "ENVIRONMENTS", "INTERMEDIATE_OID", "LEAF_OID", "load_roots", "verify_jws"]

LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
_JWS_CHARS_MAX = 64 * 1024  # a signed transaction is ~3-4 KiB; a notification nests two or three
_NOTIFICATION_BYTES_MAX = 256 * 1024
_ROOTS_MAX = 10
ENVIRONMENTS = ("Production", "Sandbox")


@functools.cache
def _shipped_root() -> bytes:
    """Apple Root CA - G3 (www.apple.com/certificateauthority), shipped beside this module;
    SHA-256 fingerprint 63:34:3A:BF:B8:9A:6A:03:EB:B5:7E:9B:3F:5F:A7:BE:7C:4F:5C:75:6F:30:17:B3:A8:C4:88:C3:65:3E:91:79."""
    return resources.files("apss.channels.apple").joinpath("AppleRootCA-G3.pem").read_bytes()


@functools.lru_cache(maxsize=64)
def load_roots(pem: str | None) -> tuple[x509.Certificate, ...]:
    """The trusted roots: the merchant's `root_certificates` (PEM, one or more), else Apple's."""
    data = pem.encode() if pem else _shipped_root()
    try:
        roots = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise CallbackRejected("root_certificates is not PEM", code="store_settings_invalid") from None
    if not 1 <= len(roots) <= _ROOTS_MAX:
        raise CallbackRejected("root_certificates holds no certificate", code="store_settings_invalid")
    return roots


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _refuse(message: str) -> CallbackRejected:
    return CallbackRejected(message, code="store_signature_invalid")


def _split(jws: str) -> tuple[dict, dict, bytes, bytes]:
    """header, payload (both unverified yet), signature, signed input."""
    if not isinstance(jws, str) or len(jws) > _JWS_CHARS_MAX or jws.count(".") != 2:
        raise _refuse("not a compact JWS")
    head, body, sig = jws.split(".")
    try:
        header, payload = json.loads(_b64url(head)), json.loads(_b64url(body))
        signature = _b64url(sig)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _refuse("the JWS is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _refuse("the JWS header and payload are JSON objects")
    return header, payload, signature, f"{head}.{body}".encode("ascii")


def _chain(header: dict) -> tuple[x509.Certificate, x509.Certificate]:
    if header.get("alg") != "ES256":
        raise _refuse("the JWS algorithm is not ES256")
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 3 or not all(isinstance(c, str) for c in x5c):
        raise _refuse("x5c is not a chain of three certificates")
    try:
        leaf, intermediate = (x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c[:2])
    except (ValueError, binascii.Error):
        raise _refuse("an x5c certificate does not parse") from None
    return leaf, intermediate


def _valid_at(cert: x509.Certificate, at: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _has(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_jws(jws: str, roots: tuple[x509.Certificate, ...], *, now_s: int) -> dict[str, Any]:
    """The verified payload of an Apple JWS, or CallbackRejected (see the module's docstring)."""
    assert roots, "at least one trusted root"
    header, payload, signature, signed = _split(jws)
    leaf, intermediate = _chain(header)
    signed_ms = payload.get("signedDate", payload.get("receiptCreationDate"))
    at_s = signed_ms // 1000 if isinstance(signed_ms, int) and not isinstance(signed_ms, bool) else now_s
    at = datetime.datetime.fromtimestamp(at_s, tz=datetime.UTC)
    root = next((r for r in roots if _issued_by(intermediate, r)), None)
    if root is None or not _issued_by(leaf, intermediate):
        raise _refuse("the x5c chain does not lead to a trusted root")
    if not all(_valid_at(c, at) for c in (leaf, intermediate, root)):
        raise _refuse("a certificate of the chain is not valid at the signing date")
    if not (_is_ca(intermediate) and _is_ca(root)) or _is_ca(leaf):
        raise _refuse("the chain's CA flags are wrong")
    if not _has(leaf, LEAF_OID) or not _has(intermediate, INTERMEDIATE_OID):
        raise _refuse("the chain is not Apple's App Store signing chain")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1" or len(signature) != 64:
        raise _refuse("the signing key is not ES256")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _refuse("the JWS signature does not verify") from None
    return payload


class AppleChannel:
    """Channel `apple`: verifies purchases and notifications; payments happen in the App Store."""

    name = "apple"
    test_only = False
    settings = {
        "bundle_id": Setting(secret=False),
        "app_apple_id": Setting(secret=False, required=False),  # needed for Production notifications
        "environment": Setting(secret=False),  # Production | Sandbox
        "root_certificates": Setting(secret=False, required=False),  # PEM; default Apple Root CA - G3
        # The App Store Server API key (kept for the API's calls; offline verification needs none).
        "issuer_id": Setting(secret=False, required=False),
        "key_id": Setting(secret=False, required=False),
        "private_key": Setting(secret=True, required=False),
        # The store's commission tier: standard (30%) or reduced (15%: Small Business Program,
        # subscriptions after their first year); the rates are config `[stores]`.
        "fee_tier": Setting(secret=False, required=False),
    }

    def __init__(self, *, clock: Any) -> None:
        self._clock = clock

    def __repr__(self) -> str:
        return "AppleChannel()"

    def _now_s(self) -> int:
        return self._clock.now_ms() // 1000

    def _expect(self, credentials: Credentials) -> tuple[str, str, tuple[x509.Certificate, ...]]:
        environment = credentials.get("environment", "")
        if environment not in ENVIRONMENTS or not credentials.get("bundle_id"):
            raise CallbackRejected("the apple channel's bundle_id or environment is not set right",
                                   code="store_settings_invalid")
        return credentials["bundle_id"], environment, load_roots(credentials.get("root_certificates"))

    async def verify_purchase(self, receipt: StoreReceipt, credentials: Credentials) -> StorePurchase:
        bundle_id, environment, roots = self._expect(credentials)
        payload = verify_jws(receipt.token, roots, now_s=self._now_s())
        purchase = mapping.purchase(payload)
        mapping.check_app(purchase.app_id, purchase.environment, bundle_id=bundle_id, expected_environment=environment)
        return purchase

    async def verify_notification(self, request: CallbackRequest, credentials: Credentials) -> StoreNotification:
        bundle_id, environment, roots = self._expect(credentials)
        if len(request.body) > _NOTIFICATION_BYTES_MAX:
            raise _refuse("the notification body is too large")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise _refuse("the notification body is not JSON") from None
        signed = body.get("signedPayload") if isinstance(body, dict) else None
        if not isinstance(signed, str):
            raise _refuse("the notification has no signedPayload")
        payload = verify_jws(signed, roots, now_s=request.now_s)
        app = mapping.notification_app(payload)
        mapping.check_app(app.get("bundleId"), app.get("environment"), bundle_id=bundle_id, expected_environment=environment)
        if environment == "Production" and str(app.get("appAppleId")) != credentials.get("app_apple_id"):
            raise CallbackRejected("the notification is for another app", code="store_app_mismatch")
        signed_transaction = app.get("signedTransactionInfo")
        purchase = None
        if isinstance(signed_transaction, str):
            purchase = mapping.purchase(verify_jws(signed_transaction, roots, now_s=request.now_s))
            mapping.check_app(purchase.app_id, purchase.environment, bundle_id=bundle_id, expected_environment=environment)
            signed_renewal = app.get("signedRenewalInfo")
            if isinstance(signed_renewal, str) and purchase.renews:  # signed like the rest: verified the same way
                grace = mapping.grace_until(verify_jws(signed_renewal, roots, now_s=request.now_s), purchase)
                purchase = msgspec.structs.replace(purchase, grace_until_ms=grace)
        return mapping.notification(payload, purchase)

    def parse_statement(self, data: bytes) -> list[StatementLine]:
        """A Summary Sales Report or Financial Report (tab-separated, as App Store Connect
        downloads them, unzipped): aggregate lines per product and period (mapping)."""
        try:
            return mapping.statement_lines(data)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"App Store report is malformed: {exc}", code="statement_malformed",
                                 param="statement") from None

    def callback_reply(self, *, accepted: bool) -> CallbackReply:
        # Apple retries a notification that does not get HTTP 200 (up to five times, v2).
        return CallbackReply(status_code=200 if accepted else 400)
