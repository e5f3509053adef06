"""Job leases: with several APSS instances on one database, each scheduler job runs on one of them
at a time, and moves to another when that one dies.

A lease is a row per job (store/leases.py): its owner, an instance id (`scheduler.instance_id`),
and when it ends, `scheduler.lease_s` (30 s) after it was last renewed. The scheduler renews every
lease it holds, and asks for every lease it does not, in one write transaction every third of the
lease time (a conditional upsert per job: taken when free, expired or already ours). A job whose
lease this instance does not hold waits in its loop; when the owner stops renewing (killed, hung,
cut off from the database) its leases expire and the next instance to renew takes them, so a job
resumes elsewhere within one lease time (plus a third, the renewal period). A clean stop gives the
leases up at once. A renewal that fails (the database unreachable, a full disk) keeps what was held
until it expires; the jobs then wait until a renewal succeeds again (a warning is logged each time).

Leases live on the wall clock (milliseconds since the epoch), never on the test clock: whether an
instance is alive is a matter of real time, and a test-clock advance of a month must not look like
every owner died. Instances' clocks must agree to well within the lease time (NTP does).

On SQLite one process serves the file: its instance id is `sqlite` unless configured, the same
after a restart, so it always wins, even its own lease left by a killed process. The cost there is
one small write per renewal period, not one per job run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from apss.store import leases as store
from apss.store.db import Database

__all__ = ["JobLeases"]

log = logging.getLogger("apss.jobs")


def _wall_ms() -> int:
    return int(time.time() * 1000)


class JobLeases:
    def __init__(self, *, db: Database, owner: str, lease_s: float, wall_ms: Callable[[], int] = _wall_ms) -> None:
        assert owner and lease_s > 0
        self._db = db
        self.owner = owner
        self._lease_ms = int(lease_s * 1000)
        self._wall_ms = wall_ms
        self._held_until: dict[str, int] = {}  # job -> the end of our lease on it, as written
        self._owners: dict[str, str] = {}  # job -> its owner at our last renewal
        self.renewals = 0  # renewal transactions committed

    @property
    def renew_every_s(self) -> float:
        return self._lease_ms / 3000

    async def renew(self, jobs: list[str]) -> None:
        """Take or renew the leases of `jobs` (one write transaction). A failed write keeps what we
        held: it lasts until it expires, and the next renewal tries again."""
        now_ms = self._wall_ms()
        rows = await self._db.write(lambda tx: store.take_leases(tx, jobs=jobs, owner=self.owner, now_ms=now_ms,
                                                                  lease_ms=self._lease_ms))
        self.renewals += 1
        for row in rows:
            self._owners[row["job"]] = row["owner"]
            if row["owner"] == self.owner:
                self._held_until[row["job"]] = row["expires_at_ms"]
            else:
                self._held_until.pop(row["job"], None)

    def held(self, job: str) -> bool:
        """Whether this instance holds the job's lease now (no I/O: what the last renewal wrote)."""
        return self._held_until.get(job, 0) > self._wall_ms()

    def owner_of(self, job: str) -> str | None:
        """The job's owner as our last renewal saw it (None before the first)."""
        return self._owners.get(job)

    async def release(self) -> None:
        """Give our leases up (a clean stop), so another instance takes them at its next renewal."""
        self._held_until.clear()
        try:
            await self._db.write(lambda tx: store.release_leases(tx, owner=self.owner))
        except Exception as exc:  # the database went first: the leases expire by themselves
            log.warning("could not release the job leases of %s: %s", self.owner, type(exc).__name__)
