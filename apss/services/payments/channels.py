"""Which channels serve a merchant, in which order, with which credentials, and their health.

- Settings: per merchant and channel, the fields each channel declares (`Channel.settings`);
  secret fields are sealed with AES-GCM and never returned or logged after they are saved.
  The sandbox needs none: it signs with the merchant's own `sandbox_webhook_secret`.
- Routing: an ordered list of channels per currency and/or country, else the default list, else
  the merchant's configured channels (test merchants: the sandbox).
- Circuit breaker: `breaker_failures_max` failures in a row open a merchant's channel for
  `breaker_cooldown_s`; payments skip it meanwhile, then one attempt may close it again.

Settings and routing are cached in memory. On PostgreSQL a change marks the cache "channels"
changed in its transaction (store/caches.py) and the other instances reload the merchant's
settings and routing (`reload`; services/ops/cache_sync.py). Breakers stay per process.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.channels.base import (
    Capability,
    Channel,
    ChannelRegistry,
    Credentials,
    VerifiesCallbacks,
)
from apss.clock import Clock, format_rfc3339
from apss.config import ChannelsConfig
from apss.crypto import Keyring
from apss.domain.money import is_iso_currency
from apss.errors import ChannelNotAvailable, InvalidRequest, NotFound
from apss.services.merchants.keys import Merchant
from apss.services.outbound import check_api_base
from apss.store import caches
from apss.store import channels as store
from apss.store.db import Database, Tx

__all__ = ["ChannelAccess", "ChannelList", "ChannelView", "RoutingIn"]

ChannelName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$")]
ChannelOrder = Annotated[list[ChannelName], Meta(max_length=10)]
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_SETTING_VALUE_MAX = 16_384
# Settings that are URLs APSS sends the merchant's provider credentials to (PIX's OAuth token_url).
_URL_SETTINGS = frozenset({"api_base", "token_url", "push_certs_url"})  # push_certs_url: the keys Google signs with


class RoutingIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    default: ChannelOrder = []
    by_currency: Annotated[dict[str, ChannelOrder], Meta(max_length=200)] = {}
    by_country: Annotated[dict[str, ChannelOrder], Meta(max_length=300)] = {}


class ChannelView(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    configured: bool
    settings: dict[str, str]  # the non-secret fields only
    callback_url: str
    state: Literal["closed", "open"]  # the circuit breaker
    failures: int
    last_error: str | None
    last_error_at: str | None
    open_until: str | None


class ChannelList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[ChannelView]
    routing: RoutingIn
    has_more: bool = False  # a merchant has a handful of channels: one page, in the list shape
    next_cursor: str | None = None


class _Breaker:
    __slots__ = ("failures", "open_until_ms", "last_error", "last_error_at_ms")

    def __init__(self) -> None:
        self.failures = 0
        self.open_until_ms = 0
        self.last_error: str | None = None
        self.last_error_at_ms: int | None = None


class ChannelAccess:
    def __init__(self, *, registry: ChannelRegistry, db: Database, clock: Clock, keyring: Keyring,
                 public_url: str, config: ChannelsConfig) -> None:
        self.registry = registry
        self._db = db
        self._clock = clock
        self._keyring = keyring
        self._public_url = public_url
        self._config = config
        self._settings: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}  # (public, secret)
        self._routing: dict[str, RoutingIn] = {}
        self._breakers: dict[tuple[str, str], _Breaker] = {}

    async def load(self) -> None:
        """Every merchant's settings and routing, swapped in at once."""
        settings = {(row["merchant_id"], row["channel"]): self._opened(row) for row in await store.all_settings(self._db)}
        routing = {row["merchant_id"]: msgspec.json.decode(row["routing"], type=RoutingIn)
                   for row in await store.all_routing(self._db)}
        self._settings, self._routing = settings, routing

    async def reload(self, merchant_id: str | None, generation: int = 0) -> None:
        """The cache "channels" changed on another instance: reload the merchant's settings and
        routing (None: every merchant's)."""
        if merchant_id is None:
            await self.load()
            return
        rows = await store.settings_of(self._db, merchant_id)
        routing = await store.routing_of(self._db, merchant_id)
        settings = {row["channel"]: self._opened(row) for row in rows}
        for key in [k for k in self._settings if k[0] == merchant_id and k[1] not in settings]:
            del self._settings[key]
        for channel, value in settings.items():
            self._settings[(merchant_id, channel)] = value
        if routing is None:
            self._routing.pop(merchant_id, None)
        else:
            self._routing[merchant_id] = msgspec.json.decode(routing, type=RoutingIn)

    def _opened(self, row) -> tuple[dict[str, str], dict[str, str]]:
        secrets = msgspec.json.decode(self._keyring.open(row["secrets_sealed"], context=f"{row['merchant_id']}:{row['channel']}"),
                                      type=dict[str, str])
        return msgspec.json.decode(row["public_settings"], type=dict[str, str]), secrets

    # -- settings ----------------------------------------------------------------------------
    def _channel(self, name: str) -> Channel:
        channel = self.registry.get(name)
        if channel is None:
            raise NotFound(f"No such channel: '{name}'", param="channel")
        return channel

    async def put_settings(self, *, merchant: Merchant, channel_name: str, settings: dict[str, str]) -> ChannelView:
        channel = self._channel(channel_name)
        if channel.test_only:
            raise InvalidRequest(f"The {channel.name} channel needs no settings.", code="channel_needs_no_settings", param="channel")
        public, secrets = _split_settings(channel, settings, live=merchant.mode == "live",
                                          api_base_hosts_allowed=self._config.api_base_hosts_allowed)
        sealed = self._keyring.seal(msgspec.json.encode(secrets).decode(), context=f"{merchant.id}:{channel.name}")

        def transaction(tx: Tx) -> None:
            store.upsert_settings(tx, merchant_id=merchant.id, channel=channel.name, secrets_sealed=sealed,
                                  public_settings=msgspec.json.encode(public).decode(), now_ms=self._clock.now_ms())
            caches.changed(tx, "channels", merchant.id)
            tx.after_commit(lambda: self._settings.__setitem__((merchant.id, channel.name), (public, secrets)))

        await self._db.write(transaction)
        return self._view(merchant, channel.name)

    async def put_routing(self, *, merchant: Merchant, routing: RoutingIn) -> ChannelList:
        lists = [("default", routing.default)] + [(f"by_currency.{k}", v) for k, v in routing.by_currency.items()] \
            + [(f"by_country.{k}", v) for k, v in routing.by_country.items()]
        for code in routing.by_currency:
            if not is_iso_currency(code):
                raise InvalidRequest(f"'{code}' is not a supported currency.", code="currency_not_supported", param=f"by_currency.{code}")
        for code in routing.by_country:
            if not _COUNTRY_RE.match(code):
                raise InvalidRequest("Countries are ISO 3166-1 alpha-2 codes.", code="country_invalid", param=f"by_country.{code}")
        for param, names in lists:
            for index, name in enumerate(names):
                self._usable(merchant, name, param=f"{param}[{index}]")

        def transaction(tx: Tx) -> None:
            store.set_routing(tx, merchant_id=merchant.id, routing=msgspec.json.encode(routing).decode(), now_ms=self._clock.now_ms())
            caches.changed(tx, "channels", merchant.id)
            tx.after_commit(lambda: self._routing.__setitem__(merchant.id, routing))

        await self._db.write(transaction)
        return self.list(merchant)

    def _usable(self, merchant: Merchant, name: str, *, param: str) -> Channel:
        channel = self.registry.get(name)
        if channel is None:
            raise ChannelNotAvailable(f"No such channel: '{name}'.", param=param)
        if channel.test_only and merchant.mode != "test":
            raise ChannelNotAvailable(f"The {name} channel is for test merchants only.", param=param)
        if not self.registry.supports(name, Capability.CREATE_PAYMENT):  # an app store: its app takes the payment
            raise ChannelNotAvailable(f"The {name} channel takes in-app purchases only (POST /v1/iap/{name}).", param=param)
        if not channel.test_only and (merchant.id, name) not in self._settings:
            raise ChannelNotAvailable(f"The {name} channel is not configured for this merchant.", param=param)
        return channel

    def credentials(self, merchant: Merchant, channel: Channel) -> Credentials:
        if channel.test_only:
            if merchant.mode != "test":  # e.g. a sandbox callback posted to a live merchant's route
                raise ChannelNotAvailable(f"The {channel.name} channel is for test merchants only.", param="channel")
            assert merchant.sandbox_webhook_secret, "test merchants always have a sandbox secret"
            return {"webhook_secret": merchant.sandbox_webhook_secret}
        stored = self._settings.get((merchant.id, channel.name))
        if stored is None:
            raise ChannelNotAvailable(f"The {channel.name} channel is not configured for this merchant.", param="channel")
        public, secrets = stored
        return {**public, **secrets}

    def for_callback(self, name: str) -> VerifiesCallbacks:
        """The channel that verifies callbacks posted to `/v1/channels/{name}/webhook/...`."""
        self._channel(name)  # 404 for an unknown name
        return self.registry.capable(name, Capability.VERIFY_CALLBACK)

    # -- routing -----------------------------------------------------------------------------
    def candidates(self, merchant: Merchant, *, currency: str, country: str | None, requested: str | None) -> list[Channel]:
        """The channels to try, in order: an explicit choice alone, else the routing."""
        if requested is not None:
            return [self._usable(merchant, requested, param="channel")]
        routing = self._routing.get(merchant.id, RoutingIn())
        names = (routing.by_country.get(country or "") or routing.by_currency.get(currency) or routing.default
                 or self._configured_names(merchant))
        usable = [self.registry.get(n) for n in names if self._is_usable(merchant, n)]
        if not usable:
            raise ChannelNotAvailable("This merchant has no payment channel for this order.", param="channel")
        closed = [c for c in usable if not self.is_open(merchant.id, c.name)]
        return closed or usable  # every channel open: try them anyway rather than refuse the sale

    def _configured_names(self, merchant: Merchant) -> list[str]:
        names = ["sandbox"] if merchant.mode == "test" else []
        return names + [ch for (mid, ch) in self._settings if mid == merchant.id]

    def _is_usable(self, merchant: Merchant, name: str) -> bool:
        try:
            self._usable(merchant, name, param="channel")
        except ChannelNotAvailable:
            return False
        return True

    # -- circuit breaker ---------------------------------------------------------------------
    def _breaker(self, merchant_id: str, channel: str) -> _Breaker:
        return self._breakers.setdefault((merchant_id, channel), _Breaker())

    def is_open(self, merchant_id: str, channel: str) -> bool:
        breaker = self._breakers.get((merchant_id, channel))
        return breaker is not None and breaker.open_until_ms > self._clock.now_ms()

    def record_success(self, merchant_id: str, channel: str) -> None:
        breaker = self._breaker(merchant_id, channel)
        breaker.failures, breaker.open_until_ms = 0, 0

    def record_failure(self, merchant_id: str, channel: str, error_code: str) -> None:
        breaker, now_ms = self._breaker(merchant_id, channel), self._clock.now_ms()
        breaker.failures += 1
        breaker.last_error, breaker.last_error_at_ms = error_code, now_ms
        if breaker.failures >= self._config.breaker_failures_max:
            breaker.open_until_ms = now_ms + self._config.breaker_cooldown_s * 1000

    # -- views -------------------------------------------------------------------------------
    def _view(self, merchant: Merchant, name: str) -> ChannelView:
        stored = self._settings.get((merchant.id, name))
        breaker = self._breakers.get((merchant.id, name), _Breaker())
        open_now = breaker.open_until_ms > self._clock.now_ms()
        return ChannelView(
            channel=name, configured=stored is not None or self.registry.get(name).test_only,
            settings=dict(stored[0]) if stored else {},
            callback_url=f"{self._public_url}/v1/channels/{name}/webhook/{merchant.id}",
            state="open" if open_now else "closed", failures=breaker.failures, last_error=breaker.last_error,
            last_error_at=format_rfc3339(breaker.last_error_at_ms) if breaker.last_error_at_ms else None,
            open_until=format_rfc3339(breaker.open_until_ms) if open_now else None,
        )

    def list(self, merchant: Merchant) -> ChannelList:
        routing = self._routing.get(merchant.id, RoutingIn())
        ordered: list[str] = []
        for name in [*routing.default, *[n for v in routing.by_currency.values() for n in v],
                     *[n for v in routing.by_country.values() for n in v], *self._configured_names(merchant)]:
            if name not in ordered:
                ordered.append(name)
        return ChannelList(data=[self._view(merchant, name) for name in ordered], routing=routing)


def _split_settings(channel: Channel, settings: dict[str, str], *, live: bool,
                    api_base_hosts_allowed: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    public: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for key, value in settings.items():
        spec = channel.settings.get(key)
        if spec is None:
            raise InvalidRequest(f"The {channel.name} channel has no setting '{key}'.", code="setting_unknown", param=key)
        if not isinstance(value, str) or not value.strip() or len(value) > _SETTING_VALUE_MAX:
            raise InvalidRequest(f"'{key}' must be a non-empty string.", code="setting_invalid", param=key)
        if spec.chars_max is not None and len(value) > spec.chars_max:
            raise InvalidRequest(f"'{key}' takes at most {spec.chars_max} characters.", code="setting_invalid", param=key)
        if key in _URL_SETTINGS:
            if not value.startswith(("https://", "http://")):
                raise InvalidRequest(f"{key} must be an http(s) URL.", code="setting_invalid", param=key)
            # Every request to it carries the merchant's provider secret (SSRF rules, outbound.py).
            check_api_base(value, live=live, hosts_allowed=api_base_hosts_allowed, param=key)
        (secrets if spec.secret else public)[key] = value
    for key, spec in channel.settings.items():
        if (spec.required or (live and spec.required_live)) and key not in settings:
            raise InvalidRequest(f"The {channel.name} channel needs '{key}'.", code="setting_missing", param=key)
    return public, secrets
