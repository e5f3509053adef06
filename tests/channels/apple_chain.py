"""A stand-in of Apple's App Store signing: a certificate chain made in the tests (root,
intermediate with Apple's intermediate marker OID, leaf with Apple's leaf marker OID) and JWS
signed as Apple signs them (ES256, the chain in `x5c`), with PyJWT, not with APSS's code."""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
BUNDLE_ID = "com.example.game"
APP_APPLE_ID = 1234567890


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")])


def _cert(*, subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, marker: x509.ObjectIdentifier | None,
          not_before: datetime.datetime, not_after: datetime.datetime, issuer_public=None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public or issuer_key.public_key()),
                              critical=False))
    if marker is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(marker, b"\x05\x00"), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class AppleSigner:
    """One chain; `leaf_marker` / `intermediate_marker` False makes a chain without Apple's OIDs."""

    def __init__(self, *, leaf_marker: bool = True, intermediate_marker: bool = True,
                 root_key=None, root: x509.Certificate | None = None) -> None:
        now = datetime.datetime.now(datetime.UTC)
        start, end = now - datetime.timedelta(days=365), now + datetime.timedelta(days=365)
        self.root_key = root_key or ec.generate_private_key(ec.SECP384R1())
        self.root = root or _cert(subject="Test Root CA", key=self.root_key, issuer_name=_name("Test Root CA"),
                                  issuer_key=self.root_key, ca=True, marker=None, not_before=start, not_after=end)
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate = _cert(subject="Test WWDR Intermediate", key=self.intermediate_key, issuer_name=self.root.subject,
                                  issuer_key=self.root_key, ca=True,
                                  marker=INTERMEDIATE_OID if intermediate_marker else None, not_before=start, not_after=end)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _cert(subject="Test App Store Signing", key=self.leaf_key, issuer_name=self.intermediate.subject,
                          issuer_key=self.intermediate_key, ca=False, marker=LEAF_OID if leaf_marker else None,
                          not_before=start, not_after=end)

    @property
    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def sign(self, payload: dict) -> str:
        x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
               for c in (self.leaf, self.intermediate, self.root)]
        key = self.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        return jwt.encode(payload, key, algorithm="ES256", headers={"x5c": x5c})

    def transaction(self, **fields) -> dict:
        """A JWSTransactionDecodedPayload as Apple fills it for a consumable (fields override)."""
        now_ms = int(time.time() * 1000)
        transaction_id = fields.pop("transactionId", str(uuid.uuid4().int % 10**15))
        return {"transactionId": transaction_id, "originalTransactionId": transaction_id, "bundleId": BUNDLE_ID,
                "productId": "gems_500", "purchaseDate": now_ms - 1000, "originalPurchaseDate": now_ms - 1000,
                "quantity": 1, "type": "Consumable", "inAppOwnershipType": "PURCHASED", "signedDate": now_ms,
                "environment": "Sandbox", "transactionReason": "PURCHASE", "storefront": "USA", "storefrontId": "143441",
                "price": 4990, "currency": "USD", **fields}

    def notification(self, notification_type: str, transaction: dict | None, *, subtype: str | None = None,
                     notification_uuid: str | None = None, environment: str = "Sandbox",
                     bundle_id: str = BUNDLE_ID) -> str:
        data = {"appAppleId": APP_APPLE_ID, "bundleId": bundle_id, "bundleVersion": "1", "environment": environment}
        if transaction is not None:
            data["signedTransactionInfo"] = self.sign(transaction)
        payload = {"notificationType": notification_type, "notificationUUID": notification_uuid or str(uuid.uuid4()),
                   "data": data, "version": "2.0", "signedDate": int(time.time() * 1000)}
        if subtype:
            payload["subtype"] = subtype
        return json.dumps({"signedPayload": self.sign(payload)})
