"""Numbers and reasons as a reader wants them: plain digits, whole words."""

from __future__ import annotations

import math


def plain(value: float, digits: int = 3) -> str:
    """``6790.4`` -> ``"6,790"``, ``0.000123`` -> ``"0.000123"``: never ``6.79e+03``."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-12:  # rounding error around zero, e.g. an exact fit's residual
        return "0"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def cut(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, cut at a word boundary with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = line[:limit - 1]
    if " " in head and not line[limit - 1].isspace():
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:") + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())
