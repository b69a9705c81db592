"""Small value helpers shared by the reader, the page and the plain-text view: a finite number or None,
HTML escaping, and the compact number and box formatting."""

from __future__ import annotations

import html
import math
from typing import Any


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def _fmt(v: Any, nd: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "—" if v is None else str(v)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{nd}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{nd}f}".rstrip("0").rstrip(".")


def _box(b: Any) -> str:
    if not isinstance(b, (list, tuple)):
        return "—"
    return "[" + ", ".join(_fmt(x, 1) for x in b) + "]"
