"""The job catalogue: which job runs which service method, how often. The scheduler runs each at
its interval on the (possibly moved) clock; `poke` runs one at once (after a commit that gave it
work). A test-clock advance runs the expiry and sandbox jobs at the due times their data gives, and
leaves deliveries to merchants' servers to their own loops (scheduler.py).

Every job here is leased (services/ops/job_leases.py): with several instances on one database
each runs on the instance holding its lease. A poke runs a job only there, except the webhook sender's: its passes
claim their deliveries (FOR UPDATE SKIP LOCKED on PostgreSQL), so it is safe on two instances at
once and sends an event from the instance whose commit made it, without waiting for the owner's
next second. The other poked jobs are not safe so: the sandbox's callback sender and the refund
sender read due rows and record each send after it (two instances would send the same callback or
refund twice), and the privacy rotation re-seals batches it read. Their pokes on an instance that
does not hold the lease are dropped, and the owner finds the work at its next interval (1 s, 5 s,
the rotation's)."""

from __future__ import annotations

from apss.jobs.scheduler import Scheduler
from apss.services.container import Services

__all__ = ["schedule_jobs"]

_IDEMPOTENCY_PRUNE_MAX = 10_000


def schedule_jobs(scheduler: Scheduler, svc: Services) -> None:
    config = svc.config
    jobs = [
        ("expiry", config.scheduler.expiry_interval_s, svc.checkout.expire_due),
        ("sandbox_callbacks", 1.0, svc.sandbox.deliver_due),
        ("payment_janitor", config.channels.janitor_interval_s, svc.janitor.run),
        ("refund_sender", 5.0, svc.refunds.send_queued),
        ("completer", max(1.0, config.orders.idempotency_running_max_s / 6), svc.completer.complete_stale),
        ("settlement", 60.0, svc.settlements.run_due),
        ("reconciliation_checks", 60.0, svc.reconciliation.checks),
        ("reports", 300.0, svc.reports.run),
        ("webhooks", 1.0, svc.webhooks.deliver_due),
        ("webhook_prune", 3600.0, svc.webhooks.prune),
        ("admin_session_prune", 3600.0, svc.admin_sessions.prune),
        ("game_deliveries", 30.0, svc.deliveries.push_due),
        ("subscriptions", config.subscriptions.renewal_interval_s, svc.subscriptions.renew_due),
        # Google Play purchases whose acknowledgement failed at delivery, tried again with backoff.
        ("store_acknowledgements", 60.0, svc.store_purchases.acknowledge_due),
        ("risk_counter_prune", 3600.0, svc.risk_engine.prune),
        # Privacy: IPs and device ids past privacy.retention_days erased; values an older key
        # sealed re-sealed under the primary, in bounded batches (services/players/privacy.py).
        ("privacy_retention", config.privacy.retention_interval_s, svc.privacy.expire_retained),
        ("privacy_rotation", config.privacy.rotation_interval_s, svc.privacy.reseal_due),
        # Checks whether a backup is due (backup.every); does nothing without backup.dir.
        ("backup", 60.0, svc.backups.run_due),
    ]
    due = {"expiry": svc.checkout.next_expiry_ms, "sandbox_callbacks": svc.sandbox.next_callback_ms,
           "refund_sender": svc.refunds.next_send_ms}
    queued = {"webhooks", "game_deliveries"}  # merchants' servers: queued by an advance, never awaited
    local_pokes = {"webhooks"}  # safe on two instances at once (module docstring)
    for name, interval_s, fn in jobs:
        scheduler.add(name, interval_s=interval_s, fn=fn, due_ms=due.get(name), stepped=name not in queued,
                      local_pokes=name in local_pokes)

    async def prune_idempotency_keys() -> int:
        return await svc.idempotency.prune(svc.db, ttl_s=config.orders.idempotency_ttl_s, limit=_IDEMPOTENCY_PRUNE_MAX)

    scheduler.add("idempotency_prune", interval_s=config.scheduler.idempotency_prune_interval_s, fn=prune_idempotency_keys)
