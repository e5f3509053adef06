"""Admin: the server's clock, and moving a test clock (config clock.mode = "test")."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, post
from litestar.di import Provide

from apss.api.common import Services, admin_guard
from apss.services.test_clock import ClockView

__all__ = ["ClockController"]


class ClockAdvance(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of the two: a number of seconds (0 runs what is due now), or a target time."""

    seconds: int | None = None
    to: str | None = None


class ClockController(Controller):
    path = "/v1/admin/clock"
    tags = ["admin"]
    dependencies = {"admin": Provide(admin_guard)}
    security = [{"bearer": []}]

    @get("/", summary="The server's clock (admin): mode `system` or `test`, and its now")
    async def show(self, svc: Services, admin: None) -> ClockView:
        return svc.clock_control.view()

    @post("/advance", status_code=200,
          summary="Move the test clock (admin); answers once every job due up to the new time has run")
    async def advance(self, data: ClockAdvance, svc: Services, admin: None) -> ClockView:
        return await svc.clock_control.advance(seconds=data.seconds, to=data.to)
