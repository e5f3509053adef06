"""Web origins a merchant embeds the checkout in: `scheme://host[:port]`, nothing else.

An origin is what a browser sends in its `Origin` header and what CSP `frame-ancestors` and CORS
compare: the scheme and host in lower case, the port only when it is not the scheme's default.
Origins are normalised to that form when saved, so that a comparison is plain string equality.
"""

from __future__ import annotations

import re

from apss.errors import InvalidRequest

__all__ = ["ORIGINS_MAX", "normalise_origin", "normalise_origins"]

ORIGINS_MAX = 20  # a merchant's sites; each one goes into every checkout page's CSP header
_ORIGIN_LENGTH_MAX = 253 + 20
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name (LDH labels, punycode for IDN) or an IPv4 address, then an optional port. No path,
# query, fragment or user info: those are not part of an origin. IPv6 literals are refused (rare
# for a shop, and their many spellings would make equality unreliable).
_ORIGIN_RE = re.compile(r"^(https?)://([a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*)"
                        r"(?::([0-9]{1,5}))?$")


def normalise_origin(value: str, *, live: bool, param: str) -> str:
    """The origin in the form browsers send it, or InvalidRequest `origin_invalid`. A live
    merchant's sites must be https (a payment page framed over http can be tampered with),
    except localhost for development."""
    lowered = value.strip().lower()
    match = _ORIGIN_RE.match(lowered) if len(lowered) <= _ORIGIN_LENGTH_MAX else None
    if match is None:
        raise InvalidRequest(f"'{value[:80]}' is not an origin: give scheme://host[:port] (http or https), "
                             "with no path, query or trailing slash.", code="origin_invalid", param=param)
    scheme, host, port_text = match.groups()
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"'{value[:80]}' has a port outside 1-65535.", code="origin_invalid", param=param)
    if live and scheme != "https" and host not in ("localhost", "127.0.0.1"):
        raise InvalidRequest("A live merchant's sites must use https.", code="origin_invalid", param=param)
    origin = f"{scheme}://{host}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"
    assert "/" not in origin.split("://", 1)[1] and origin == origin.lower()
    return origin


def normalise_origins(values: list[str], *, live: bool, param: str = "allowed_origins") -> list[str]:
    """Each origin normalised, duplicates dropped (first one kept), at most ORIGINS_MAX."""
    if len(values) > ORIGINS_MAX:
        raise InvalidRequest(f"At most {ORIGINS_MAX} origins.", code="too_many_origins", param=param)
    result: list[str] = []
    for index, value in enumerate(values):
        origin = normalise_origin(value, live=live, param=f"{param}[{index}]")
        if origin not in result:
            result.append(origin)
    assert len(result) <= ORIGINS_MAX
    return result
