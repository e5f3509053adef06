"""Configuration: msgspec Structs with every limit named `*_max`, loaded from config.toml with
`APSS_<SECTION>_<KEY>` environment overrides. A bad value raises ConfigInvalid with one line that
names the key; run.py turns that into exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from apss.errors import ConfigInvalid

__all__ = ["Config", "load_config"]

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(gt=0)]
Host = Annotated[str, Meta(pattern=r"^[A-Za-z0-9.\-:\[\]]{1,253}$", description="a host name or address: no scheme, port or path")]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    # Base of every absolute URL handed out; empty means http://<host>:<port>.
    public_url: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    request_body_bytes_max: Positive = 1_048_576
    # SIGTERM: stop accepting, finish in-flight requests and the queued writes, fail the rest with
    # 503 not_ready 'shutting down', close the database and exit 0, all within this long.
    shutdown_deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    # /metrics (Prometheus) asks for the admin token unless this is true (e.g. a scraper on a
    # private network that cannot send one).
    metrics_public: bool = False


class LogConfig(_Section):
    # "text": one readable line per record; "json": one JSON object per line (time, level, logger,
    # message, request_id), for a log collector. Both on stderr; the level is server.log_level.
    format: Literal["text", "json"] = "text"


class DatabaseConfig(_Section):
    path: str = "data/apss.sqlite"
    # Which database: empty (SQLite at `path`), "sqlite:///relative/file.sqlite" or
    # "sqlite:////absolute/file.sqlite" (SQLite at that file: `path` follows it), or
    # "postgresql://user:password@host:5432/dbname?sslmode=require" (PostgreSQL, for several
    # instances on one database; libpq's URL form, its query parameters passed on as given).
    url: str = ""
    # FULL: an acknowledged write survives power loss (on storage that honours fsync).
    # NORMAL (WAL) still survives a killed process; the server warns loudly when it is lowered.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    read_connections_max: Annotated[int, Meta(ge=1, le=32)] = 4
    write_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 256
    write_queue_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    busy_timeout_ms: Positive = 5_000
    # Long work on the writer (settling a period) runs in transactions of at most this many rows,
    # so that no write waits behind it for long; it resumes after a crash where it stopped.
    chunk_rows_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    # A cap on the file's size in pages (page size 4096): beyond it writes answer 503 not_ready as
    # on a full disk, reads go on. 0: no cap but the disk's.
    page_count_max: Annotated[int, Meta(ge=0)] = 0
    # PostgreSQL, several instances: the bound on how stale an instance's caches (keys, merchants,
    # channel settings, risk rules) may be when a change's notice was lost; every this many seconds
    # each instance reads the caches' generations and reloads a cache that moved. Unused on SQLite.
    cache_max_stale_s: Annotated[float, Meta(ge=0.05, le=3600)] = 5.0

    @property
    def postgresql(self) -> bool:
        """Whether `url` selects PostgreSQL (else SQLite at `path`)."""
        return self.url.startswith(_POSTGRESQL_SCHEMES)

    @property
    def target(self) -> str:
        """What migrations and the database open: the PostgreSQL URL, or the SQLite file's path."""
        return self.url if self.postgresql else self.path

    @property
    def display(self) -> str:
        """The database as messages and logs may name it: the file, or the PostgreSQL host, port
        and database name (never the user, password or parameters)."""
        if not self.postgresql:
            return self.path
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or "(socket)"
        return f"postgresql://{host}{f':{parts.port}' if parts.port else ''}/{parts.path.strip('/')}"


class AdminConfig(_Section):
    # Empty: a token is generated at first start, stored hashed, printed once. A configured one
    # needs 16 characters; under 32 the server warns at start.
    token: str = ""
    # Guessing the token: after this many failed admin authentications from one address within
    # auth_window_s, every admin authentication from it answers 429 for auth_lockout_s.
    auth_failures_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 5
    auth_window_s: Annotated[int, Meta(ge=1, le=86_400)] = 60
    auth_lockout_s: Annotated[int, Meta(ge=1, le=86_400)] = 60


class SecurityConfig(_Section):
    # Base64 of a 32-byte AES key sealing secrets and personal data. Empty: generated at first
    # start into `<database path>.keys` (mode 0600), beside the database it protects.
    data_key: str = ""
    data_key_id: str = "k1"


class PrivacyConfig(_Section):
    # Keys sealing personal data (emails, IPs, device ids...): {"p1": "<base64 of 32 bytes>"}, and
    # which one seals new values. Empty: generated at first start into `<database path>.privacy`
    # (mode 0600; `POST /v1/admin/privacy/keys/rotate` adds a new primary there). Env:
    # APSS_PRIVACY_KEYS='{"p1": "..."}', APSS_PRIVACY_PRIMARY_KEY_ID=p1.
    keys: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")], str] = {}
    primary_key_id: str = ""
    # Base64 of >= 32 bytes keying the pseudonyms of erased players (with keys; else generated).
    pseudonym_key: str = ""
    # IP addresses and device ids older than this are erased by the retention job.
    retention_days: Annotated[int, Meta(ge=1, le=3650)] = 90
    retention_interval_s: Annotated[float, Meta(gt=0)] = 3600.0
    # The rotation job re-seals at most this many values per transaction, every interval.
    rotation_batch_max: Annotated[int, Meta(ge=1, le=100_000)] = 500
    rotation_interval_s: Annotated[float, Meta(gt=0)] = 10.0


class OrdersConfig(_Section):
    reservation_ttl_s: Annotated[int, Meta(ge=10, le=86_400 * 7)] = 900
    items_max: Annotated[int, Meta(ge=1, le=1000)] = 50
    quantity_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    metadata_keys_max: Annotated[int, Meta(ge=0, le=100)] = 20
    idempotency_ttl_s: Annotated[int, Meta(ge=86_400)] = 86_400 * 2
    # An FX rate older than this does not price an order (the currency is then not supported).
    fx_rate_age_max_s: Annotated[int, Meta(ge=60)] = 86_400 * 7
    # A request whose Idempotency-Key is still `running` after this long (something failed
    # between its two transactions without a crash) is finished by the completer job.
    idempotency_running_max_s: Annotated[int, Meta(ge=5, le=86_400)] = 60


class SandboxConfig(_Section):
    # "http": callbacks are POSTed to server.public_url, like a real provider does.
    # "asgi": delivered through the app in process (tests, or when public_url is unreachable).
    callback_transport: Literal["http", "asgi"] = "http"
    callback_attempts_max: Annotated[int, Meta(ge=1, le=100)] = 12
    callback_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 10.0
    webhook_tolerance_s: Annotated[int, Meta(ge=1, le=3600)] = 300


class ChannelsConfig(_Section):
    # Circuit breaker per merchant and channel: this many failures in a row open it...
    breaker_failures_max: Annotated[int, Meta(ge=1, le=100)] = 3
    # ...and payments skip the channel for this long (then one attempt may close it again).
    breaker_cooldown_s: Annotated[int, Meta(ge=1, le=86_400)] = 60
    # The janitor asks the provider about a payment whose outcome is not final at these ages.
    janitor_schedule_s: Annotated[tuple[Annotated[int, Meta(ge=1)], ...], Meta(min_length=1, max_length=20)] = (300, 3600, 86_400)
    janitor_interval_s: Annotated[float, Meta(gt=0)] = 30.0
    janitor_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # A provider that has not answered in this long is a timeout: the payment stays `unknown`.
    provider_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0
    # Hosts a live merchant's `api_base` override may name (it receives the provider secret), e.g.
    # a provider stand-in of a self-hosted staging setup. Empty: only test merchants may override.
    api_base_hosts_allowed: Annotated[tuple[Host, ...], Meta(max_length=100)] = ()


class RefundsConfig(_Section):
    # A refund whose provider call never got through (connection refused) or whose outcome is
    # unknown (timeout after sending, 5xx) is sent again under the same idempotency key after
    # these waits, the last one repeating (keep their sum within the providers' idempotency
    # windows: Stripe keeps a key 24 h)...
    retry_backoff_s: Annotated[tuple[Annotated[int, Meta(ge=1, le=86_400)], ...], Meta(min_length=1, max_length=20)] = (
        60, 300, 1800, 7200, 21_600)
    # ...up to this many sends in all. Then a refund that never reached the provider is `failed`
    # (a `refund_failed` alert); one that may have reached it stays `pending` for the janitor.
    send_attempts_max: Annotated[int, Meta(ge=1, le=50)] = 6


class FeeScheduleConfig(_Section):
    percent_bps: Annotated[int, Meta(ge=0, le=10_000)] = 0
    fixed: dict[str, Annotated[int, Meta(ge=0)]] = {}  # per currency, minor units


def _default_fees() -> dict[str, FeeScheduleConfig]:
    # The sandbox charges like a typical card processor so that fees show in its ledger.
    card = FeeScheduleConfig(percent_bps=290, fixed={"USD": 30, "EUR": 25, "GBP": 20})
    return {"sandbox": card, "stripe": card}


class FinanceConfig(_Section):
    # Platform commission of each merchant unless an admin set another (basis points).
    commission_bps: Annotated[int, Meta(ge=0, le=10_000)] = 3000
    # When a refund must take back virtual currency the player already spent: "refuse" the
    # refund, or claw back into "debt" (a negative balance that later purchases pay off first).
    clawback_policy: Literal["refuse", "debt"] = "refuse"
    # A payment that succeeds for an order that cannot take it any more (expired and its stock
    # gone): refunded through its channel at once (`refund`), or only an alert (`alert`).
    late_payment: Literal["refund", "alert"] = "refund"
    # Provider fee schedules per channel: percent (basis points) plus a fixed part per currency.
    fees: dict[str, FeeScheduleConfig] = msgspec.field(default_factory=_default_fees)
    # App store commission, kept by the store from each in-app sale and booked as the channel's
    # fee: the standard rate, and the reduced one (Apple's Small Business Program, Google's first
    # USD 1M a year, subscriptions) for merchants whose apple or google channel has `fee_tier` =
    # "reduced".
    store_fee_standard_bps: Annotated[int, Meta(ge=0, le=10_000)] = 3000
    store_fee_reduced_bps: Annotated[int, Meta(ge=0, le=10_000)] = 1500


class WebhooksConfig(_Section):
    # Merchant webhooks: how long a failing delivery is retried before its endpoint is disabled.
    retry_window_s: Annotated[int, Meta(ge=60, le=86_400 * 30)] = 3 * 86_400
    attempt_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 10.0
    # SSRF rules: live merchants' webhook URLs go to public addresses only; true lets a self-hosted
    # setup send them to loopback and private networks too (still https; never link-local).
    allow_private_targets: bool = False
    # Goods delivered by the game: a delivery not acknowledged this long after payment is a
    # paid-but-not-delivered alert (it is re-sent meanwhile).
    unacknowledged_alert_s: Annotated[int, Meta(ge=60)] = 3600


class ReconciliationConfig(_Section):
    # Statement-free checks: an order paid (or delivering) this long without delivery, and a refund
    # pending this long, raise alerts.
    paid_not_delivered_s: Annotated[int, Meta(ge=10)] = 300
    refund_pending_s: Annotated[int, Meta(ge=60)] = 3600


class SchedulerConfig(_Section):
    tick_ms: Annotated[int, Meta(ge=10, le=60_000)] = 250
    expiry_interval_s: Annotated[float, Meta(gt=0)] = 1.0
    expiry_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 500
    idempotency_prune_interval_s: Annotated[float, Meta(gt=0)] = 3600.0
    # Several instances on one PostgreSQL database: each job runs on the instance holding its lease,
    # renewed every third of lease_s; when that instance dies its jobs move to another within
    # lease_s (apss/services/ops/job_leases.py). instance_id names this instance in the leases;
    # empty: "sqlite" on SQLite (one process serves the file), "<hostname>:<server.port>" on
    # PostgreSQL (the same after a restart, so a restarted instance takes its leases back at once).
    # Never give two running instances one id.
    lease_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    instance_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:@-]{0,128}$")] = ""


class SubscriptionsConfig(_Section):
    # A failed renewal is retried this many days after the first failure (each a retry); hard
    # declines are never retried. When the last retry fails the subscription is canceled and its
    # membership ends grace_s later.
    retry_days: Annotated[tuple[Annotated[int, Meta(ge=1, le=60)], ...], Meta(max_length=10)] = (1, 3, 5)
    grace_s: Annotated[int, Meta(ge=0, le=30 * 86_400)] = 0
    renewal_interval_s: Annotated[float, Meta(gt=0)] = 60.0
    renewal_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 200


class ApiConfig(_Section):
    # Per merchant (all its secret keys), token bucket; 0 disables the limit. The default lets a
    # flash sale through one game-server key run at full speed (10,000 orders at once; one process
    # on 2 cores serves a few thousand requests/s): it stops a runaway client, not a busy store.
    # The admin can give a merchant its own limit (PATCH /v1/merchants/{id} "rate_limit").
    requests_per_s_max: Annotated[int, Meta(ge=0)] = 5000
    burst_max: Annotated[int, Meta(ge=1)] = 10_000
    page_size_max: Annotated[int, Meta(ge=1, le=100)] = 100


class ClockConfig(_Section):
    # "test": the server's clock stands still until `POST /v1/admin/clock/advance` moves it (its
    # time is stored, so a restart continues from it); for development installs only: live
    # merchants are refused. "system": the wall clock.
    mode: Literal["system", "test"] = "system"
    # One advance may move the clock at most this far (400 days).
    advance_max_s: Annotated[int, Meta(ge=1)] = 400 * 86_400
    # During an advance a job with no due time of its own (settlement, reports, the janitor...)
    # runs at most once per this much simulated time, and always at the target.
    step_s: Annotated[int, Meta(ge=1, le=86_400)] = 3600


class AmlConfig(_Section):
    """AML monitoring and KYC defaults (per merchant overrides: PUT /v1/risk/aml/settings). Amounts
    are minor units of the merchant's settlement currency (1,000.00 USD = 100000); 0 turns a check off."""

    daily_threshold: Annotated[int, Meta(ge=0)] = 100_000  # paid by one player in the last 24 hours
    rolling_30d_threshold: Annotated[int, Meta(ge=0)] = 1_000_000  # ... in the last 30 days
    # Structuring: `structuring_count` payments or more within `structuring_window_h` hours, each
    # within `structuring_margin_bps` below `structuring_threshold` (10% = 1000).
    structuring_threshold: Annotated[int, Meta(ge=0)] = 100_000
    structuring_count: Annotated[int, Meta(ge=2, le=1000)] = 3
    structuring_window_h: Annotated[int, Meta(ge=1, le=168)] = 24
    structuring_margin_bps: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    # A player must be KYC verified before delivery above these (one payment; the last 30 days).
    kyc_payment_threshold: Annotated[int, Meta(ge=0)] = 0
    kyc_30d_threshold: Annotated[int, Meta(ge=0)] = 0


_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class BackupConfig(_Section):
    # Scheduled backups: every `every` ("30m", "6h", "1d") a checked copy of the database in
    # `dir` (empty: none), keeping the newest `keep`. The data key is never copied there.
    dir: str = ""
    every: Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,5}[smhd]$")] = "1d"
    keep: Annotated[int, Meta(ge=1, le=10_000)] = 7

    @property
    def every_ms(self) -> int:
        return int(self.every[:-1]) * _DURATION_UNITS_S[self.every[-1]] * 1000


class SeedConfig(_Section):
    # Seed a demo test merchant with products on a fresh database.
    demo: bool = True


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    database: DatabaseConfig = DatabaseConfig()
    admin: AdminConfig = AdminConfig()
    security: SecurityConfig = SecurityConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    orders: OrdersConfig = OrdersConfig()
    sandbox: SandboxConfig = SandboxConfig()
    channels: ChannelsConfig = ChannelsConfig()
    finance: FinanceConfig = FinanceConfig()
    refunds: RefundsConfig = RefundsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    reconciliation: ReconciliationConfig = ReconciliationConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    subscriptions: SubscriptionsConfig = SubscriptionsConfig()
    api: ApiConfig = ApiConfig()
    clock: ClockConfig = ClockConfig()
    backup: BackupConfig = BackupConfig()
    seed: SeedConfig = SeedConfig()
    aml: AmlConfig = AmlConfig()

    @property
    def public_url(self) -> str:
        base = self.server.public_url or f"http://{self.server.host}:{self.server.port}"
        return base.rstrip("/")


_SECTIONS = {name for name in Config.__struct_fields__}
_POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"
_PATH_RE = re.compile(r"\$\.?(.*)")


def _list_or_text(name: str, value: str) -> object:
    if not value.lstrip().startswith(("[", "{")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ConfigInvalid(f"environment variable {name}: a list or table must be JSON, e.g. [300, 3600]") from None


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("APSS_") or name == "APSS_CONFIG":
            continue
        rest = name[len("APSS_"):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigInvalid(f"environment variable {name}: no such config section or key")
        # A list is written as JSON: APSS_CHANNELS_JANITOR_SCHEDULE_S='[300, 3600]'.
        overrides.setdefault(section, {})[key] = _list_or_text(name, value)
    return overrides


def load_config(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if it exists), apply env overrides, validate. Raises ConfigInvalid."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("APSS_CONFIG") or "config.toml")
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigInvalid(f"{path}: not valid TOML: {exc}") from None
    for section, values in _env_overrides(environ).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigInvalid(f"config key {section}: must be a table")
        target.update(values)
    try:
        config = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        key = _PATH_RE.sub(r"\1", where.rstrip("`")) if where else ""
        if "unknown field" in message:
            field = message.split("`")[1]
            key = f"{key}.{field}" if key else field
        raise ConfigInvalid(f"config key {key or '<root>'}: {message}") from None
    config = _resolve_database_url(config)
    _check_relations(config)
    return config


def _resolve_database_url(config: Config) -> Config:
    """Check database.url; a sqlite URL becomes database.path (which the rest of APSS reads).
    Errors never repeat the URL: it may hold a password."""
    database = config.database
    url = database.url
    if not url:
        return config
    if url.startswith(_SQLITE_SCHEME):
        path = urllib.parse.unquote(url[len(_SQLITE_SCHEME):].partition("?")[0])
        if not path.strip("/"):
            raise ConfigInvalid("config key database.url: sqlite:/// needs a file, e.g. sqlite:///data/apss.sqlite")
        if database.path not in (DatabaseConfig().path, path):
            raise ConfigInvalid("config key database.url: names another file than database.path: give one of them")
        return msgspec.structs.replace(config, database=msgspec.structs.replace(database, path=path))
    if not url.startswith(_POSTGRESQL_SCHEMES):
        raise ConfigInvalid("config key database.url: must start with sqlite:///, postgresql:// or postgres://")
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise ConfigInvalid("config key database.url: the port must be a number from 1 to 65535") from None
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if not parts.hostname and not query.get("host"):
        raise ConfigInvalid("config key database.url: names no host (postgresql://user:password@host:5432/dbname)")
    if not parts.path.strip("/") and not query.get("dbname"):
        raise ConfigInvalid("config key database.url: names no database (postgresql://user:password@host:5432/dbname)")
    if parts.fragment:
        raise ConfigInvalid("config key database.url: a fragment (#...) has no meaning in a database URL")
    return config


def _check_relations(config: Config) -> None:
    if config.database.write_batch_max > config.database.write_queue_max:
        raise ConfigInvalid("config key database.write_batch_max: must not exceed write_queue_max")
    if config.server.public_url and not config.server.public_url.startswith(("http://", "https://")):
        raise ConfigInvalid("config key server.public_url: must start with http:// or https://")
    if config.admin.token and len(config.admin.token) < 16:
        raise ConfigInvalid("config key admin.token: must be at least 16 characters")
    if config.backup.dir and Path(config.backup.dir).resolve() == Path(config.database.path).resolve().parent:
        raise ConfigInvalid("config key backup.dir: must not be the database's own folder (its data key lives there)")
    if config.orders.idempotency_running_max_s <= config.channels.provider_timeout_s:
        raise ConfigInvalid("config key orders.idempotency_running_max_s: must exceed channels.provider_timeout_s")
    privacy = config.privacy
    if privacy.keys and privacy.primary_key_id not in privacy.keys:
        raise ConfigInvalid("config key privacy.primary_key_id: must name one of privacy.keys")
    if bool(privacy.keys) != bool(privacy.pseudonym_key):
        raise ConfigInvalid("config key privacy.pseudonym_key: give it together with privacy.keys")
    for kid, value in privacy.keys.items():
        if len(_base64_or_empty(value)) != 32:
            raise ConfigInvalid(f"config key privacy.keys.{kid}: must be base64 of 32 bytes")
    if privacy.pseudonym_key and len(_base64_or_empty(privacy.pseudonym_key)) < 32:
        raise ConfigInvalid("config key privacy.pseudonym_key: must be base64 of at least 32 bytes")
    days = config.subscriptions.retry_days
    if any(a >= b for a, b in zip(days, days[1:])):
        raise ConfigInvalid("config key subscriptions.retry_days: days after the first failure, strictly increasing")
    for index, host in enumerate(config.channels.api_base_hosts_allowed):
        if ":" in host and not _is_ipv6(host.strip("[]")):  # a port would never match: hosts compare alone
            raise ConfigInvalid(f"config key channels.api_base_hosts_allowed[{index}]: a host without a port")


def _base64_or_empty(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
