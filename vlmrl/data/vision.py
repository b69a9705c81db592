"""Qwen-VL image sizing: smart_resize and the per-family patch factor.

Qwen-VL vision towers cut an image into patches (14 px for Qwen2/2.5-VL, 16 px for Qwen3-VL) and merge
2x2 patches into one language-model token, so image sides must be multiples of ``patch * merge``
(28 or 32) and the pixel count is bounded by a budget. ``smart_resize`` follows the rule of the
reference implementation in ``qwen_vl_utils`` (which cannot be imported here: it imports torchvision).
Patch sizes per family live in the family table, ``vlmrl/family.py``.
"""

from __future__ import annotations

import math

from vlmrl.family import get_family

MAX_ASPECT_RATIO = 200

DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 16384 * 28 * 28


def image_factor(family: str) -> int:
    """Side multiple for a model family: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL (see ``vlmrl.family``)."""
    return get_family(family).factor


def _round(x: float, f: int) -> int:
    return round(x / f) * f


def _floor(x: float, f: int) -> int:
    return math.floor(x / f) * f


def _ceil(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Return (height, width), both multiples of ``factor``, with about the same aspect ratio and
    ``min_pixels <= h*w <= max_pixels``. Raises ValueError for empty sizes or an aspect ratio above 200."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be at most {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.1f}"
        )
    h_bar = max(factor, _round(height, factor))
    w_bar = max(factor, _round(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor(height / beta, factor))
        w_bar = max(factor, _floor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil(height * beta, factor)
        w_bar = _ceil(width * beta, factor)
    return h_bar, w_bar


def visual_tokens(height: int, width: int, family: str = "qwen2_vl") -> int:
    """Number of language-model tokens an already smart-resized image of this size becomes."""
    f = image_factor(family)
    return (height // f) * (width // f)
