"""Prefixed ids, sortable by creation time and unguessable.

Layout (ULID-like): 48 bits of milliseconds, then 80 random bits, in Crockford base32 (26
characters, lower case). Monotonic within the process: an id made in the same millisecond as
the previous one adds 64 random bits to its random part, so ids sort in the order they were made (events of
one transaction keep their order). Time-sortable keys insert into SQLite's B-trees about 2.4x faster than
random UUIDs (DESIGN.md), and ids double as pagination cursors.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["PREFIXES", "new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFIXES = frozenset({"mch", "prd", "ord", "pay", "rfd", "evt", "stl", "dlv", "wtx", "alr"})


_lock = threading.Lock()
_last = [0, 0]  # [ms, random part] of the previous id


def new_id(prefix: str) -> str:
    assert prefix in PREFIXES, f"unknown id prefix {prefix!r}"
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        step = 1 + int.from_bytes(os.urandom(8), "big")  # 64 random bits: the next id is no guess
        if now_ms <= _last[0] and _last[1] + step < 1 << 80:
            now_ms, random_part = _last[0], _last[1] + step
        else:
            now_ms = max(now_ms, _last[0] + 1) if now_ms <= _last[0] else now_ms
            random_part = int.from_bytes(os.urandom(10), "big")
        _last[0], _last[1] = now_ms, random_part
    value = now_ms << 80 | random_part
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    assert value == 0
    return f"{prefix}_{''.join(reversed(chars))}"
