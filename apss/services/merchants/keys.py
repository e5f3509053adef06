"""Merchants, their secret keys, the admin token, and authentication from memory.

Keys are stored as SHA-256 hashes; authentication looks the hash up in an in-memory map that
the writer updates after each commit, so it costs no database round trip.
"""

from __future__ import annotations

import hmac
import secrets

import msgspec

from apss.clock import Clock, format_rfc3339
from apss.crypto import Keyring, hash_secret, random_token
from apss.errors import AuthenticationFailed, LiveModeUnavailable, NotFound
from apss.ids import new_id
from apss.services.merchants.rate_limit import AdminThrottle
from apss.services.paging import page_of
from apss.services.views import (
    AccountView,
    MerchantCreatedView,
    MerchantView,
    SecretKeyView,
)
from apss.store import merchants as store
from apss.store.db import Database, Tx

__all__ = ["Merchant", "Merchants"]

_ADMIN_HASH_SETTING = "admin_token_hash"


class Merchant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    mode: str  # test | live
    currency: str  # settlement currency; the base of FX-converted prices
    sandbox_webhook_secret: str | None  # opened from its sealed form; never logged

    def __repr__(self) -> str:
        return f"Merchant(id={self.id!r}, mode={self.mode!r})"


def _new_secret_key(mode: str) -> str:
    return f"sk_{mode}_{secrets.token_urlsafe(32)}"


class Merchants:
    def __init__(self, *, db: Database, clock: Clock, keyring: Keyring, live_mode_allowed: bool,
                 admin_throttle: AdminThrottle | None = None) -> None:
        """`live_mode_allowed` is false when the clock is a test clock: live money never runs on one."""
        self._db = db
        self._live_mode_allowed = live_mode_allowed
        self._clock = clock
        self._keyring = keyring
        self._by_key_hash: dict[str, Merchant] = {}
        self._by_id: dict[str, Merchant] = {}
        self._admin_hash: str | None = None
        self._admin_throttle = admin_throttle or AdminThrottle()

    # -- cache -------------------------------------------------------------------------------
    async def load(self) -> None:
        for row in await store.all_merchants(self._db):
            self._by_id[row["id"]] = self._merchant(row)
        for row in await store.active_keys(self._db):
            self._by_key_hash[row["key_hash"]] = self._by_id[row["merchant_id"]]

    def _merchant(self, row) -> Merchant:
        sealed = row["sandbox_webhook_secret_sealed"]
        secret = self._keyring.open(sealed, context=row["id"]) if sealed else None
        return Merchant(id=row["id"], name=row["name"], mode=row["mode"], currency=row["currency"],
                        sandbox_webhook_secret=secret)

    def authenticate(self, secret_key: str) -> Merchant:
        merchant = self._by_key_hash.get(hash_secret(secret_key)) if len(secret_key) >= 16 else None
        if merchant is None:
            raise AuthenticationFailed("Invalid API key provided.")
        return merchant

    def by_id(self, merchant_id: str) -> Merchant | None:
        return self._by_id.get(merchant_id)

    # -- admin token -------------------------------------------------------------------------
    async def ensure_admin_token(self, configured: str) -> str | None:
        """Use the configured token, or the stored hash; on first start generate one.
        Returns the new plaintext token when one was generated (printed once by the caller)."""
        if configured:
            self._admin_hash = hash_secret(configured)
            return None
        generated = f"adm_{random_token(24)}"

        def fetch_or_create(tx: Tx) -> str | None:
            stored = store.get_setting_tx(tx, _ADMIN_HASH_SETTING)
            if stored is not None:
                return stored
            store.set_setting(tx, _ADMIN_HASH_SETTING, hash_secret(generated))
            return None

        stored = await self._db.write(fetch_or_create)
        self._admin_hash = stored or hash_secret(generated)
        return None if stored else generated

    def check_admin(self, token: str, *, address: str) -> None:
        """Raises AuthenticationFailed for a wrong token, AdminAuthThrottled (429) while `address`
        (the client's) is locked out after too many failures (rate_limit.AdminThrottle)."""
        assert self._admin_hash is not None, "admin token not initialised"
        now_ms = self._clock.now_ms()
        self._admin_throttle.check(address, now_ms=now_ms)
        if len(token) < 16 or not hmac.compare_digest(hash_secret(token), self._admin_hash):
            self._admin_throttle.failed(address, now_ms=now_ms)
            raise AuthenticationFailed("Invalid admin token provided.")

    # -- merchants ---------------------------------------------------------------------------
    async def create(self, *, name: str, mode: str, currency: str = "USD") -> MerchantCreatedView:
        assert mode in ("test", "live")
        if mode == "live" and not self._live_mode_allowed:
            raise LiveModeUnavailable("This server runs on a test clock (clock.mode = \"test\"): "
                                      "live merchants are unavailable.", param="mode")
        merchant_id, secret_key, now_ms = new_id("mch"), _new_secret_key(mode), self._clock.now_ms()
        sandbox_secret = f"whsec_{random_token(24)}" if mode == "test" else None
        merchant = Merchant(id=merchant_id, name=name, mode=mode, currency=currency, sandbox_webhook_secret=sandbox_secret)
        key_hash = hash_secret(secret_key)

        def transaction(tx: Tx) -> None:
            sealed = self._keyring.seal(sandbox_secret, context=merchant_id) if sandbox_secret else None
            store.insert_merchant(tx, merchant_id=merchant_id, name=name, mode=mode, currency=currency,
                                  sandbox_secret_sealed=sealed, now_ms=now_ms)
            store.insert_api_key(tx, merchant_id=merchant_id, key_hash=key_hash, now_ms=now_ms)

            def publish() -> None:
                self._by_id[merchant_id] = merchant
                self._by_key_hash[key_hash] = merchant

            tx.after_commit(publish)

        await self._db.write(transaction)
        return MerchantCreatedView(id=merchant_id, name=name, mode=mode, currency=currency, secret_key=secret_key,
                                   created_at=format_rfc3339(now_ms))

    async def rotate_key(self, merchant_id: str) -> SecretKeyView:
        merchant = self._by_id.get(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
        secret_key, now_ms = _new_secret_key(merchant.mode), self._clock.now_ms()
        key_hash = hash_secret(secret_key)

        def transaction(tx: Tx) -> None:
            revoked = store.revoke_keys(tx, merchant_id=merchant_id, now_ms=now_ms)
            store.insert_api_key(tx, merchant_id=merchant_id, key_hash=key_hash, now_ms=now_ms)

            def publish() -> None:
                for old in revoked:
                    self._by_key_hash.pop(old, None)
                self._by_key_hash[key_hash] = merchant

            tx.after_commit(publish)

        await self._db.write(transaction)
        return SecretKeyView(secret_key=secret_key)

    async def get(self, merchant_id: str) -> MerchantView:
        row = await store.fetch_merchant(self._db, merchant_id)
        if row is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
        return _merchant_view(row)

    async def list(self, *, after_id: str | None, limit: int) -> tuple[list[MerchantView], bool]:
        rows = await store.list_merchants(self._db, after_id=after_id, limit=limit + 1)
        return page_of(rows, limit, _merchant_view)

    @staticmethod
    def account(merchant: Merchant) -> AccountView:
        return AccountView(id=merchant.id, name=merchant.name, mode=merchant.mode, currency=merchant.currency,
                           sandbox_webhook_secret=merchant.sandbox_webhook_secret)


def _merchant_view(row) -> MerchantView:
    return MerchantView(id=row["id"], name=row["name"], mode=row["mode"], currency=row["currency"], created_at=format_rfc3339(row["created_at_ms"]))
