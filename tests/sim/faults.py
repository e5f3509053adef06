"""Seeded faults between APSS and its providers: an httpx transport that, per request, forwards,
refuses, times out before or after the provider did the work, answers 5xx or a malformed body,
or sends the request twice. Every decision comes from the simulation's one random.Random."""

from __future__ import annotations

import random
from collections import Counter

import httpx

__all__ = ["FaultyTransport", "PROVIDER_FAULTS", "CALLBACK_FAULTS", "SimulatedCrash"]

# What can happen to a call APSS makes to a provider (Stripe's API here).
PROVIDER_FAULTS = ("connect_error", "timeout_before", "http_5xx", "timeout_after", "malformed_after")
# What can happen to a callback a provider sends to APSS (the sandbox's sender): lost answers make
# the provider send it again (a duplicate), failed sends make it retry later (a delay).
CALLBACK_FAULTS = ("connect_error", "http_5xx_before", "timeout_after", "duplicate")


class SimulatedCrash(Exception):
    """Raised by the writer's fault hook: the process is gone from this write on (kill -9)."""


class FaultyTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, *, rng: random.Random, rate: float, faults: tuple[str, ...],
                 counter: Counter, label: str, enabled: list[bool]) -> None:
        self._inner = inner
        self._rng = rng
        self._rate = rate
        self._faults = faults
        self._counter = counter
        self._label = label
        self._enabled = enabled  # shared flag: the simulator turns faults off for its quiet phase

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        fault = None
        if self._enabled[0] and self._rng.random() < self._rate:
            fault = self._rng.choice(self._faults)
            self._counter[f"{self._label}:{fault}"] += 1
        if fault == "connect_error":
            raise httpx.ConnectError("simulated: connection refused", request=request)
        if fault == "timeout_before":
            raise httpx.ReadTimeout("simulated: timed out before the provider acted", request=request)
        if fault in ("http_5xx", "http_5xx_before"):
            return httpx.Response(503, json={"error": {"type": "api_error", "message": "simulated 503"}}, request=request)
        response = await self._forward(request, content)
        if fault == "timeout_after":
            raise httpx.ReadTimeout("simulated: timed out after the provider acted", request=request)
        if fault == "malformed_after":
            return httpx.Response(200, content=b'{"id": "trunc', headers={"content-type": "application/json"},
                                  request=request)
        if fault == "duplicate":
            response = await self._forward(request, content)
        return response

    async def _forward(self, request: httpx.Request, content: bytes) -> httpx.Response:
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=content)
        response = await self._inner.handle_async_request(copy)
        body = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()
