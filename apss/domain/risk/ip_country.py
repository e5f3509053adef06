"""A small IP-to-country table shipped with the package (no network, no database file).

Coverage, honestly: a curated list of large, long-standing allocations whose country is not in
doubt (legacy /8 blocks held by US, British, German and Japanese organisations, the big national
carriers' IPv4 and IPv6 blocks of China, Japan, Germany, France, Korea, and the public resolvers
of Google and Cloudflare). It is far from complete: an address outside it has no `ip_country`
(test it with `is_missing(ip_country)`), and a block an owner re-sold may have moved since. Rules
that must be exact should list ranges in a merchant list (`ip in @my_ranges`) instead.
"""

from __future__ import annotations

import bisect
import ipaddress

__all__ = ["RANGES", "country_of"]

# (CIDR, ISO 3166-1 alpha-2)
RANGES: tuple[tuple[str, str], ...] = (
    # Legacy IPv4 /8 blocks (IANA's IPv4 address space registry names their holders)
    ("3.0.0.0/8", "US"), ("4.0.0.0/8", "US"), ("6.0.0.0/8", "US"), ("7.0.0.0/8", "US"), ("11.0.0.0/8", "US"),
    ("12.0.0.0/8", "US"), ("13.0.0.0/8", "US"), ("15.0.0.0/8", "US"), ("16.0.0.0/8", "US"), ("17.0.0.0/8", "US"),
    ("19.0.0.0/8", "US"), ("21.0.0.0/8", "US"), ("22.0.0.0/8", "US"), ("26.0.0.0/8", "US"), ("28.0.0.0/8", "US"),
    ("29.0.0.0/8", "US"), ("30.0.0.0/8", "US"), ("33.0.0.0/8", "US"), ("48.0.0.0/8", "US"), ("55.0.0.0/8", "US"),
    ("56.0.0.0/8", "US"),
    ("25.0.0.0/8", "GB"),   # UK Ministry of Defence
    ("53.0.0.0/8", "DE"),   # Daimler AG
    ("126.0.0.0/8", "JP"),  # SoftBank
    ("133.0.0.0/8", "JP"),  # JPNIC (Japanese universities and institutes)
    # Public resolvers
    ("8.8.8.0/24", "US"), ("8.8.4.0/24", "US"), ("1.1.1.0/24", "AU"),
    # National carriers (IPv4)
    ("61.128.0.0/10", "CN"),  # China Telecom
    ("202.96.0.0/12", "CN"),  # China Telecom / CNCGROUP
    ("223.4.0.0/14", "CN"),   # Alibaba (223.5.5.5)
    ("114.112.0.0/13", "CN"),  # 114DNS and Chinese carriers
    ("2.0.0.0/12", "FR"),     # Orange France
    ("90.0.0.0/9", "FR"),     # Orange France
    ("80.128.0.0/11", "DE"),  # Deutsche Telekom
    ("84.128.0.0/10", "DE"),  # Deutsche Telekom
    ("211.32.0.0/11", "KR"),  # Korean carriers
    ("86.0.0.0/11", "GB"),    # Virgin Media / BT blocks
    # IPv6
    ("2001:4860::/32", "US"),  # Google
    ("2600::/12", "US"),       # ARIN's block for US carriers (Comcast, AT&T, Verizon...)
    ("240e::/20", "CN"),       # China Telecom
    ("2408:8000::/20", "CN"),  # China Unicom
    ("2409:8000::/20", "CN"),  # China Mobile
    ("2001:da8::/32", "CN"),   # CERNET
    ("2003::/19", "DE"),       # Deutsche Telekom
    ("2a01:e00::/26", "FR"),   # Free SAS
    ("2400:4000::/21", "JP"),  # Japanese carriers (NTT)
)


def _index() -> dict[int, tuple[list[int], list[tuple[int, str]]]]:
    by_version: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
    for cidr, country in RANGES:
        net = ipaddress.ip_network(cidr)
        by_version[net.version].append((int(net.network_address), int(net.broadcast_address), country))
    out = {}
    for version, rows in by_version.items():
        rows.sort()
        for (_, end, _), (start, _, _) in zip(rows, rows[1:]):
            assert end < start, "ranges in the table do not overlap"
        out[version] = ([r[0] for r in rows], [(r[1], r[2]) for r in rows])
    return out


_INDEX = _index()


def country_of(ip: str) -> str | None:
    """The country of an address, or None when the table does not cover it (or it is not an IP)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    starts, ends = _INDEX[address.version]
    value = int(address)
    at = bisect.bisect_right(starts, value) - 1
    if at < 0:
        return None
    end, country = ends[at]
    return country if value <= end else None
