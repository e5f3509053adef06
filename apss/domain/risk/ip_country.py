"""The IP-to-country table: the Regional Internet Registries' allocations, shipped in a package.

`iptocc` embeds the five RIRs' delegation files (AFRINIC, APNIC, ARIN, LACNIC, RIPE NCC), refreshed
with each of its releases, and answers from memory (no network, no file to download). The country is
the one the registry recorded for the block's holder, not a geolocation of the address: a VPN, a
roaming phone or a block a multinational uses abroad shows its holder's country. Private, reserved
and unallocated addresses have none (`is_missing(ip_country)` in a rule); rules that must be exact
should list ranges in a merchant list (`ip in @my_ranges`) instead.
"""

from __future__ import annotations

import ipaddress

import iptocc

__all__ = ["country_of"]


def country_of(ip: str) -> str | None:
    """The country of an address (ISO 3166-1 alpha-2), or None when no registry allocated it to one
    (private, reserved, unallocated) or it is not an IP address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:a.b.c.d, as dual-stack sockets report
        address = address.ipv4_mapped
    country = iptocc.country_code(address.compressed)
    return country if country and len(country) == 2 and country.isalpha() else None
