"""What /metrics shows, in the Prometheus text format (prometheus-client), from a registry of this
app's own (tests build several apps in one process: the global registry would collide).

- Requests: counted and timed per route template (`/v1/orders/{order_id}`, never the raw path:
  ids would make a label per order) and status, by the HTTP wrapper (api/observability.py).
- The writer, the scheduler: counters they keep themselves (plain integers, no locks), read at
  scrape time.
- Business gauges (orders by status, payments by channel and status, the webhook backlog, open
  alerts): one COUNT each on a reader connection at scrape time (store/metrics.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from apss.clock import Clock
from apss.domain.orders import OrderStatus
from apss.store import metrics as store
from apss.store.db import BATCH_SIZE_BUCKETS, Database

__all__ = ["CONTENT_TYPE", "JobStatsLike", "Metrics"]

# The text format generate_latest writes (Litestar adds the charset).
CONTENT_TYPE = "text/plain; version=0.0.4"
# No `*_created` series beside every counter and histogram: a process start time each, noise on a
# dashboard (a process-wide switch of prometheus-client; APSS has no other registry).
disable_created_metrics()
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobStatsLike(Protocol):
    """A scheduler job's counters (apss/jobs/scheduler.py JobStats)."""

    name: str
    runs: int
    failures: int
    lag_s: float
    duration_s: float
    lease_held: bool
    lease_owner: str | None


class _Snapshot:
    """The scrape-time reads, taken just before the registry is rendered."""

    def __init__(self) -> None:
        self.orders: list = []
        self.payments: list = []
        self.backlog: int = 0
        self.backlog_oldest_s: float = 0.0
        self.alerts: list = []


class Metrics:
    def __init__(self, *, db: Database, clock: Clock, job_stats: Callable[[], Iterable[JobStatsLike]]) -> None:
        self._db = db
        self._clock = clock
        self._job_stats = job_stats
        self._lock = asyncio.Lock()  # one scrape renders at a time (the snapshot is shared)
        self._snapshot = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("apss_http_requests", "HTTP requests answered, by method, route template and status.",
                                 ["method", "route", "status"], registry=self.registry)
        self._latency = Histogram("apss_http_request_duration_seconds",
                                  "Time from the request's arrival to the end of its answer, by method and route template.",
                                  ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry.register(_Live(self))

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled children are looked up once per (method, route, status): `labels()` costs
        # several times the increment itself (bench/observability.py). Routes are the app's route
        # templates, so the map stays small.
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._requests.labels(method, route, str(status)),
                                              self._latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)

    async def render(self) -> bytes:
        """The exposition text, with the business gauges read now."""
        async with self._lock:
            snapshot = _Snapshot()
            snapshot.orders = await store.orders_by_status(self._db)
            snapshot.payments = await store.payments_by_channel_status(self._db)
            backlog = await store.webhook_backlog(self._db)
            snapshot.backlog = backlog["n"]
            if backlog["oldest_ms"] is not None:
                snapshot.backlog_oldest_s = max(0, self._clock.now_ms() - backlog["oldest_ms"]) / 1000
            snapshot.alerts = await store.alerts_open(self._db)
            self._snapshot = snapshot
            return generate_latest(self.registry)


class _Live(Collector):
    """Everything that is read, not counted by us, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._writer()
        yield from self._jobs()
        yield from self._business(self._metrics._snapshot)

    def _writer(self) -> Iterator[Metric]:
        db = self._metrics._db
        yield GaugeMetricFamily("apss_db_writer_up", "1 while the single writer takes writes (healthz), else 0.",
                                value=1 if db.writer_alive else 0)
        yield GaugeMetricFamily("apss_db_write_queue_depth", "Write transactions waiting for the writer.",
                                value=db.queue_depth)
        counts = list(db.batch_size_counts)  # a copy: the writer thread goes on counting
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BATCH_SIZE_BUCKETS), "+Inf"), counts):
            cumulative += count
            buckets.append((bound, cumulative))
        # Consistent with the buckets read a moment ago even if the writer moved meanwhile.
        total = db.batch_members_committed
        yield HistogramMetricFamily("apss_db_write_batch_size",
                                    "Transaction functions per committed write batch (group commit: one fsync each).",
                                    buckets=buckets, sum_value=total)
        yield CounterMetricFamily("apss_db_write_retries", "Write transactions run again after a serialization "
                                  "failure or deadlock (PostgreSQL; always 0 on SQLite's single writer).",
                                  value=db.retries)

    def _jobs(self) -> Iterator[Metric]:
        runs = CounterMetricFamily("apss_job_runs", "Scheduler job runs that ended, by job.", labels=["job"])
        failures = CounterMetricFamily("apss_job_failures", "Scheduler job runs that raised, by job.", labels=["job"])
        lag = GaugeMetricFamily("apss_job_lag_seconds", "How long after it was due the job's last run started "
                                "(on the server's clock).", labels=["job"])
        duration = GaugeMetricFamily("apss_job_last_duration_seconds", "How long the job's last run took.",
                                     labels=["job"])
        held = GaugeMetricFamily("apss_job_lease_held", "1 where this instance runs the job (it holds the job's "
                                 "lease, or the job needs none), else 0 (another instance holds it).", labels=["job"])
        owner = GaugeMetricFamily("apss_job_lease_owner", "1 for the instance holding the job's lease at this "
                                  "instance's last renewal (several instances on one database).", labels=["job", "owner"])
        for job in self._metrics._job_stats():
            runs.add_metric([job.name], job.runs)
            failures.add_metric([job.name], job.failures)
            lag.add_metric([job.name], job.lag_s)
            duration.add_metric([job.name], job.duration_s)
            held.add_metric([job.name], 1 if job.lease_held else 0)
            if job.lease_owner is not None:
                owner.add_metric([job.name, job.lease_owner], 1)
        yield from (runs, failures, lag, duration, held, owner)

    @staticmethod
    def _business(snapshot: _Snapshot) -> Iterator[Metric]:
        orders = GaugeMetricFamily("apss_orders", "Orders by status (every merchant).", labels=["status"])
        counted = {row["status"]: row["n"] for row in snapshot.orders}
        for status in dict.fromkeys([*(s.value for s in OrderStatus), *counted]):  # every status, 0 included
            orders.add_metric([status], counted.get(status, 0))
        payments = GaugeMetricFamily("apss_payments", "Payments by channel and status (their outcome).",
                                     labels=["channel", "status"])
        for row in snapshot.payments:
            payments.add_metric([row["channel"], row["status"]], row["n"])
        alerts = GaugeMetricFamily("apss_alerts_open", "Unresolved alerts by severity.", labels=["severity"])
        open_by_severity = {row["severity"]: row["n"] for row in snapshot.alerts}
        for severity in ("info", "warning", "critical"):
            alerts.add_metric([severity], open_by_severity.get(severity, 0))
        yield from (orders, payments, alerts)
        yield GaugeMetricFamily("apss_webhook_backlog", "Merchant webhook deliveries pending (the outbox's backlog).",
                                value=snapshot.backlog)
        yield GaugeMetricFamily("apss_webhook_backlog_oldest_seconds",
                                "Age of the oldest pending webhook delivery (0: none pending).",
                                value=snapshot.backlog_oldest_s)
