-- Work done once across instances (several APSS processes on one PostgreSQL database).
--
-- job_leases: which instance runs each scheduler job now (apss/services/ops/job_leases.py). An
-- instance takes or renews a lease with one conditional upsert (store/leases.py): it wins when the
-- row is its own or has expired; it renews every lease third, so a dead owner's jobs move within
-- one lease time.
-- Times are on the instances' wall clocks, never the test clock.
CREATE TABLE job_leases (
    job TEXT PRIMARY KEY,
    owner TEXT NOT NULL,             -- scheduler.instance_id of the instance that holds it
    expires_at_ms INTEGER NOT NULL,  -- the lease is free from then on
    taken_at_ms INTEGER NOT NULL     -- when this owner took it (a renewal keeps it)
) STRICT, WITHOUT ROWID;

-- Claims on PostgreSQL: a webhook delivery pass and the payment janitor claim the rows they work
-- on (SELECT ... FOR UPDATE SKIP LOCKED, then these columns set) so two instances never send the
-- same attempt or query the same payment at once; a claim is a short lease, so a dead instance's
-- rows come back when it ends. SQLite's single writer leaves them NULL.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE payments ADD COLUMN claimed_by TEXT;
ALTER TABLE payments ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE refunds ADD COLUMN claimed_by TEXT;
ALTER TABLE refunds ADD COLUMN claimed_until_ms INTEGER;
