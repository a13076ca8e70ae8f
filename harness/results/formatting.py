"""Number formatting shared by the report, ``harness compare`` and ``harness regress``: rates as
percentages and differences as signed percentage points, "—" where there is no number."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["number", "pct", "pts"]


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
