"""Outbound requests to URLs a merchant gives: the SSRF rules (DESIGN.md, Security).

Whoever can save a URL here can make this server send requests from inside its network, so:

- Webhook URLs of live merchants are https only, to public addresses only. Test merchants may use
  http, `localhost` and private networks (development); `webhooks.allow_private_targets` lets a
  self-hosted setup allow private targets for live merchants too (still https). Link-local (the
  cloud metadata service at 169.254.169.254), multicast, unspecified, broadcast and reserved
  addresses are refused for everyone: no receiver lives there.
- Checked twice. When saved: a host that is an address literal (any spelling a resolver accepts,
  IPv4-mapped IPv6 included) or a `localhost` name. When connecting: the name is resolved once,
  every address is checked, and only a checked address is connected to (TLS still verifies the
  name), so a DNS answer that points at the inside, or changes after the check, gets nowhere.
  A refused connection is the code `target_not_allowed`: it never reveals whether a port is open.
- A channel's `api_base` override (it receives the merchant's provider secret): test merchants
  only, or a host listed in `channels.api_base_hosts_allowed`; for live merchants https only.

Messages never repeat the URL: it may carry credentials (`https://user:password@host`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from apss.errors import InvalidRequest, TargetNotAllowed

__all__ = [
    "Resolver",
    "TargetClients",
    "address_refused",
    "check_api_base",
    "check_webhook_url",
    "normalize_host",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_POOL_CONNECTIONS_MAX = 100
_POOL_KEEPALIVE_MAX = 20
_KEEPALIVE_EXPIRY_S = 5.0


def normalize_host(host: str) -> str:
    """How hosts compare: case-insensitive, without the root's trailing dot or v6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded_v4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: mapped (::ffff:a.b.c.d), NAT64 and 6to4."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def address_refused(address: Address, *, private_allowed: bool) -> bool:
    """Whether a request may not go to `address`: never to link-local, multicast, unspecified,
    broadcast or reserved ones; to loopback and private networks only when `private_allowed`."""
    address = _embedded_v4(address) or address
    if address.is_unspecified or address.is_link_local or address.is_multicast or address == _BROADCAST:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return True
    if address.is_reserved and not address.is_loopback:
        return True
    if address.is_global:
        return False
    return not private_allowed  # loopback, RFC 1918, ULA, shared (CGNAT), documentation ranges


def _literal(host: str) -> Address | None:
    """The address `host` spells, if it is one: also the legacy IPv4 forms every resolver
    accepts (2130706433, 0x7f.1, 127.1), which would otherwise pass as names."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_local_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")  # RFC 6761: always the loopback


def _url_parts(url: str, *, param: str) -> tuple[str, str]:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise InvalidRequest("The URL cannot be parsed.", code="url_invalid", param=param) from None
    host = normalize_host(parsed.host)
    if parsed.scheme not in ("http", "https") or not host:
        raise InvalidRequest("The URL must be an absolute http(s) URL with a host.", code="url_invalid", param=param)
    return parsed.scheme, host


def check_webhook_url(url: str, *, https_required: bool, private_allowed: bool) -> None:
    """When a webhook URL is saved: 400 `url_not_allowed` for a target that is never connected to."""
    scheme, host = _url_parts(url, param="url")
    if https_required and scheme != "https":
        raise TargetNotAllowed("Webhook URLs of live merchants must use https.", code="url_not_allowed", param="url")
    address = _literal(host)
    local = address is None and _is_local_name(host)
    if local and not private_allowed or address is not None and address_refused(address, private_allowed=private_allowed):
        raise TargetNotAllowed("Webhook URLs must point to a public address (test merchants may also use localhost "
                               "and private networks; link-local, multicast and reserved addresses never).",
                               code="url_not_allowed", param="url")


def check_api_base(url: str, *, live: bool, hosts_allowed: Iterable[str], param: str = "api_base") -> None:
    """When a channel's `api_base` (or PIX's `token_url`) is saved: the provider's secret goes there."""
    scheme, host = _url_parts(url, param=param)
    if not live:
        return  # test credentials, pointed at a stand-in or a mock on the developer's machine
    if scheme != "https" or host not in {normalize_host(h) for h in hosts_allowed}:
        raise TargetNotAllowed(
            f"A live merchant's {param} must be https to a host listed in channels.api_base_hosts_allowed; "
            "leave it out to use the provider's own.", code="api_base_not_allowed", param=param)


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer with the check between DNS and connect: the name is resolved
    here, once, and the socket is opened to one of the addresses just checked."""

    def __init__(self, *, private_allowed: bool, resolver: Resolver | None) -> None:
        self._private_allowed = private_allowed
        self._resolver = resolver or _system_resolver
        self._inner = httpcore.AnyIOBackend()

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        literal = _literal(host)
        if literal is not None:
            found = [str(literal)]
        else:
            try:
                async with asyncio.timeout(timeout):
                    found = await self._resolver(host, port)
            except TimeoutError:
                raise httpcore.ConnectTimeout("name resolution timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"name resolution failed: {type(exc).__name__}") from None
        if not found:
            raise httpcore.ConnectError("name resolution found no address")
        # Every address, not just the first: a mixed answer is how a rebinding attack hedges.
        if any(address_refused(ipaddress.ip_address(a), private_allowed=self._private_allowed) for a in found):
            raise TargetNotAllowed("The webhook host resolves to an address that is not allowed.",
                                   code="target_not_allowed")
        return found

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self._addresses(host, port, timeout)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise TargetNotAllowed("Unix sockets are never a webhook target.", code="target_not_allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _checked_client(*, private_allowed: bool, resolver: Resolver | None) -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend, so its pool is rebuilt with ours (same settings otherwise).
    # The assertion fails loudly if a future httpx stops keeping the pool there.
    assert isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool), "httpx transport layout changed"
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=_POOL_CONNECTIONS_MAX,
        max_keepalive_connections=_POOL_KEEPALIVE_MAX, keepalive_expiry=_KEEPALIVE_EXPIRY_S,
        network_backend=_CheckedBackend(private_allowed=private_allowed, resolver=resolver))
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)


class TargetClients:
    """The HTTP clients of webhook deliveries, one per rule (a connection pool knows one rule):
    public addresses only, or loopback and private networks too."""

    def __init__(self, *, resolver: Resolver | None = None) -> None:
        self.public_only = _checked_client(private_allowed=False, resolver=resolver)
        self.private_allowed = _checked_client(private_allowed=True, resolver=resolver)

    def client(self, *, private_allowed: bool) -> httpx.AsyncClient:
        return self.private_allowed if private_allowed else self.public_only

    async def aclose(self) -> None:
        await self.public_only.aclose()
        await self.private_allowed.aclose()
