"""Number formatting shared by the report, ``harness compare`` and ``harness regress``: rates as
percentages and differences as signed percentage points, "—" where there is no number."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["interval", "number", "pct", "pts", "sort_key"]


def number(x: Any) -> float:
    """``x`` as a float; NaN when it is missing or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def pct(x: Any, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage ("12.5"); "—" when there is none."""
    v = number(x)
    return "—" if math.isnan(v) else f"{100 * v:.{digits}f}"


def pts(x: Any, digits: int = 1) -> str:
    """A difference of rates in signed percentage points ("+2.5"); "—" when there is none."""
    v = number(x)
    return "—" if math.isnan(v) else f"{100 * v:+.{digits}f}"


def interval(lo: Any, hi: Any) -> str:
    """An interval of rates as percentages ("12–30"); "" when either end is missing."""
    a, b = number(lo), number(hi)
    return "" if math.isnan(a) or math.isnan(b) else f"{100 * a:.0f}–{100 * b:.0f}"


def sort_key(x: Any) -> str:
    """A number as a sortable string for the report's tables; "" (sorted last) when there is none."""
    v = number(x)
    return "" if math.isnan(v) else f"{v:.6f}"
