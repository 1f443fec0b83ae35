"""Lists in messages, cut to a readable length: ``brief(names)`` -> "a, b, c, ... and 140 more"."""
from __future__ import annotations

from typing import Iterable

LIMIT = 10  # items shown before "... and N more"


def brief(items: Iterable[object], limit: int = LIMIT) -> str:
    """``items`` joined by ", ", the ones past ``limit`` counted instead of listed."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... and {len(items) - limit} more"
