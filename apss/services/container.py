"""The object graph app.py builds once: every service the controllers, pages and jobs call, by
name and type. Frozen: nothing is wired onto it, or onto a service, after construction.

A plain class, not a dataclass: Litestar validates dataclass dependencies field by field on every
request; a plain class it passes through as it is."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from apss.clock import Clock
from apss.config import Config
from apss.services.backups.backups import Backups
from apss.services.catalog.products import Catalog
from apss.services.disputes.evidence import DisputeEvidenceService
from apss.services.disputes.records import DisputeRecords
from apss.services.iap.purchases import StorePurchases
from apss.services.idempotency import Idempotency
from apss.services.merchants.admin_sessions import AdminSessions
from apss.services.merchants.keys import Merchants
from apss.services.merchants.rate_limit import RateLimiter
from apss.services.money.finance import FinanceService
from apss.services.money.fx import FxRates
from apss.services.money.ledger import Ledger
from apss.services.money.reconciliation import Reconciliation
from apss.services.money.reports import Reports
from apss.services.money.settlement import Settlements
from apss.services.notify.alerts import Alerts
from apss.services.notify.merchant_webhooks import Webhooks
from apss.services.ops.cache_sync import CacheSync
from apss.services.ops.metrics import Metrics
from apss.services.orders.browser import BrowserCheckout
from apss.services.orders.checkout import Checkout
from apss.services.orders.queries import OrderQueries
from apss.services.orders.recovery import Completer
from apss.services.payments.callbacks import PaymentEvents
from apss.services.payments.channels import ChannelAccess
from apss.services.payments.gateway import PaymentGateway
from apss.services.payments.janitor import PaymentJanitor
from apss.services.players.game_deliveries import Deliveries
from apss.services.players.privacy import AuditLog, Privacy
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
from apss.services.subscriptions.service import Subscriptions
from apss.services.test_clock import ClockControl
from apss.store.db import Database

__all__ = ["JobRunner", "Services"]


class JobRunner(Protocol):
    """What services and tests see of the scheduler (apss/jobs): run a job now, tell when it ran."""

    def poke(self, name: str) -> None: ...

    def completed_as_of_ms(self, name: str) -> int: ...


class Services:
    config: Config
    clock: Clock
    db: Database
    merchants: Merchants
    admin_sessions: AdminSessions
    idempotency: Idempotency
    channels: ChannelAccess
    gateway: PaymentGateway
    catalog: Catalog
    checkout: Checkout
    browser_checkout: BrowserCheckout
    orders: OrderQueries
    fx: FxRates
    payment_events: PaymentEvents
    store_purchases: StorePurchases
    janitor: PaymentJanitor
    completer: Completer
    ledger: Ledger
    refunds: Refunds
    risk_engine: RiskEngine
    prechecks: Prechecks
    risk: RiskControl
    disputes: DisputeRecords
    dispute_evidence: DisputeEvidenceService
    aml: Aml
    kyc: Kyc
    finance: FinanceService
    webhooks: Webhooks
    deliveries: Deliveries
    reconciliation: Reconciliation
    reports: Reports
    settlements: Settlements
    subscriptions: Subscriptions
    alerts: Alerts
    players: Players
    privacy: Privacy
    audit: AuditLog
    promotions: Promotions
    quotes: Quotes
    sandbox: SandboxProvider
    scheduler: JobRunner
    clock_control: ClockControl
    rate_limiter: RateLimiter
    metrics: Metrics
    cache_sync: CacheSync
    backups: Backups
    provider_http: httpx.AsyncClient

    __slots__ = tuple(__annotations__)

    def __init__(self, **services: Any) -> None:
        missing, unknown = set(self.__slots__) - services.keys(), services.keys() - set(self.__slots__)
        if missing or unknown:
            raise TypeError(f"Services: missing {sorted(missing)}, unknown {sorted(unknown)}")
        for name, service in services.items():
            object.__setattr__(self, name, service)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Services is frozen: '{name}' is given to the constructor")
