"""The in-process scheduler: each job runs in its own task, when its interval has passed on the
injected clock (so tests move time by hand) or when something pokes it after a commit.

A job that raises is logged and runs again at its next turn; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from apss.clock import Clock

__all__ = ["Scheduler"]

log = logging.getLogger("apss.jobs")


class _Job:
    def __init__(self, name: str, interval_ms: int, fn: Callable[[], Awaitable[object]]) -> None:
        assert interval_ms > 0
        self.name = name
        self.interval_ms = interval_ms
        self.fn = fn
        self.next_due_ms = 0
        self.poked = asyncio.Event()
        self.runs = 0
        self.completed_as_of_ms = -1  # clock time at the start of the last completed run


class Scheduler:
    def __init__(self, *, clock: Clock, tick_ms: int) -> None:
        assert tick_ms >= 1
        self._clock = clock
        self._tick_s = tick_ms / 1000
        self._jobs: dict[str, _Job] = {}
        self._tasks: list[asyncio.Task] = []

    def add(self, name: str, *, interval_s: float, fn: Callable[[], Awaitable[object]]) -> None:
        assert name not in self._jobs, f"job {name!r} added twice"
        assert not self._tasks, "add jobs before start"
        self._jobs[name] = _Job(name, int(interval_s * 1000), fn)

    def poke(self, name: str) -> None:
        """Run the job now (from the event loop thread, e.g. an after-commit hook)."""
        self._jobs[name].poked.set()

    def runs(self, name: str) -> int:
        return self._jobs[name].runs

    def completed_as_of_ms(self, name: str) -> int:
        """The clock time a completed run of the job started at: a run that saw `t` is done."""
        return self._jobs[name].completed_as_of_ms

    async def run_now(self, name: str) -> object:
        """Run one job in the caller's task (tests, admin actions)."""
        return await self._run(self._jobs[name])

    def start(self) -> None:
        assert not self._tasks, "started twice"
        self._tasks = [asyncio.create_task(self._loop(job), name=f"job:{job.name}") for job in self._jobs.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _loop(self, job: _Job) -> None:
        while True:
            if job.poked.is_set() or self._clock.now_ms() >= job.next_due_ms:
                job.poked.clear()
                await self._run(job)
            try:
                await asyncio.wait_for(job.poked.wait(), timeout=self._tick_s)
            except TimeoutError:
                pass

    async def _run(self, job: _Job) -> object:
        started_ms = self._clock.now_ms()
        job.next_due_ms = started_ms + job.interval_ms
        try:
            result = await job.fn()
            job.completed_as_of_ms = max(job.completed_as_of_ms, started_ms)
            return result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s failed; it runs again at its next turn", job.name)
            return None
        finally:
            job.runs += 1
