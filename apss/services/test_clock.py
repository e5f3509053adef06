"""The clock as the admin API shows and moves it: the system clock, or (config clock.mode = "test")
a test clock that stands still until an advance moves it.

An advance stores its target before it steps the jobs: a crash half-way restarts at the target,
where every job catches up on what is due, so the stored time never falls behind the data. It
answers once every job due up to the target has run (the scheduler's step rule, apss/jobs) and
the sandbox callbacks they caused are applied; deliveries to merchants' servers are only queued.
One advance at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

from apss.clock import Clock, TestClock, format_rfc3339, parse_rfc3339
from apss.config import ClockConfig
from apss.errors import ClockAdvanceTooFar, ClockBackwards, ClockNotTest, InvalidRequest
from apss.store import test_clock as store
from apss.store.db import Database, Tx

__all__ = ["ClockControl", "ClockView", "JobStepper"]


class JobStepper(Protocol):
    """What an advance needs of the scheduler (apss/jobs/scheduler.py)."""

    async def step_until(self, to_ms: int, *, move: Callable[[int], None], step_ms: int) -> int: ...


class ClockView(msgspec.Struct, frozen=True, kw_only=True):
    mode: Literal["system", "test"]
    now: str  # RFC 3339, UTC


class ClockControl:
    def __init__(self, *, db: Database, clock: Clock, test_clock: TestClock | None, config: ClockConfig,
                 jobs: JobStepper) -> None:
        """`test_clock` is the app's clock in test mode (loaded from the stored time), else None."""
        assert (test_clock is None) == (config.mode == "system")
        assert test_clock is None or test_clock is clock
        self._db = db
        self._clock = clock
        self._test_clock = test_clock
        self._config = config
        self._jobs = jobs
        self._lock = asyncio.Lock()

    def view(self) -> ClockView:
        return ClockView(mode=self._config.mode, now=format_rfc3339(self._clock.now_ms()))

    async def start(self) -> None:
        """Store the test clock's time at its first start, so that every restart continues from it."""
        if self._test_clock is not None:
            await self._save(self._test_clock.now_ms())

    async def advance(self, *, seconds: int | None, to: str | None) -> ClockView:
        if self._test_clock is None:
            raise ClockNotTest("The clock is the system clock (clock.mode = \"system\"); only a test clock advances.")
        if (seconds is None) == (to is None):
            raise InvalidRequest("Give exactly one of `seconds` and `to`.")
        async with self._lock:
            now_ms = self._test_clock.now_ms()
            to_ms = now_ms + seconds * 1000 if seconds is not None else _parse_target(to)
            if to_ms < now_ms:
                raise ClockBackwards(f"The target {format_rfc3339(max(to_ms, 0))} is before the clock's now "
                                     f"{format_rfc3339(now_ms)}: time never runs backwards.",
                                     param="seconds" if seconds is not None else "to")
            if to_ms - now_ms > self._config.advance_max_s * 1000:
                raise ClockAdvanceTooFar(f"One advance moves the clock at most {self._config.advance_max_s} s "
                                         "(clock.advance_max_s).", param="seconds" if seconds is not None else "to")
            await self._save(to_ms)
            await self._jobs.step_until(to_ms, move=self._test_clock.advance_to, step_ms=self._config.step_s * 1000)
            assert self._test_clock.now_ms() == to_ms
        return self.view()

    async def _save(self, now_ms: int) -> None:
        def transaction(tx: Tx) -> None:
            store.save_now(tx, now_ms=now_ms)

        await self._db.write(transaction)


def _parse_target(text: str | None) -> int:
    assert text is not None
    try:
        to_ms = parse_rfc3339(text)
    except ValueError:
        raise InvalidRequest("`to` must be an RFC 3339 time, e.g. 2026-11-25T15:04:05Z.", param="to") from None
    return to_ms
