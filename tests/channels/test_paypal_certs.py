"""PayPal callbacks name their signing certificate by URL (PAYPAL-CERT-URL): the certificate is
fetched only from PayPal's documented API hosts, at most once per URL per period, failures
included, and one at a time per URL however many callbacks arrive at once. A counting stand-in of
the certificate host answers every request the fetcher makes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from apss.channels.paypal import PayPalCertFetcher
from apss.channels.paypal.client import check_cert_url
from apss.errors import CallbackRejected, ChannelUnavailable
from tests.channels.standin_paypal import make_signing_cert

pytestmark = pytest.mark.anyio
URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594"
OTHER = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-other"


class _CountingHost:
    """Stands in for api.paypal.com: counts requests per URL; `status` per URL decides the answer."""

    def __init__(self) -> None:
        self.signer = make_signing_cert()
        self.requests: list[str] = []
        self.status: dict[str, int] = {}
        self.delay_s = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        await asyncio.sleep(self.delay_s)
        status = self.status.get(str(request.url), 200)
        return httpx.Response(status, content=self.signer.pem if status == 200 else b"oops")


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def host():
    counting = _CountingHost()
    async with httpx.AsyncClient(transport=httpx.MockTransport(counting)) as http:
        counting.http = http
        yield counting


async def test_a_certificate_is_fetched_once_per_url_per_period(host):
    clock = _Clock()
    fetcher = PayPalCertFetcher(host.http, now_s=clock, period_s=3600)
    certs = await asyncio.gather(*(fetcher(URL) for _ in range(50)))  # 50 callbacks at once
    assert all(c == host.signer.cert for c in certs)
    assert host.requests == [URL], "one download for 50 concurrent callbacks"
    clock.now_s += 3599
    await fetcher(URL)
    assert len(host.requests) == 1
    await fetcher(OTHER)
    assert host.requests == [URL, OTHER], "each URL its own fetch"
    clock.now_s += 1  # the period is over: fetched again, once
    await asyncio.gather(fetcher(URL), fetcher(URL))
    assert host.requests == [URL, OTHER, URL]


async def test_a_failed_fetch_is_cached_too(host):
    clock = _Clock()
    fetcher = PayPalCertFetcher(host.http, now_s=clock, period_s=3600)
    host.status[URL] = 503
    for _ in range(20):
        with pytest.raises(ChannelUnavailable):
            await fetcher(URL)
    assert host.requests == [URL], "a failing URL is not asked again within the period"
    clock.now_s += 3600
    host.status[URL] = 200
    assert await fetcher(URL) == host.signer.cert
    assert host.requests == [URL, URL]


async def test_only_paypals_documented_hosts_are_ever_fetched(host):
    fetcher = PayPalCertFetcher(host.http)
    for url in ["https://evil.example/v1/notifications/certs/CERT-1", "https://www.paypal.com/v1/notifications/certs/CERT-1",
                "https://attacker.paypal.com/v1/notifications/certs/CERT-1", "http://api.paypal.com/v1/notifications/certs/CERT-1",
                "https://api.paypal.com/v1/oauth2/token", "https://api.paypal.com/v1/notifications/certs/../../oauth2/token",
                "https://api.paypal.com:444/v1/notifications/certs/CERT-1", "https://api.paypal.com/v1/notifications/certs/C?x=1"]:
        with pytest.raises(CallbackRejected):
            await fetcher(url)
        with pytest.raises(CallbackRejected):
            check_cert_url(url)
    assert host.requests == [], "nothing off PayPal's host was requested"
