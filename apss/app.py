"""The composition root: builds the Litestar app and wires store, services, channels, jobs."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

from apss import __version__
from apss.api.account import account, update_account
from apss.api.alerts import AlertController
from apss.api.aml import AmlController, MinorLimitController, PlayerKycController
from apss.api.audit import AuditMiddleware
from apss.api.browser import CheckoutSessionController
from apss.api.channels import ChannelController
from apss.api.clock import ClockController
from apss.api.common import (
    current_merchant,
    request_guard,
)
from apss.api.disputes import (
    DisputeController,
    DisputePolicyController,
    SandboxDisputeController,
)
from apss.api.errors import exception_handlers, render_error
from apss.api.fx import FxController
from apss.api.health import healthz
from apss.api.iap import IapController
from apss.api.merchants import MerchantController
from apss.api.money import AdminMoneyController, MoneyController
from apss.api.observability import RequestContext, metrics
from apss.api.openapi import RefinedJsonPlugin, RefinedSwaggerPlugin
from apss.api.orders import OrderController, OrderFastPath
from apss.api.payments import PaymentController
from apss.api.players import PlayerController
from apss.api.privacy import (
    AuditController,
    PlayerPrivacyController,
    PrivacyKeysController,
)
from apss.api.products import ProductController
from apss.api.promotions import PromotionController
from apss.api.provider_callbacks import pix_callback, provider_callback
from apss.api.quotes import QuoteController
from apss.api.reconciliation import ReconciliationController
from apss.api.refunds import RefundController
from apss.api.reports import ReportController
from apss.api.risk import OrderRiskController, RiskController
from apss.api.sandbox import SandboxController
from apss.api.settlements import AdminSettlementController, SettlementController
from apss.api.subscriptions import SubscriptionController, SubscriptionReportController
from apss.api.webhook_endpoints import (
    DeliveryController,
    WebhookDeliveryController,
    WebhookEndpointController,
)
from apss.channels.alipay import AlipayChannel
from apss.channels.apple import AppleChannel
from apss.channels.base import ChannelRegistry
from apss.channels.google import GoogleChannel
from apss.channels.paypal import PayPalChannel
from apss.channels.pix import PixChannel
from apss.channels.sandbox import SandboxChannel
from apss.channels.stripe import StripeChannel
from apss.channels.wechatpay import WechatPayChannel
from apss.clock import Clock, SystemClock, TestClock
from apss.config import Config
from apss.crypto import Keyring, PersonalData, keyring_from_file
from apss.errors import ConfigInvalid, LiveMerchantsInTestMode
from apss.jobs.catalogue import schedule_jobs
from apss.jobs.scheduler import Scheduler
from apss.services.backups.backups import Backups, key_file, personal_key_file
from apss.services.catalog.products import Catalog
from apss.services.container import Services
from apss.services.disputes.evidence import DisputeEvidenceService
from apss.services.disputes.records import DisputeRecords
from apss.services.iap.purchases import StorePurchases
from apss.services.idempotency import Idempotency
from apss.services.merchants.admin_sessions import AdminSessions
from apss.services.merchants.demo import seed_demo
from apss.services.merchants.keys import Merchants
from apss.services.merchants.rate_limit import AdminThrottle, RateLimiter
from apss.services.money.finance import FinanceService
from apss.services.money.fx import FxRates
from apss.services.money.ledger import Ledger
from apss.services.money.reconciliation import Reconciliation
from apss.services.money.reports import Reports
from apss.services.money.settlement import Settlements
from apss.services.notify.alerts import Alerts
from apss.services.notify.merchant_webhooks import WebhookEvents, Webhooks
from apss.services.notify.outbox import Outbox
from apss.services.ops.cache_sync import CacheSync
from apss.services.ops.job_leases import JobLeases
from apss.services.ops.metrics import Metrics
from apss.services.orders import lifecycle
from apss.services.orders.browser import BrowserCheckout
from apss.services.orders.checkout import Checkout
from apss.services.orders.queries import OrderQueries
from apss.services.orders.recovery import Completer, resume_running
from apss.services.outbound import TargetClients
from apss.services.payments.callbacks import PaymentEvents
from apss.services.payments.channels import ChannelAccess
from apss.services.payments.gateway import PaymentGateway
from apss.services.payments.janitor import PaymentJanitor
from apss.services.players.game_deliveries import Deliveries
from apss.services.players.privacy import (
    AuditLog,
    ErasureJournal,
    Privacy,
    write_private_json,
)
from apss.services.players.wallets import Players
from apss.services.promotions.promotions import Promotions
from apss.services.promotions.quotes import Quotes
from apss.services.refunds.refunds import Refunds
from apss.services.risk.aml import Aml
from apss.services.risk.control import RiskControl
from apss.services.risk.engine import RiskEngine
from apss.services.risk.kyc import Kyc
from apss.services.risk.precheck import Prechecks
from apss.services.sandbox.provider import SandboxProvider
from apss.services.subscriptions.service import Subscriptions, subscription_view_tx
from apss.services.test_clock import ClockControl
from apss.store.backup import ServingLock
from apss.store.db import Database, EventSink
from apss.store.migrate import apply_migrations, require_psycopg
from apss.store.test_clock import read_start_state
from apss.web import WEB_HANDLERS

__all__ = ["create_app", "load_keyring", "load_personal_data"]

log = logging.getLogger("apss")
# Of server.shutdown_deadline_s, for the writer to finish its queue (requests had 0.5, cli.py).
_WRITER_SHUTDOWN_SHARE = 0.4
_ADMIN_TOKEN_ADVISED_LEN = 32  # config.py refuses under 16; between the two the server warns at start
_SWAGGER_UI = Path(__file__).parent / "web" / "static" / "swagger-ui"


def load_keyring(config: Config) -> Keyring:
    """The data key from config, or from `<database>.keys` (created 0600 at first start)."""
    kid = config.security.data_key_id
    if config.security.data_key:
        return Keyring({kid: base64.b64decode(config.security.data_key)}, primary=kid)
    path = key_file(config)
    assert path is not None, "the key is not in config"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"primary": kid, "keys": {kid: base64.b64encode(os.urandom(32)).decode()}}, handle)
    return keyring_from_file(path)


def load_personal_data(config: Config) -> tuple[PersonalData, Path | None]:
    """The personal data keys and pseudonym key from config (`privacy.keys`), or from
    `<database>.privacy` (generated 0600 at first start; returned so rotation can add keys)."""
    privacy = config.privacy
    if privacy.keys:
        keys = {kid: base64.b64decode(value) for kid, value in privacy.keys.items()}
        return PersonalData(keys, primary=privacy.primary_key_id,
                            pseudonym_key=base64.b64decode(privacy.pseudonym_key)), None
    path = personal_key_file(config)
    assert path is not None, "the keys are not in config"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_json(path, {"primary": "p1", "keys": {"p1": base64.b64encode(os.urandom(32)).decode()},
                                  "pseudonym_key": base64.b64encode(os.urandom(32)).decode()})
    stored = json.loads(path.read_text())
    keys = {kid: base64.b64decode(value) for kid, value in stored["keys"].items()}
    return PersonalData(keys, primary=stored["primary"], pseudonym_key=base64.b64decode(stored["pseudonym_key"])), path


def _test_clock(config: Config, wall_clock: Clock) -> TestClock | None:
    """In test mode the app's clock: a TestClock at its stored time (or the wall clock's now at the
    first start). Refuses a database that holds a live merchant."""
    if config.clock.mode == "system":
        return None
    state = read_start_state(config.database.target)
    if state.live_merchants:
        raise LiveMerchantsInTestMode(
            f"database {config.database.display} holds {state.live_merchants} live merchant(s): clock.mode = \"test\" "
            "is for development databases only (use another database.path, or clock.mode = \"system\")")
    return TestClock(state.stored_now_ms if state.stored_now_ms is not None else wall_clock.now_ms())


def _database(config: Config, *, event_sink: EventSink) -> Database:
    """SQLite at database.path (one writer thread, group commit), or PostgreSQL at database.url
    (store/pg_db.py, the same interface)."""
    database = config.database
    if database.postgresql:  # the `postgres` extra: only a PostgreSQL setup needs psycopg
        require_psycopg()
        from apss.store.pg_db import PgDatabase

        return PgDatabase(database.url, read_connections_max=database.read_connections_max, event_sink=event_sink)
    return Database(database.path, synchronous=database.synchronous, write_batch_max=database.write_batch_max,
                    write_queue_max=database.write_queue_max, read_connections_max=database.read_connections_max,
                    busy_timeout_ms=database.busy_timeout_ms, page_count_max=database.page_count_max,
                    event_sink=event_sink)


def instance_id(config: Config) -> str:
    """This instance's name in the job leases: `scheduler.instance_id`, else "sqlite" on SQLite (one
    process serves the file) and "<hostname>:<port>" on PostgreSQL (the same after a restart; the
    process id on an ephemeral port)."""
    if config.scheduler.instance_id:
        return config.scheduler.instance_id
    if not config.database.postgresql:
        return "sqlite"
    return f"{socket.gethostname()}:{config.server.port or f'pid{os.getpid()}'}"


def _cache_sync(db: Database, config: Config, *, merchants: Merchants, channels: ChannelAccess,
                risk_engine: RiskEngine, prechecks: Prechecks, privacy: Privacy) -> CacheSync:
    """The caches other instances' changes invalidate on PostgreSQL (services/ops/cache_sync.py)."""
    sync = CacheSync(db=db, max_stale_s=config.database.cache_max_stale_s)
    sync.register("merchants", merchants.reload)
    sync.register("channels", channels.reload)
    sync.register("risk_rules", risk_engine.reload)
    sync.register("prechecks", prechecks.reload)
    sync.register("privacy", privacy.reload)
    return sync


def _build_services(config: Config, wall_clock: Clock) -> Services:
    test_clock = _test_clock(config, wall_clock)
    clock: Clock = test_clock if test_clock is not None else wall_clock
    # The writer's event sink writes merchant webhook events in the transaction of each change.
    events = WebhookEvents(clock=clock, wake=lambda: scheduler.poke("webhooks"))
    outbox = Outbox(events=events, public_url=config.public_url)
    db = _database(config, event_sink=outbox.sink)
    # Each job runs on the one instance holding its lease (services/ops/job_leases.py; on SQLite: this one).
    instance = instance_id(config)  # also names this instance's claims of webhook deliveries and janitor rows
    leases = JobLeases(db=db, owner=instance, lease_s=config.scheduler.lease_s)
    scheduler = Scheduler(clock=clock, tick_ms=config.scheduler.tick_ms, leases=leases)
    keyring = load_keyring(config)
    personal, personal_keys_path = load_personal_data(config)
    throttle = AdminThrottle(failures_max=config.admin.auth_failures_max, window_ms=config.admin.auth_window_s * 1000,
                             lockout_ms=config.admin.auth_lockout_s * 1000)
    merchants = Merchants(db=db, clock=clock, keyring=keyring, live_mode_allowed=test_clock is None,
                          admin_throttle=throttle,
                          rate_limiter=RateLimiter(rate_per_s=config.api.requests_per_s_max, burst=config.api.burst_max))
    idempotency = Idempotency(render_error=render_error, clock_now_ms=clock.now_ms)
    sandbox = SandboxProvider(db=db, clock=clock, wall_clock=wall_clock, config=config, merchants=merchants,
                              idempotency=idempotency, wake=lambda: scheduler.poke("sandbox_callbacks"))
    # One HTTP client for every provider call (closed at shutdown); base URLs are per merchant.
    provider_http = httpx.AsyncClient(timeout=config.channels.provider_timeout_s)
    registry = ChannelRegistry()
    registry.register(SandboxChannel(public_url=config.public_url, book=sandbox,
                                     tolerance_s=config.sandbox.webhook_tolerance_s))
    # The expiries Stripe, Alipay, WeChat Pay and PIX are sent are times on our clock.
    registry.register(StripeChannel(public_url=config.public_url, http=provider_http, clock=clock))
    registry.register(PayPalChannel(public_url=config.public_url, http=provider_http))
    registry.register(AlipayChannel(public_url=config.public_url, http=provider_http, clock=clock))
    registry.register(WechatPayChannel(public_url=config.public_url, http=provider_http, clock=clock))
    registry.register(AppleChannel(clock=wall_clock))  # signatures are checked at real time (as PaymentEvents')
    registry.register(GoogleChannel(http=provider_http, clock=wall_clock))  # its JWTs are on Google's (real) time
    registry.register(PixChannel(public_url=config.public_url, http=provider_http, clock=clock))
    channels = ChannelAccess(registry=registry, db=db, clock=clock, keyring=keyring, public_url=config.public_url,
                             config=config.channels)
    gateway = PaymentGateway(channels=channels, clock=clock)
    ledger = Ledger(db=db, clock=clock, config=config.finance)
    risk_engine = RiskEngine(db=db, clock=clock, keyring=keyring, personal=personal,
                             fx_rate_age_max_s=config.orders.fx_rate_age_max_s)
    refunds = Refunds(db=db, clock=clock, idempotency=idempotency, gateway=gateway, ledger=ledger, merchants=merchants,
                      batch_max=config.channels.janitor_batch_max, wake_sender=lambda: scheduler.poke("refund_sender"),
                      risk=risk_engine, config=config.refunds)
    # Webhooks get their own clients, whose every connection obeys the SSRF rules after DNS.
    webhooks = Webhooks(db=db, clock=clock, keyring=keyring, idempotency=idempotency, http=TargetClients(),
                        wake=lambda: scheduler.poke("webhooks"), events=events,
                        allow_private_targets=config.webhooks.allow_private_targets,
                        attempt_timeout_s=config.webhooks.attempt_timeout_s, retry_window_s=config.webhooks.retry_window_s,
                        claimer=instance)
    deliveries = Deliveries(db=db, clock=clock, webhooks=webhooks, idempotency=idempotency,
                            alert_after_s=config.webhooks.unacknowledged_alert_s,
                            on_ack=lambda tx, order_id: lifecycle.deliver_acknowledged(tx, order_id, now_ms=clock.now_ms()))
    players = Players(db=db, clock=clock, idempotency=idempotency, ledger=ledger)
    # The pre-payment check reaches merchants' servers under the SSRF rules of webhooks.
    prechecks = Prechecks(db=db, clock=clock, keyring=keyring, http=TargetClients(),
                          allow_private_targets=config.webhooks.allow_private_targets)
    promotions = Promotions(db=db, clock=clock, idempotency=idempotency)
    risk = RiskControl(db=db, clock=clock, engine=risk_engine, refunds=refunds, idempotency=idempotency,
                       game_delivery=deliveries.create_delivery, public_url=config.public_url)
    kyc = Kyc(db=db, clock=clock, keyring=keyring, idempotency=idempotency, risk=risk,
              fx_rate_age_max_s=config.orders.fx_rate_age_max_s)
    aml = Aml(db=db, clock=clock, config=config.aml, engine=risk_engine, idempotency=idempotency,
              fx_rate_age_max_s=config.orders.fx_rate_age_max_s)
    checkout = Checkout(db=db, clock=clock, config=config, idempotency=idempotency, channels=channels, gateway=gateway,
                        merchants=merchants, promotions=promotions, players=players,
                        game_delivery=deliveries.create_delivery, risk=risk_engine, prechecks=prechecks, kyc=kyc)
    disputes = DisputeRecords(db=db, clock=clock, ledger=ledger, refunds=refunds, idempotency=idempotency)
    outbox.register("dispute", disputes.view_tx)
    order_queries = OrderQueries(db=db, public_url=config.public_url)
    dispute_evidence = DisputeEvidenceService(db=db, clock=clock, records=disputes, orders=order_queries, gateway=gateway,
                                              risk=risk_engine)
    payment_events = PaymentEvents(db=db, clock=clock, wall_clock=wall_clock, channels=channels, gateway=gateway,
                                   merchants=merchants, ledger=ledger, refunds=refunds,
                                   game_delivery=deliveries.create_delivery, risk=risk_engine, disputes=disputes,
                                   aml=aml)
    store_purchases = StorePurchases(db=db, clock=clock, wall_clock=wall_clock, channels=channels, merchants=merchants,
                                     ledger=ledger, refunds=refunds, game_delivery=deliveries.create_delivery,
                                     public_url=config.public_url)
    janitor = PaymentJanitor(db=db, clock=clock, config=config.channels, gateway=gateway, merchants=merchants,
                             payment_events=payment_events, refunds=refunds, claimer=instance)
    settlements = Settlements(db=db, clock=clock, ledger=ledger, idempotency=idempotency, outbox=outbox,
                              chunk_rows_max=config.database.chunk_rows_max)
    completer = Completer(db=db, clock=clock, merchants=merchants, checkout=checkout, refunds=refunds,
                          settlements=settlements, running_max_s=config.orders.idempotency_running_max_s)
    reconciliation = Reconciliation(db=db, clock=clock, channels=channels,
                                    paid_not_delivered_age_s=config.reconciliation.paid_not_delivered_s,
                                    refund_pending_age_s=config.reconciliation.refund_pending_s)
    reports = Reports(db=db, clock=clock, ledger=ledger)
    subscriptions = Subscriptions(db=db, clock=clock, config=config.subscriptions, public_url=config.public_url,
                                  checkout=checkout, gateway=gateway, channels=channels, payment_events=payment_events,
                                  idempotency=idempotency, merchants=merchants)
    outbox.register("subscription", lambda tx, sid: subscription_view_tx(tx, sid, public_url=config.public_url))

    order_queries = OrderQueries(db=db, public_url=config.public_url)
    privacy = Privacy(db=db, clock=clock, personal=personal, config=config.privacy, idempotency=idempotency,
                      journal=ErasureJournal(Path(f"{config.database.path}.erasures")),
                      keys_path=personal_keys_path, chunk_rows_max=config.database.chunk_rows_max,
                      wake_rotation=lambda: scheduler.poke("privacy_rotation"))

    services = Services(
        config=config, clock=clock, db=db, merchants=merchants, admin_sessions=AdminSessions(db=db, clock=clock),
        idempotency=idempotency, channels=channels,
        catalog=Catalog(db=db, clock=clock, idempotency=idempotency), checkout=checkout,
        browser_checkout=BrowserCheckout(db=db, checkout=checkout, merchants=merchants, orders=order_queries),
        orders=order_queries, fx=FxRates(db=db, clock=clock), disputes=disputes, dispute_evidence=dispute_evidence,
        payment_events=payment_events, store_purchases=store_purchases, janitor=janitor, ledger=ledger, refunds=refunds,
        gateway=gateway, completer=completer,
        finance=FinanceService(db=db, clock=clock, ledger=ledger), webhooks=webhooks, deliveries=deliveries,
        reconciliation=reconciliation, reports=reports, settlements=settlements, subscriptions=subscriptions,
        provider_http=provider_http, alerts=Alerts(db=db, clock=clock),
        players=players, sandbox=sandbox, scheduler=scheduler,
        privacy=privacy,
        audit=AuditLog(db=db, clock=clock, personal=personal),
        clock_control=ClockControl(db=db, clock=clock, test_clock=test_clock, config=config.clock, jobs=scheduler),
        promotions=promotions, quotes=Quotes(db=db, checkout=checkout),
        risk_engine=risk_engine, prechecks=prechecks,
        risk=risk, aml=aml, kyc=kyc,
        rate_limiter=merchants.rate_limiter,
        metrics=Metrics(db=db, clock=clock, job_stats=scheduler.stats),
        cache_sync=_cache_sync(db, config, merchants=merchants, channels=channels, risk_engine=risk_engine,
                               prechecks=prechecks, privacy=privacy),
        backups=Backups(config=config, clock=clock),
    )
    schedule_jobs(scheduler, services)
    return services


def create_app(config: Config, *, clock: Clock | None = None, announce: Callable[[str], None] = print,
               announce_secrets: bool = True) -> Litestar:
    """`announce` receives the once-only lines (generated admin token, demo merchant key); with
    `announce_secrets` false they say that something was generated and how to get at it, without
    the secret (cli.py: output that is not a terminal). `clock`
    is the wall clock (tests give a TestClock); with clock.mode = "test" the app runs on its own
    stored test clock, and refuses (LiveMerchantsInTestMode) a database holding a live merchant."""
    if not __debug__:  # `python -O` strips assertions, and invariants live in them
        raise RuntimeError("APSS refuses to run under python -O: its invariants are assertions")
    if config.database.postgresql and config.backup.dir:  # SQLite's backup API copies a file
        raise ConfigInvalid("config key backup.dir: scheduled backups copy a SQLite file; on PostgreSQL back the "
                            "database up with its own tools (pg_dump, or the provider's snapshots): leave backup.dir "
                            "empty")
    svc = _build_services(config, clock or SystemClock())

    serving: list[ServingLock] = []

    async def start(app: Litestar) -> None:
        if not config.database.postgresql:
            # Held while serving: `apss restore` refuses while any server holds it (store/backup.py).
            lock = ServingLock.shared(config.database.path)
            if lock is None:
                raise RuntimeError(f"a restore is replacing {config.database.path}: start the server once it is done")
            serving.append(lock)
        apply_migrations(config.database.target)
        if config.database.synchronous != "FULL" and not config.database.postgresql:
            log.warning("database.synchronous=%s: a write acknowledged just before a power loss may be lost",
                        config.database.synchronous)
        await svc.db.start()
        reapplied = await svc.privacy.start()  # erasures recorded beside the database, applied again
        if reapplied:
            log.warning("applied %d recorded erasure(s) again (a restored backup, or a cut-off erasure)", reapplied)
        await svc.clock_control.start()
        await svc.merchants.load()
        await svc.channels.load()
        await svc.risk_engine.start()
        await svc.cache_sync.start()  # PostgreSQL: other instances' changes reach these caches
        if config.admin.token and len(config.admin.token) < _ADMIN_TOKEN_ADVISED_LEN:
            log.warning("admin.token is %d characters: use at least %d random ones (e.g. `python3 -c "
                        "'import secrets; print(secrets.token_urlsafe(32))'`)", len(config.admin.token),
                        _ADMIN_TOKEN_ADVISED_LEN)
        token = await svc.merchants.ensure_admin_token(config.admin.token)
        if token and announce_secrets:
            announce(f"Generated admin token (shown once, stored hashed): {token}")
        elif token:
            announce("Generated an admin token (stored hashed; shown only on a terminal or with --print-secrets): "
                     "set admin.token (APSS_ADMIN_TOKEN) and restart to choose your own")
        if config.seed.demo:
            demo = await seed_demo(db=svc.db, merchants=svc.merchants, catalog=svc.catalog,
                                   promotions=svc.promotions)
            if demo and announce_secrets:
                announce(f"Demo merchant {demo.id} ({demo.name}, test mode); secret key (shown once): {demo.secret_key}")
            elif demo:
                announce(f"Demo merchant {demo.id} ({demo.name}, test mode) created; its secret key is shown only on a "
                         f"terminal or with --print-secrets: roll it a new one with POST /v1/merchants/{demo.id}/keys "
                         "(admin token; GET /v1/merchants lists the merchants)")
        if config.sandbox.callback_transport == "asgi":
            transport = httpx.ASGITransport(app=app)
            svc.sandbox.start(httpx.AsyncClient(transport=transport, timeout=config.sandbox.callback_timeout_s))
        else:
            svc.sandbox.start(httpx.AsyncClient(timeout=config.sandbox.callback_timeout_s))
        resumed = await resume_running(db=svc.db, merchants=svc.merchants, checkout=svc.checkout, refunds=svc.refunds,
                                       settlements=svc.settlements)
        if resumed:
            log.info("finished %d order requests cut off by a restart", resumed)
        svc.scheduler.start()

    async def stop(app: Litestar) -> None:
        await svc.scheduler.stop()
        await svc.cache_sync.stop()
        for name in svc.channels.registry.names():  # clients a channel keeps of its own (PIX's mutual TLS)
            close = getattr(svc.channels.registry.get(name), "aclose", None)
            if close is not None:
                await close()
        await svc.provider_http.aclose()
        await svc.webhooks.http.aclose()
        await svc.prechecks.http.aclose()
        if svc.sandbox.client is not None:
            await svc.sandbox.client.aclose()
        # Requests had their share of server.shutdown_deadline_s (cli.py); the writer finishes its
        # queue in most of the rest, and what cannot finish fails with 503 'shutting down'.
        await svc.db.close(deadline_s=config.server.shutdown_deadline_s * _WRITER_SHUTDOWN_SHARE)
        while serving:
            serving.pop().release()

    # The schema UI is Swagger UI 5 (it reads OpenAPI 3.1), vendored in web/static/swagger-ui with
    # its licence and served by APSS itself: no CDN.
    assets = "/schema/assets"
    swagger = RefinedSwaggerPlugin(js_url=f"{assets}/swagger-ui-bundle.js", css_url=f"{assets}/swagger-ui.css",
                                  standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js", path="/swagger",
                                  favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>")
    openapi = OpenAPIConfig(
        title="APSS", version=__version__, description="Automated Payment & Settlement System for virtual goods",
        render_plugins=[RefinedJsonPlugin(), swagger],
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
    )
    app = Litestar(
        route_handlers=[healthz, metrics, account, update_account, CheckoutSessionController, provider_callback, pix_callback, MerchantController, ProductController, OrderController,
                        PlayerController, SandboxController, ChannelController, IapController, FxController, AlertController,
                        PaymentController, RefundController, MoneyController, AdminMoneyController,
                        WebhookEndpointController, WebhookDeliveryController, DeliveryController,
                        ReconciliationController, ReportController, SettlementController, AdminSettlementController,
                        ClockController, PromotionController, QuoteController, SubscriptionController,
                        SubscriptionReportController, RiskController, OrderRiskController, AmlController,
                        PlayerKycController, MinorLimitController,
                        DisputeController, DisputePolicyController, SandboxDisputeController,
                        PlayerPrivacyController, AuditController, PrivacyKeysController,
                        *WEB_HANDLERS,
                        create_static_files_router(path=assets, directories=[_SWAGGER_UI],
                                                   include_in_schema=False)],
        dependencies={"svc": Provide(lambda: svc, use_cache=True, sync_to_thread=False),
                      "merchant": Provide(current_merchant)},
        exception_handlers=exception_handlers,
        # Guards run before anything of the request is read: a publishable key is refused off the
        # browser endpoints, then the key is checked, then a JSON body is decoded strictly.
        guards=[request_guard],
        middleware=[AuditMiddleware],
        on_startup=[start],
        on_shutdown=[stop],
        openapi_config=openapi,
        request_max_body_size=config.server.request_body_bytes_max,
        logging_config=None,
    )
    app.state.services = svc
    # Around Litestar's whole handler (routing included): every answer, a 404 too, has its
    # Request-Id and is counted (api/observability.py).
    # In front of the router: well-formed order creations skip the framework (api/orders.py).
    hot = OrderFastPath(app.asgi_handler, svc=svc, body_bytes_max=config.server.request_body_bytes_max)
    app.asgi_handler = RequestContext(hot, observe=svc.metrics.observe_request)
    return app

