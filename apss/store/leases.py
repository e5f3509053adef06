"""Leases on scheduler jobs (services/ops/job_leases.py): which instance runs each job now.

One row per job: its owner (an instance id), when the lease ends, and when that owner took it.
`take_leases` takes or renews every lease an instance asks for in one write transaction, each with
one conditional upsert: the row is written when it is missing, already this owner's, or expired;
otherwise it is left to its owner. On SQLite one process writes, so it always wins; on PostgreSQL
two instances racing for a free lease are two SERIALIZABLE transactions on one row, and the loser
is retried and then sees the winner's unexpired lease. Times are wall-clock milliseconds.
"""

from __future__ import annotations

import sqlite3

from apss.store.db import Tx

__all__ = ["release_leases", "take_leases"]

_TAKE_SQL = (
    "INSERT INTO job_leases (job, owner, expires_at_ms, taken_at_ms) VALUES (:job, :owner, :expires_at_ms, :now_ms)"
    " ON CONFLICT (job) DO UPDATE SET expires_at_ms = excluded.expires_at_ms,"
    " taken_at_ms = CASE WHEN job_leases.owner = excluded.owner THEN job_leases.taken_at_ms ELSE excluded.taken_at_ms END,"
    " owner = excluded.owner"
    " WHERE job_leases.owner = excluded.owner OR job_leases.expires_at_ms <= :now_ms"
)


def take_leases(tx: Tx, *, jobs: list[str], owner: str, now_ms: int, lease_ms: int) -> list[sqlite3.Row]:
    """Take or renew the leases of `jobs` for `owner` where they are free, expired or its own;
    returns every asked job's lease as it now stands (job, owner, expires_at_ms, taken_at_ms)."""
    assert jobs and owner and lease_ms > 0
    expires_at_ms = now_ms + lease_ms
    for job in jobs:
        tx.execute(_TAKE_SQL, {"job": job, "owner": owner, "expires_at_ms": expires_at_ms, "now_ms": now_ms})
    marks = ", ".join("?" for _ in jobs)
    return tx.all(f"SELECT job, owner, expires_at_ms, taken_at_ms FROM job_leases WHERE job IN ({marks}) ORDER BY job",
                  tuple(jobs))


def release_leases(tx: Tx, *, owner: str) -> int:
    """Give up every lease `owner` holds (a clean stop): another instance takes them at once."""
    return tx.execute("DELETE FROM job_leases WHERE owner = ?", (owner,)).rowcount
