"""HMAC signing and verification (constant time), key hashing, AES-GCM sealing of secrets.

Sealed values carry the id of the key that sealed them (`<kid>:<base64 nonce|ciphertext>`), so
keys can rotate: new values are sealed with the primary key, old ones still open with theirs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "Keyring",
    "PersonalData",
    "SignatureHeader",
    "hash_secret",
    "key_id_of",
    "keyring_from_file",
    "hmac_sha256_hex",
    "parse_signature_header",
    "random_token",
    "sign_timestamped",
    "verify_timestamped",
]

_NONCE_BYTES = 12


def random_token(nbytes: int = 24) -> str:
    """URL-safe random text; 24 bytes = 192 bits."""
    assert nbytes >= 16, "tokens carry at least 128 random bits"
    return secrets.token_urlsafe(nbytes)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a long random secret (API keys, admin token): no slow hash is needed."""
    assert len(secret) >= 16
    return hashlib.sha256(secret.encode()).hexdigest()


def hmac_sha256_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class SignatureHeader:
    """A parsed `t=<unix>,v1=<hex>[,v1=<hex>...]` header (Stripe's scheme; other schemes ignored)."""

    __slots__ = ("timestamp_s", "signatures")

    def __init__(self, timestamp_s: int, signatures: list[str]) -> None:
        self.timestamp_s = timestamp_s
        self.signatures = signatures


def parse_signature_header(header: str) -> SignatureHeader | None:
    timestamp_s: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and timestamp_s is None and value.isascii() and value.isdigit():
            timestamp_s = int(value)  # the first t= counts, as in Stripe's parser
        elif key == "v1":
            signatures.append(value)
    if timestamp_s is None or not signatures:
        return None
    return SignatureHeader(timestamp_s, signatures)


def sign_timestamped(*, secret: str, timestamp_s: int, body: bytes) -> str:
    """The header value for `body`: `t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>")`."""
    assert timestamp_s > 0
    signature = hmac_sha256_hex(secret, str(timestamp_s).encode() + b"." + body)
    return f"t={timestamp_s},v1={signature}"


def verify_timestamped(
    *, secrets_allowed: list[str], header: str, body: bytes, now_s: int, tolerance_s: int
) -> bool:
    """True when any `v1` matches any allowed secret and `|now - t| <= tolerance` (constant time)."""
    assert tolerance_s > 0
    parsed = parse_signature_header(header)
    if parsed is None or abs(now_s - parsed.timestamp_s) > tolerance_s:
        return False
    signed = str(parsed.timestamp_s).encode() + b"." + body
    matched = False
    for secret in secrets_allowed:
        expected = hmac_sha256_hex(secret, signed)
        for candidate in parsed.signatures:
            # Every comparison runs: no early exit reveals which one matched.
            matched |= hmac.compare_digest(expected, candidate)
    return matched


class Keyring:
    """AES-256-GCM keys by id; seals with the primary, opens with whichever sealed it."""

    def __init__(self, keys: dict[str, bytes], *, primary: str) -> None:
        assert primary in keys, "the primary key id must be in the keyring"
        assert all(len(k) == 32 for k in keys.values()), "AES-256 keys are 32 bytes"
        assert all(":" not in kid for kid in keys)
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._primary = primary

    def __repr__(self) -> str:  # secrets never reach a log
        return f"Keyring(ids={sorted(self._keys)}, primary={self._primary!r})"

    @property
    def primary(self) -> str:
        return self._primary

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, plaintext: str, *, context: str) -> str:
        """Encrypt; `context` (e.g. the row id) is authenticated so sealed values cannot be swapped."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._keys[self._primary].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{self._primary}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, *, context: str) -> str:
        kid, sep, payload = sealed.partition(":")
        assert sep, "a sealed value names its key id"
        key = self._keys.get(kid)
        if key is None:
            raise KeyError(f"no key with id {kid!r} in the keyring")
        raw = base64.b64decode(payload)
        try:
            return key.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("sealed value does not open under its key and context") from exc


def key_id_of(sealed: str) -> str:
    """The id of the key a sealed value names (`<kid>:...`)."""
    kid, sep, _ = sealed.partition(":")
    assert sep, "a sealed value names its key id"
    return kid


class PersonalData:
    """Personal data at rest: AES-256-GCM under a key id (`<kid>:<base64 nonce|ciphertext>`, the
    row and column as associated data), and keyed-hash pseudonyms of player ids.

    The store seals every personal column with `seal` and opens it with `open`; a new primary key
    (`rotate`) seals new values at once, and the rotation job re-seals the old ones in batches
    (`is_current` tells which). `pseudonym` is HMAC-SHA256 under a key of its own, so the id of an
    erased player can be recognised (restores, later requests) but not recovered."""

    def __init__(self, keys: dict[str, bytes], *, primary: str, pseudonym_key: bytes) -> None:
        assert len(pseudonym_key) >= 32, "the pseudonym key has at least 256 bits"
        self._keyring = Keyring(keys, primary=primary)
        self._raw = dict(keys)
        self._pseudonym_key = pseudonym_key

    def __repr__(self) -> str:  # keys never reach a log
        return f"PersonalData(ids={sorted(self._raw)}, primary={self.primary!r})"

    @property
    def primary(self) -> str:
        return self._keyring.primary

    @property
    def key_ids(self) -> frozenset[str]:
        return self._keyring.key_ids

    def seal(self, value: str, *, context: str) -> str:
        return self._keyring.seal(value, context=context)

    def open(self, sealed: str, *, context: str) -> str:
        return self._keyring.open(sealed, context=context)

    def is_current(self, sealed: str) -> bool:
        return key_id_of(sealed) == self._keyring.primary

    def reseal(self, sealed: str, *, context: str) -> str:
        """The value sealed again under the primary key (a no-op when it already is)."""
        if self.is_current(sealed):
            return sealed
        return self._keyring.seal(self._keyring.open(sealed, context=context), context=context)

    def rotate(self, kid: str, key: bytes) -> None:
        """Add `key` as the new primary; old keys stay to open what they sealed."""
        assert kid not in self._raw, f"key id {kid!r} is taken"
        self._raw[kid] = key
        self._keyring = Keyring(self._raw, primary=kid)

    def pseudonym(self, merchant_id: str, player_id: str) -> str:
        """`anon_` + 32 hex of HMAC-SHA256(key, merchant id NUL player id): stable per merchant and
        player, a valid player id itself, and not reversible without guessing the id."""
        assert merchant_id and player_id
        digest = hmac.new(self._pseudonym_key, f"{merchant_id}\0{player_id}".encode(), hashlib.sha256).hexdigest()
        return f"anon_{digest[:32]}"


def keyring_from_file(path: str | Path) -> Keyring:
    """The keyring stored in a data key file: `{"primary": kid, "keys": {kid: base64}}`."""
    stored = json.loads(Path(path).read_text())
    return Keyring({k: base64.b64decode(v) for k, v in stored["keys"].items()}, primary=stored["primary"])
