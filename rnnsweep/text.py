"""Numbers and reasons as a reader wants them: plain digits, whole words, one line.

One home for the package's text helpers: the report's numbers (:func:`plain`), the
terminal's (:func:`number`), and an error's first line (:func:`first_line`). Imports
nothing of rnnsweep, so the trial side, the sweep side and the report all use it.
"""

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
    """Every line of ``text`` joined into one (a whole message, on one line)."""
    return " ".join(text.split())


def first_line(text: str, default: str = "") -> str:
    """The first line of ``text`` with its margins trimmed; ``default`` when it is blank."""
    return text.strip().splitlines()[0] if text.strip() else default


def number(value: float) -> str:
    """Plain numbers a reader takes in at a glance on a terminal: 3 significant digits,
    no exponent unless the value is tiny (a parity error) or huge."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e7:
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def shorten(text: str, limit: int = 120) -> str:
    """The first line of ``text``, cut at a word boundary."""
    line = first_line(text)
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return f"{cut or line[:limit]}…"
