"""Box coordinate conventions: how a model writes ``bbox_2d``, and which one each model family learned.

- ``"absolute"``: pixels of the image the model saw (Qwen2.5-VL's grounding format);
- ``"rel1000"``: 0..1000 relative to the seen image (Qwen2-VL and Qwen3-VL);
- ``"rel1"``: 0..1 relative to the seen image.

(The conventions and each family's default are in the family table, ``vlmrl/family.py``.)
"""

from __future__ import annotations

from typing import Sequence

from vlmrl.family import CONVENTION_RANGE as _CONVENTION_RANGE
from vlmrl.family import CONVENTIONS, default_convention

__all__ = ["CONVENTIONS", "default_convention", "check_size", "check_convention", "to_seen_pixels"]


def check_size(size: Sequence[int], what: str) -> tuple[int, int]:
    """(width, height) as two positive ints; ValueError naming ``what`` otherwise."""
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (width, height), got {size!r}") from None
    if isinstance(w, bool) or isinstance(h, bool) or int(w) != w or int(h) != h or w <= 0 or h <= 0:
        raise ValueError(f"{what} must be two positive integers (width, height), got {size!r}")
    return int(w), int(h)


def check_convention(convention: str) -> str:
    if convention not in _CONVENTION_RANGE:
        raise ValueError(f"unknown coordinate convention {convention!r}; expected one of {list(CONVENTIONS)}")
    return convention


def to_seen_pixels(
    bbox: Sequence[float], seen_size: tuple[int, int], convention: str
) -> tuple[float, float, float, float]:
    """Convert a box from ``convention`` to seen-image pixel coordinates (no validation)."""
    w, h = check_size(seen_size, "seen_size")
    rng = _CONVENTION_RANGE[check_convention(convention)]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if rng is None:
        return (x1, y1, x2, y2)
    # multiply first, then divide: exact for the full-image box (1000 * w / 1000 == w)
    return (x1 * w / rng, y1 * h / rng, x2 * w / rng, y2 * h / rng)


def range_hint(convention: str, w: int, h: int) -> str:
    """The valid coordinate range in words, for an error message."""
    if convention == "absolute":
        return f"Coordinates are pixels of the {w}x{h} image: 0 <= x <= {w}, 0 <= y <= {h}."
    if convention == "rel1000":
        return "Coordinates are relative to the image, from 0 to 1000."
    return "Coordinates are relative to the image, from 0 to 1."
