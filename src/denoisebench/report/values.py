"""Missing figures and about three significant figures: shared by groups, verdicts, tables
and plots."""

from __future__ import annotations

import math
from typing import Any


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _sig(v: float) -> str:
    """About three significant figures, thousands separated: 1,234 / 12.3 / 0.0123."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"
