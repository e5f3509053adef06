"""Merchants, their secret and publishable keys, the admin token, and authentication from memory.

Secret keys are stored as SHA-256 hashes; authentication looks the hash up in an in-memory map
that the writer updates after each commit, so it costs no database round trip. Publishable keys
(`pk_...`) are public (they only open and start checkouts from a browser), so they are stored as
they are and shown in `GET /v1/account`; they are looked up the same way, in a map of their own,
so a publishable key can never pass for a secret one. The origins a merchant embeds the
checkout in are cached beside them (the checkout page's CSP and CORS read them per request),
and so is each merchant's own rate limit (its bucket is per process).

On PostgreSQL, where several instances share the database, every change of these marks the cache
"merchants" changed in its transaction (store/caches.py); the other instances reload that
merchant (`reload`) when the notice reaches them, or all merchants when one may have been lost
(services/ops/cache_sync.py).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable

import msgspec

from apss.clock import Clock, format_rfc3339
from apss.crypto import Keyring, hash_secret, random_token
from apss.domain.origins import normalise_origins
from apss.errors import AuthenticationFailed, LiveModeUnavailable, NotFound
from apss.ids import new_id
from apss.services.merchants.rate_limit import AdminThrottle, RateLimiter
from apss.services.paging import page_of
from apss.services.views import (
    AccountView,
    MerchantCreatedView,
    MerchantView,
    PublishableKeyView,
    RateLimitView,
    SecretKeyView,
)
from apss.store import caches
from apss.store import merchants as store
from apss.store.db import Database, Tx

__all__ = ["PUBLISHABLE_PREFIX", "Merchant", "Merchants"]

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


def _new_publishable_key(mode: str) -> str:
    # Public, but unguessable all the same: knowing a merchant id must not be enough to sell as it.
    return f"pk_{mode}_{secrets.token_urlsafe(24)}"


PUBLISHABLE_PREFIX = "pk_"


class Merchants:
    def __init__(self, *, db: Database, clock: Clock, keyring: Keyring, live_mode_allowed: bool,
                 admin_throttle: AdminThrottle | None = None, rate_limiter: RateLimiter | None = None) -> None:
        """`live_mode_allowed` is false when the clock is a test clock: live money never runs on one."""
        self._db = db
        self._live_mode_allowed = live_mode_allowed
        self._clock = clock
        self._keyring = keyring
        self._by_key_hash: dict[str, Merchant] = {}
        self._key_hashes_of: dict[str, set[str]] = {}  # merchant id -> its active secret key hashes
        self._by_id: dict[str, Merchant] = {}
        self._admin_hash: str | None = None
        self._by_publishable: dict[str, Merchant] = {}
        self._publishable_of: dict[str, str] = {}  # merchant id -> its active publishable key
        self._origins_of: dict[str, tuple[str, ...]] = {}
        self._origins_anywhere: frozenset[str] = frozenset()  # listed by some merchant: preflights
        self._admin_throttle = admin_throttle or AdminThrottle()
        self.rate_limiter = rate_limiter or RateLimiter(rate_per_s=0, burst=1)

    # -- cache -------------------------------------------------------------------------------
    async def load(self) -> None:
        """Every merchant, key and origin from the database, swapped in at once (at start; on
        PostgreSQL also when a notice may have been lost): a key revoked meanwhile is gone."""
        rows = await store.all_merchants(self._db)
        key_rows = await store.active_keys(self._db)
        publishable_rows = await store.active_publishable_keys(self._db)
        by_id = {row["id"]: self._merchant(row) for row in rows}
        by_key_hash: dict[str, Merchant] = {}
        key_hashes_of: dict[str, set[str]] = {}
        for row in key_rows:
            if row["merchant_id"] in by_id:  # (a merchant made between the two reads: its notice follows)
                by_key_hash[row["key_hash"]] = by_id[row["merchant_id"]]
                key_hashes_of.setdefault(row["merchant_id"], set()).add(row["key_hash"])
        by_publishable = {row["key"]: by_id[row["merchant_id"]] for row in publishable_rows if row["merchant_id"] in by_id}
        self._by_id, self._by_key_hash, self._key_hashes_of = by_id, by_key_hash, key_hashes_of
        self._by_publishable = by_publishable
        self._publishable_of = {merchant.id: key for key, merchant in by_publishable.items()}
        self._origins_of = {row["id"]: tuple(msgspec.json.decode(row["allowed_origins"], type=list[str])) for row in rows}
        self._origins_anywhere = frozenset(o for origins in self._origins_of.values() for o in origins)
        for row in rows:
            self._set_limit(row)

    async def reload(self, merchant_id: str | None, generation: int = 0) -> None:
        """The cache "merchants" changed on another instance (services/ops/cache_sync.py): reload
        that merchant's row, keys and origins (None: everything)."""
        if merchant_id is None:
            await self.load()
            return
        row = await store.fetch_merchant(self._db, merchant_id)
        key_hashes = await store.active_key_hashes_of(self._db, merchant_id)
        publishable = await store.active_publishable_key_of(self._db, merchant_id)
        for old in self._key_hashes_of.pop(merchant_id, set()):
            self._by_key_hash.pop(old, None)
        old_publishable = self._publishable_of.pop(merchant_id, None)
        if old_publishable is not None:
            self._by_publishable.pop(old_publishable, None)
        if row is None:  # (merchants are never deleted; nothing of it may authenticate)
            self._by_id.pop(merchant_id, None)
            self._publish_origins(merchant_id, ())
            return
        merchant = self._by_id[merchant_id] = self._merchant(row)
        self._key_hashes_of[merchant_id] = set(key_hashes)
        for key_hash in key_hashes:
            self._by_key_hash[key_hash] = merchant
        if publishable is not None:
            self._by_publishable[publishable] = merchant
            self._publishable_of[merchant_id] = publishable
        self._publish_origins(merchant_id, msgspec.json.decode(row["allowed_origins"], type=list[str]))
        self._set_limit(row)

    def _set_limit(self, row) -> None:
        """The merchant's configured rate limit from its row; its bucket is kept unless it changed."""
        limit = None if row["rate_limit_per_s"] is None else (row["rate_limit_per_s"], row["rate_limit_burst"])
        current = self.rate_limiter.limit_of(row["id"]) if self.rate_limiter.has_own(row["id"]) else None
        if limit != current:
            self.rate_limiter.set_limit(row["id"], limit)

    def _merchant(self, row) -> Merchant:
        sealed = row["sandbox_webhook_secret_sealed"]
        secret = self._keyring.open(sealed, context=row["id"]) if sealed else None
        return Merchant(id=row["id"], name=row["name"], mode=row["mode"], currency=row["currency"],
                        sandbox_webhook_secret=secret)

    def authenticate(self, secret_key: str) -> Merchant:
        if secret_key.startswith(PUBLISHABLE_PREFIX):
            raise AuthenticationFailed("A publishable key works only for the checkout's browser endpoints "
                                       "(/v1/checkout/...); use a secret key here.", code="publishable_key_not_allowed")
        merchant = self._by_key_hash.get(hash_secret(secret_key)) if len(secret_key) >= 16 else None
        if merchant is None:
            raise AuthenticationFailed("Invalid API key provided.")
        return merchant

    def authenticate_publishable(self, publishable_key: str) -> Merchant:
        """The browser endpoints' key. A secret key is refused: it must never be in a browser."""
        if not publishable_key.startswith(PUBLISHABLE_PREFIX):
            raise AuthenticationFailed("The checkout's browser endpoints take a publishable key (pk_...); "
                                       "never put a secret key in a web page.", code="secret_key_not_allowed")
        merchant = self._by_publishable.get(publishable_key)
        if merchant is None:
            raise AuthenticationFailed("Invalid publishable key provided.")
        return merchant

    def publishable_key(self, merchant_id: str) -> str | None:
        return self._publishable_of.get(merchant_id)

    def allowed_origins(self, merchant_id: str) -> tuple[str, ...]:
        return self._origins_of.get(merchant_id, ())

    def origin_listed(self, origin: str) -> bool:
        """Does any merchant list `origin`? A CORS preflight carries no key, so it cannot say whose."""
        return origin in self._origins_anywhere

    def _publish_origins(self, merchant_id: str, origins: Iterable[str]) -> None:
        self._origins_of[merchant_id] = tuple(origins)
        self._origins_anywhere = frozenset(o for listed in self._origins_of.values() for o in listed)

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
        now_ms = self._clock.now_ms()
        self._admin_throttle.check(address, now_ms=now_ms)
        if not self.is_admin_token(token):
            self._admin_throttle.failed(address, now_ms=now_ms)
            raise AuthenticationFailed("Invalid admin token provided.")

    def is_admin_token(self, token: str) -> bool:
        """Whether `token` is the admin token, for naming who acted (the audit log); not an
        authentication, so it neither counts nor checks the guessing throttle."""
        assert self._admin_hash is not None, "admin token not initialised"
        return len(token) >= 16 and hmac.compare_digest(hash_secret(token), self._admin_hash)

    # -- merchants ---------------------------------------------------------------------------
    async def create(self, *, name: str, mode: str, currency: str = "USD") -> MerchantCreatedView:
        assert mode in ("test", "live")
        if mode == "live" and not self._live_mode_allowed:
            raise LiveModeUnavailable("This server runs on a test clock (clock.mode = \"test\"): "
                                      "live merchants are unavailable.", param="mode")
        merchant_id, secret_key, now_ms = new_id("mch"), _new_secret_key(mode), self._clock.now_ms()
        sandbox_secret = f"whsec_{random_token(24)}" if mode == "test" else None
        merchant = Merchant(id=merchant_id, name=name, mode=mode, currency=currency, sandbox_webhook_secret=sandbox_secret)
        key_hash, publishable_key = hash_secret(secret_key), _new_publishable_key(mode)

        def transaction(tx: Tx) -> None:
            sealed = self._keyring.seal(sandbox_secret, context=merchant_id) if sandbox_secret else None
            # Test merchants move no real money: verified. A live one waits for the admin's check.
            store.insert_merchant(tx, merchant_id=merchant_id, name=name, mode=mode, currency=currency,
                                  sandbox_secret_sealed=sealed, now_ms=now_ms,
                                  kyc_status="verified" if mode == "test" else "unverified")
            store.insert_api_key(tx, merchant_id=merchant_id, key_hash=key_hash, now_ms=now_ms)
            store.insert_publishable_key(tx, merchant_id=merchant_id, key=publishable_key, now_ms=now_ms)
            caches.changed(tx, "merchants", merchant_id)

            def publish() -> None:
                self._by_id[merchant_id] = merchant
                self._by_key_hash[key_hash] = merchant
                self._key_hashes_of[merchant_id] = {key_hash}
                self._by_publishable[publishable_key] = merchant
                self._publishable_of[merchant_id] = publishable_key
                self._publish_origins(merchant_id, ())

            tx.after_commit(publish)

        await self._db.write(transaction)
        return MerchantCreatedView(id=merchant_id, name=name, mode=mode, currency=currency, secret_key=secret_key,
                                   publishable_key=publishable_key,
                                   kyc_status="verified" if mode == "test" else "unverified",
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
            caches.changed(tx, "merchants", merchant_id)

            def publish() -> None:
                for old in revoked:
                    self._by_key_hash.pop(old, None)
                self._by_key_hash[key_hash] = merchant
                self._key_hashes_of[merchant_id] = {key_hash}

            tx.after_commit(publish)

        await self._db.write(transaction)
        return SecretKeyView(secret_key=secret_key)

    async def roll_publishable_key(self, merchant_id: str) -> PublishableKeyView:
        """A new publishable key; the old one stops working at once (pages that embed it must be updated)."""
        merchant = self._by_id.get(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
        key, now_ms = _new_publishable_key(merchant.mode), self._clock.now_ms()

        def transaction(tx: Tx) -> None:
            revoked = store.revoke_publishable_keys(tx, merchant_id=merchant_id, now_ms=now_ms)
            assert len(revoked) <= 1, "a unique index keeps one active publishable key per merchant"
            store.insert_publishable_key(tx, merchant_id=merchant_id, key=key, now_ms=now_ms)
            caches.changed(tx, "merchants", merchant_id)

            def publish() -> None:
                for old in revoked:
                    self._by_publishable.pop(old, None)
                self._by_publishable[key] = merchant
                self._publishable_of[merchant_id] = key

            tx.after_commit(publish)

        await self._db.write(transaction)
        return PublishableKeyView(publishable_key=key)

    async def set_allowed_origins(self, merchant_id: str, origins: list[str]) -> tuple[str, ...]:
        """Replace the merchant's embedding sites (normalised; see domain/origins.py)."""
        merchant = self._by_id.get(merchant_id)
        if merchant is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
        normalised = normalise_origins(origins, live=merchant.mode == "live")

        def transaction(tx: Tx) -> None:
            store.set_allowed_origins(tx, merchant_id=merchant_id, origins_json=msgspec.json.encode(normalised).decode())
            caches.changed(tx, "merchants", merchant_id)
            tx.after_commit(lambda: self._publish_origins(merchant_id, normalised))

        await self._db.write(transaction)
        # (On PostgreSQL a reload for another instance's notice may have run since.)
        assert self._db.dialect != "sqlite" or self._origins_of[merchant_id] == tuple(normalised), \
            "after_commit ran before the write returned"
        return tuple(normalised)

    async def set_rate_limit(self, merchant_id: str, limit: tuple[int, int] | None) -> None:
        """The merchant's own (requests per second, burst), or None for the server's default; the
        next request is judged by it."""
        def transaction(tx: Tx) -> None:
            per_s, burst = limit if limit is not None else (None, None)
            if not store.set_rate_limit(tx, merchant_id=merchant_id, per_s=per_s, burst=burst):
                raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
            caches.changed(tx, "merchants", merchant_id)
            tx.after_commit(lambda: self.rate_limiter.set_limit(merchant_id, limit))

        await self._db.write(transaction)

    async def set_kyc(self, merchant_id: str, *, status: str) -> MerchantView:
        """The admin's KYC decision on a merchant (payouts wait for `verified`)."""
        assert status in ("unverified", "pending", "verified", "rejected"), status

        def transaction(tx: Tx) -> None:
            if not store.set_merchant_kyc(tx, merchant_id=merchant_id, status=status):
                raise NotFound(f"No such merchant: '{merchant_id}'", param="id")

        await self._db.write(transaction)
        return await self.get(merchant_id)

    async def get(self, merchant_id: str) -> MerchantView:
        row = await store.fetch_merchant(self._db, merchant_id)
        if row is None:
            raise NotFound(f"No such merchant: '{merchant_id}'", param="id")
        return self._merchant_view(row)

    async def list(self, *, after_id: str | None, limit: int) -> tuple[list[MerchantView], bool]:
        rows = await store.list_merchants(self._db, after_id=after_id, limit=limit + 1)
        return page_of(rows, limit, self._merchant_view)

    def account(self, merchant: Merchant) -> AccountView:
        return AccountView(id=merchant.id, name=merchant.name, mode=merchant.mode, currency=merchant.currency,
                           publishable_key=self._publishable_of.get(merchant.id),
                           allowed_origins=list(self._origins_of.get(merchant.id, ())),
                           sandbox_webhook_secret=merchant.sandbox_webhook_secret)

    def _merchant_view(self, row) -> MerchantView:
        # The key and origins from the cache the writer keeps after commit (the row is a reader's).
        return MerchantView(id=row["id"], name=row["name"], mode=row["mode"], currency=row["currency"],
                            publishable_key=self._publishable_of.get(row["id"]),
                            allowed_origins=list(self._origins_of.get(row["id"], ())), kyc_status=row["kyc_status"],
                            rate_limit=self._rate_limit_view(row["id"]), created_at=format_rfc3339(row["created_at_ms"]))

    def _rate_limit_view(self, merchant_id: str) -> RateLimitView:
        per_s, burst = self.rate_limiter.limit_of(merchant_id)
        return RateLimitView(requests_per_s=per_s, burst=burst, default=not self.rate_limiter.has_own(merchant_id))
