"""List pagination, one rule: read `limit + 1` rows; the extra row only says there is more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["page_of"]

R = TypeVar("R")
V = TypeVar("V")


def page_of(rows: Sequence[R], limit: int, view: Callable[[R], V]) -> tuple[list[V], bool]:
    """The first `limit` rows as views, and whether more follow (`rows` was read with limit + 1)."""
    assert limit >= 1 and len(rows) <= limit + 1, "read one row more than the page, never more"
    return [view(row) for row in rows[:limit]], len(rows) > limit
