"""The in-process scheduler: each job runs in its own task, when its interval has passed on the
injected clock (so tests move time by hand) or when something pokes it after a commit.

A job that raises is logged and runs again at its next turn; it never stops the others. One job
never runs twice at once (its loop, `run_now` and a test-clock advance take turns).

A test-clock advance (`step_until`) steps through the jobs' due times up to its target:
- a job that knows from its data when it next has work (`due_ms`: the expiry job, the sandbox's
  callback sender) runs at that time exactly, at most once per its interval, and again at the same
  time while it still has work due then (a batch limit), up to `_DRAIN_RUNS_MAX` runs;
- every other job runs at most once per `step_ms` of simulated time (at its multiples), or its own
  interval if longer: nothing of them is lost by running later, since each catches up on what is
  due (settlement settles each missed cut-off with its own period);
- then the clock is set to the target and every stepped job runs once more there.
Meanwhile the jobs' own loops leave the stepped jobs to the advance (pokes still run them).
Jobs added with `stepped=False` (deliveries to merchants' servers) are queued, not awaited: their
own loops send them once the clock has moved.

Several instances on one database (services/ops/job_leases.py): given `leases`, a job added
with `leased=True` (every job of the catalogue) runs from its loop only on the instance that
holds its lease; the others' loops wait, and take it over when its owner stops renewing. A poke runs a leased job only
where its lease is held, except a job added with `local_pokes=True`, safe to run on two instances
at once (the webhook sender, whose passes claim their rows): it runs on the instance whose commit
gave it work, at once. `run_now` and a test-clock advance are explicit requests to this instance
and run the job here whoever holds the lease (a job stays correct run twice at once, since every
write is a transaction of the database; the lease saves duplicated work and duplicated calls out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from apss.clock import Clock
from apss.services.ops.job_leases import JobLeases

__all__ = ["JobStats", "Scheduler"]

log = logging.getLogger("apss.jobs")


_DRAIN_RUNS_MAX = 20  # runs of one job at one step while its data says it still has work due
_STEPS_MAX = 1_000_000  # a bound on one advance's steps (the step rule keeps them far fewer)

DueMs = Callable[[], Awaitable[int | None]]


class JobStats(msgspec.Struct, frozen=True, kw_only=True):
    """One job as /metrics shows it."""

    name: str
    runs: int  # runs that ended, failed ones included
    failures: int  # runs that raised
    lag_s: float  # how long after it was due the last run started (0: on time, or poked early)
    duration_s: float  # how long the last run took (wall time)
    lease_held: bool  # this instance runs it (it holds the job's lease, or the job needs none)
    lease_owner: str | None  # the instance holding its lease at the last renewal (None: no lease)


class _Job:
    def __init__(self, name: str, interval_ms: int, fn: Callable[[], Awaitable[object]], *,
                 due_ms: DueMs | None, stepped: bool, leased: bool, local_pokes: bool) -> None:
        assert interval_ms > 0
        self.name = name
        self.interval_ms = interval_ms
        self.fn = fn
        self.due_ms = due_ms  # when its data next gives it work (None: nothing waiting)
        self.stepped = stepped
        self.leased = leased  # runs from its loop only where its lease is held (given leases)
        self.local_pokes = local_pokes  # a poke runs it here, lease or not
        self.next_due_ms = 0
        self.started_ms = -1  # clock time at the start of the last run
        self.poked = asyncio.Event()
        self.lock = asyncio.Lock()
        self.runs = 0
        self.failures = 0
        self.lag_ms = 0
        self.duration_s = 0.0
        self.completed_as_of_ms = -1  # clock time at the start of the last completed run


class Scheduler:
    def __init__(self, *, clock: Clock, tick_ms: int, leases: JobLeases | None = None) -> None:
        assert tick_ms >= 1
        self._clock = clock
        self._tick_s = tick_ms / 1000
        self._leases = leases  # None: every job runs here (one instance)
        self._leases_known = asyncio.Event()  # set after the first renewal, won or not
        self._jobs: dict[str, _Job] = {}
        self._tasks: list[asyncio.Task] = []
        self._advancing = False  # a test-clock advance runs the stepped jobs itself

    def add(self, name: str, *, interval_s: float, fn: Callable[[], Awaitable[object]], due_ms: DueMs | None = None,
            stepped: bool = True, leased: bool = True, local_pokes: bool = False) -> None:
        """`due_ms` tells when the job's data next gives it work; `stepped=False` leaves the job out
        of test-clock advances; `leased` runs it only where its lease is held, `local_pokes` on a
        poke here too (module docstring)."""
        assert name not in self._jobs, f"job {name!r} added twice"
        assert not self._tasks, "add jobs before start"
        self._jobs[name] = _Job(name, int(interval_s * 1000), fn, due_ms=due_ms, stepped=stepped, leased=leased,
                                local_pokes=local_pokes)

    def poke(self, name: str) -> None:
        """Run the job now (from the event loop thread, e.g. an after-commit hook)."""
        self._jobs[name].poked.set()

    def runs(self, name: str) -> int:
        return self._jobs[name].runs

    def stats(self) -> list[JobStats]:
        """Every job's counters (read at /metrics scrape time; cheap: no locks, no I/O)."""
        return [JobStats(name=job.name, runs=job.runs, failures=job.failures, lag_s=job.lag_ms / 1000,
                         duration_s=job.duration_s, lease_held=self._lease_held(job),
                         lease_owner=self._leases.owner_of(job.name) if self._leases and job.leased else None)
                for job in self._jobs.values()]

    @property
    def instance_id(self) -> str | None:
        """This instance's id in the job leases (None: no leases)."""
        return self._leases.owner if self._leases is not None else None

    def completed_as_of_ms(self, name: str) -> int:
        """The clock time a completed run of the job started at: a run that saw `t` is done."""
        return self._jobs[name].completed_as_of_ms

    async def run_now(self, name: str) -> object:
        """Run one job in the caller's task (tests, admin actions)."""
        return await self._run(self._jobs[name])

    def start(self) -> None:
        assert not self._tasks, "started twice"
        self._tasks = [asyncio.create_task(self._loop(job), name=f"job:{job.name}") for job in self._jobs.values()]
        leased = [job.name for job in self._jobs.values() if job.leased]
        if self._leases is not None and leased:
            self._tasks.append(asyncio.create_task(self._keep_leases(leased), name="job-leases"))
        else:
            self._leases_known.set()

    async def stop(self, *, release: bool = True) -> None:
        """Stop every loop; `release` gives this instance's leases up (a clean stop: another takes
        them at once). Without it they expire by themselves, as a killed instance's do."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if release and self._leases is not None and self._leases_known.is_set():
            await self._leases.release()

    async def _keep_leases(self, names: list[str]) -> None:
        assert self._leases is not None
        while True:
            try:
                await self._leases.renew(names)
            except Exception as exc:
                log.warning("job leases not renewed (%s); held ones last until they expire", type(exc).__name__)
            self._leases_known.set()
            await asyncio.sleep(self._leases.renew_every_s)

    def _lease_held(self, job: _Job) -> bool:
        return self._leases is None or not job.leased or self._leases.held(job.name)

    async def _loop(self, job: _Job) -> None:
        await self._leases_known.wait()
        while True:
            # During an advance the stepped jobs run at its steps, not a second time from here.
            due = self._clock.now_ms() >= job.next_due_ms and not (job.stepped and self._advancing)
            poked = job.poked.is_set()
            if poked or due:
                job.poked.clear()
                # Not ours: the owner runs it (a due job waits here, and runs once the lease is ours).
                if self._lease_held(job) or (poked and job.local_pokes):
                    await self._run(job)
            try:
                await asyncio.wait_for(job.poked.wait(), timeout=self._tick_s)
            except TimeoutError:
                pass

    async def _run(self, job: _Job) -> object:
        async with job.lock:
            started_ms = self._clock.now_ms()
            job.lag_ms = max(0, started_ms - job.next_due_ms) if job.started_ms >= 0 else 0
            job.started_ms = started_ms
            job.next_due_ms = started_ms + job.interval_ms
            began = time.perf_counter()
            try:
                result = await job.fn()
                job.completed_as_of_ms = max(job.completed_as_of_ms, started_ms)
                return result
            except asyncio.CancelledError:
                raise
            except Exception:
                job.failures += 1
                log.exception("job %s failed; it runs again at its next turn", job.name)
                return None
            finally:
                job.duration_s = time.perf_counter() - began
                job.runs += 1

    # -- test-clock advances -------------------------------------------------------------------
    async def step_until(self, to_ms: int, *, move: Callable[[int], None], step_ms: int) -> int:
        """Run every stepped job at its due times up to `to_ms` (module docstring), moving the
        clock with `move` to each step, then to `to_ms`. Returns the number of steps taken."""
        assert step_ms >= 1
        assert to_ms >= self._clock.now_ms(), "time never runs backwards"
        jobs = [job for job in self._jobs.values() if job.stepped]
        assert not self._advancing, "one advance at a time"
        self._advancing = True
        try:
            return await self._step_until(jobs, to_ms, move=move, step_ms=step_ms)
        finally:
            self._advancing = False

    async def _step_until(self, jobs: list[_Job], to_ms: int, *, move: Callable[[int], None], step_ms: int) -> int:
        steps = 0
        while True:
            assert steps < _STEPS_MAX, "test-clock advance took too many steps"
            now_ms = self._clock.now_ms()
            due = [(await self._due_at(job, step_ms=step_ms), job) for job in jobs]
            at_ms = min((t for t, _ in due if t is not None), default=None)
            if at_ms is None or at_ms > to_ms:
                break
            move(max(at_ms, now_ms))
            for t, job in due:
                if t is not None and t <= at_ms:
                    await self._drain(job)
            steps += 1
        move(to_ms)
        for job in jobs:
            await self._drain(job)
        assert self._clock.now_ms() == to_ms
        return steps + 1

    async def _due_at(self, job: _Job, *, step_ms: int) -> int | None:
        """When the job next runs during an advance; None: only at the target."""
        if job.due_ms is not None:
            hint = await job.due_ms()
            if hint is None:
                return None
            if hint > job.started_ms:
                return max(hint, job.next_due_ms)
            # Work its last run left due (it failed, or is stuck): no more often than unhinted jobs.
        periodic_ms = max(job.interval_ms, step_ms)
        return max(job.next_due_ms, (job.started_ms // periodic_ms + 1) * periodic_ms)

    async def _drain(self, job: _Job) -> None:
        await self._run(job)
        for _ in range(_DRAIN_RUNS_MAX - 1):
            if job.due_ms is None:
                return
            hint = await job.due_ms()
            if hint is None or hint > self._clock.now_ms():
                return
            await self._run(job)
