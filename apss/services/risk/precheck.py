"""The optional pre-payment check: before an order is created, APSS asks a URL of the merchant's
whether this player exists and may buy.

The request is a POST of JSON `{"type": "order.precheck", "player_id", "currency", "items":
[{"product_id", "quantity"}], "ip", "device_id", "billing_country", "email_domain"}`, signed like
merchant webhooks (`APSS-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`) with the
check's own secret (shown once, when it is set). The merchant answers 2xx `{"allow": true}` or
`{"allow": false, "reason"?}`. It runs before the order's write transaction (never inside one),
bounded by `timeout_ms`; a timeout, a non-2xx or an unreadable answer follows the merchant's
`on_timeout` policy (`allow` or `block`). The answer and its latency become the order's risk
attributes (`precheck`, `precheck_answer`, `precheck_latency_ms`), stored with its decision; a
`block` blocks the order like a rule (the rule fired is named `precheck`). Outbound requests obey
the SSRF rules of webhook URLs (services/outbound.py).

Each merchant's check is read once and cached; a change drops it after commit, and on PostgreSQL
marks the cache "prechecks" changed (store/caches.py) so that other instances drop theirs too
(`reload`; services/ops/cache_sync.py).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import httpx
import msgspec
from msgspec import Meta

from apss.clock import Clock
from apss.crypto import Keyring, random_token, sign_timestamped
from apss.errors import NotFound, TargetNotAllowed
from apss.services.merchants.keys import Merchant
from apss.services.outbound import TargetClients, check_webhook_url
from apss.store import caches
from apss.store import risk as store
from apss.store.db import Database, Tx

__all__ = ["PrecheckPut", "PrecheckResult", "PrecheckView", "Prechecks"]

log = logging.getLogger("apss.risk.precheck")
_ANSWER_BYTES_MAX = 4096


class PrecheckPut(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(pattern=r"^https?://", max_length=2048)]
    timeout_ms: Annotated[int, Meta(ge=100, le=10_000)] = 1500
    on_timeout: Literal["allow", "block"] = "allow"


class PrecheckView(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    timeout_ms: int
    on_timeout: str
    secret: str | None = None  # only in the answer that set it


class PrecheckResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # allow | block (after the policy)
    answer: str  # allow | block | timeout | error
    latency_ms: int


class _Answer(msgspec.Struct, frozen=True):
    allow: bool
    reason: str | None = None


class _Config(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    secret: str
    timeout_ms: int
    on_timeout: str


class Prechecks:
    def __init__(self, *, db: Database, clock: Clock, keyring: Keyring, http: TargetClients,
                 allow_private_targets: bool) -> None:
        self._db = db
        self._clock = clock
        self._keyring = keyring
        self.http = http
        self._allow_private_targets = allow_private_targets
        self._configs: dict[str, _Config | None] = {}  # merchant -> its check (None: none set), read once
        self._dropped = 0  # drops so far: a read that began before a drop is not cached

    def _private_allowed(self, merchant: Merchant) -> bool:
        return merchant.mode == "test" or self._allow_private_targets

    async def put(self, *, merchant: Merchant, command: PrecheckPut) -> PrecheckView:
        check_webhook_url(command.url, https_required=merchant.mode == "live",
                          private_allowed=self._private_allowed(merchant))
        secret = f"whsec_{random_token(24)}"

        def transaction(tx: Tx) -> None:
            store.upsert_precheck(tx, {"merchant_id": merchant.id, "url": command.url, "timeout_ms": command.timeout_ms,
                                       "secret_sealed": self._keyring.seal(secret, context=f"precheck:{merchant.id}"),
                                       "on_timeout": command.on_timeout, "updated_at_ms": self._clock.now_ms()})
            caches.changed(tx, "prechecks", merchant.id)
            tx.after_commit(lambda: self._drop(merchant.id))

        await self._db.write(transaction)
        return PrecheckView(url=command.url, timeout_ms=command.timeout_ms, on_timeout=command.on_timeout, secret=secret)

    async def get(self, *, merchant: Merchant) -> PrecheckView:
        config = await self._config(merchant.id)
        if config is None:
            raise NotFound("No pre-payment check is set.", param="precheck")
        return PrecheckView(url=config.url, timeout_ms=config.timeout_ms, on_timeout=config.on_timeout)

    async def delete(self, *, merchant: Merchant) -> None:
        def transaction(tx: Tx) -> bool:
            removed = store.delete_precheck(tx, merchant_id=merchant.id)
            caches.changed(tx, "prechecks", merchant.id)
            tx.after_commit(lambda: self._drop(merchant.id))
            return removed

        if not await self._db.write(transaction):
            raise NotFound("No pre-payment check is set.", param="precheck")

    async def reload(self, merchant_id: str | None, generation: int = 0) -> None:
        """The cache "prechecks" changed on another instance: the merchant's check (None: every
        one) is read again when next needed."""
        self._drop(merchant_id)

    def _drop(self, merchant_id: str | None) -> None:
        self._dropped += 1
        if merchant_id is None:
            self._configs.clear()
        else:
            self._configs.pop(merchant_id, None)

    async def _config(self, merchant_id: str) -> _Config | None:
        if merchant_id in self._configs:
            return self._configs[merchant_id]
        dropped = self._dropped
        row = await store.fetch_precheck(self._db, merchant_id=merchant_id)
        config = None if row is None else _Config(
            url=row["url"], secret=self._keyring.open(row["secret_sealed"], context=f"precheck:{merchant_id}"),
            timeout_ms=row["timeout_ms"], on_timeout=row["on_timeout"])
        if dropped == self._dropped:  # else the row may predate the change that dropped it
            self._configs[merchant_id] = config
        return config

    async def run(self, *, merchant: Merchant, body: dict) -> PrecheckResult | None:
        """Ask the merchant's URL (None when it set none). Never raises for the merchant's side."""
        config = await self._config(merchant.id)
        if config is None:
            return None
        payload = msgspec.json.encode({"type": "order.precheck", **body})
        headers = {"Content-Type": "application/json", "User-Agent": "APSS-Precheck/1",
                   "APSS-Signature": sign_timestamped(secret=config.secret, timestamp_s=self._clock.now_ms() // 1000,
                                                      body=payload)}
        client = self.http.client(private_allowed=self._private_allowed(merchant))
        started = time.monotonic()
        answer = "error"
        try:
            async with client.stream("POST", config.url, content=payload, headers=headers,
                                     timeout=config.timeout_ms / 1000, follow_redirects=False) as response:
                raw = b""
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > _ANSWER_BYTES_MAX:
                        break
                if 200 <= response.status_code < 300 and len(raw) <= _ANSWER_BYTES_MAX:
                    answer = "allow" if msgspec.json.decode(raw, type=_Answer).allow else "block"
        except httpx.TimeoutException:
            answer = "timeout"
        except (httpx.HTTPError, TargetNotAllowed, msgspec.DecodeError, msgspec.ValidationError) as failed:
            log.warning("precheck of merchant %s failed: %s", merchant.id, type(failed).__name__)
        latency_ms = int((time.monotonic() - started) * 1000)
        outcome = answer if answer in ("allow", "block") else config.on_timeout
        assert outcome in ("allow", "block")
        return PrecheckResult(outcome=outcome, answer=answer, latency_ms=latency_ms)
