"""The crop tool: the model names a box on the image it saw; it gets that region of the original image back.

The policy first sees a low-resolution view (:func:`first_view`). It may then call::

    <tool_call>{"name": "crop", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>

with the box in its coordinate convention (vlmrl.rollout.tools.coords). :func:`map_box` validates the box
and maps it onto the original image (the one place the crop-box mapping lives); :func:`crop_image` cuts
that region from the original and fits it to the crop pixel budget; :class:`CropTool` is the tool the
rollout engine runs. Model mistakes come back as ToolCallError (shown to the model); caller mistakes (bad
sizes, unknown convention) raise ValueError. :func:`box_coverage` measures how much of a ground-truth box a
crop covers (DTPO's crop_ok rule, vlmrl/rewards/dtpo.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from vlmrl.data.images import fit_to_budget
from vlmrl.data.vision import MAX_ASPECT_RATIO
from vlmrl.rollout.tools.base import Tool, ToolCallError, ToolContext, ToolImage
from vlmrl.rollout.tools.coords import check_convention, check_size, range_hint, to_seen_pixels
from vlmrl.rollout.tools.parse import short_json, type_name

DEFAULT_TOOL_NAME = "crop"
MIN_SEEN_SIZE = 28  # boxes thinner than this (seen pixels) are expanded around their centre
MAX_BOX_ASPECT = 200  # long side / short side, after expansion (smart_resize's own limit is 200)

# First view: half the original per side, then snapped by smart_resize into this budget.
FIRST_VIEW_SCALE = 0.5
FIRST_VIEW_MIN_PIXELS = 4 * 28 * 28  # 3,136 px: never upscale a normal image
FIRST_VIEW_MAX_PIXELS = 1024 * 28 * 28  # 802,816 px (1024 visual tokens at factor 28)

# Crop: fitted into this budget; a tiny crop is upscaled to at least CROP_MIN_PIXELS.
CROP_MIN_PIXELS = 256 * 28 * 28  # 200,704 px, about 448x448 (256 visual tokens at factor 28)
CROP_MAX_PIXELS = 1024 * 28 * 28  # 802,816 px, about 896x896

CROP_INSTRUCTION = (
    "Here is the cropped region. Continue reasoning and answer in <answer></answer>, "
    "or call the tool again."
)
ERROR_INSTRUCTION = (
    "The tool call was not executed. Continue reasoning and answer in <answer></answer>, "
    "or call the tool again with a valid bbox_2d."
)
_SNAP_EPS = 1e-6  # float noise tolerance when turning original coordinates into pixel bounds

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MappedBox:
    """A validated box. ``seen_box`` is in seen-image pixels (floats, after clamping and expansion);
    ``box`` is the integer pixel box (x1, y1, x2, y2) in the original image, right/bottom exclusive
    as for ``PIL.Image.crop``, with ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``."""

    seen_box: Box
    box: tuple[int, int, int, int]
    seen_size: tuple[int, int]
    original_size: tuple[int, int]
    convention: str
    clamped: bool = False
    expanded: bool = False
    raw_seen_box: Box | None = None  # the box as written, in seen pixels (before clamping and expansion)
    ok: bool = field(default=True, init=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def seen_area_fraction(self) -> float:
        """Area of the seen box / area of the seen image (DTPO's ``a``)."""
        x1, y1, x2, y2 = self.seen_box
        w, h = self.seen_size
        return (x2 - x1) * (y2 - y1) / (w * h)

    @property
    def raw_area_fraction(self) -> float:
        """AdaptVision's area ratio (verl/utils/reward_score/general_qa_bbox.py:270-280 there): the box as written,
        width and height each capped at the image's, over the seen image's area; no clamping to the image, no
        expansion."""
        x1, y1, x2, y2 = self.raw_seen_box if self.raw_seen_box is not None else self.seen_box
        w, h = self.seen_size
        return min(x2 - x1, w) * min(y2 - y1, h) / (w * h)


def check_bbox(bbox: Any) -> Box | ToolCallError:
    """``bbox_2d`` as 4 finite floats, or the ToolCallError telling the model what is wrong with it
    (not a list, wrong arity, a non-number such as a boolean, string or null, a non-finite number)."""
    if not isinstance(bbox, (list, tuple)):
        return ToolCallError(
            f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {type_name(bbox)} {short_json(bbox)}.",
            "bbox_not_a_list")
    if len(bbox) != 4:
        return ToolCallError(
            f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {len(bbox)} values.", "wrong_arity")
    out = []
    for i, v in enumerate(bbox):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return ToolCallError(
                f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2]; value {i + 1} is "
                f"{type_name(v)} ({short_json(v)}), not a number.", "not_a_number")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            return ToolCallError(f"Error: bbox_2d values must be finite numbers; value {i + 1} is {short_json(v)}.",
                                 "not_finite")
        out.append(f)
    return (out[0], out[1], out[2], out[3])


# ----------------------------------------------------------------------------------------- mapping


def _expand(lo: float, hi: float, side: int, minimum: float) -> tuple[float, float, bool]:
    """Grow [lo, hi] (inside [0, side]) to ``minimum`` around its centre, shifted to stay inside."""
    if hi - lo >= minimum:
        return lo, hi, False
    if side <= minimum:
        return 0.0, float(side), True
    c = (lo + hi) / 2
    lo, hi = c - minimum / 2, c + minimum / 2
    if lo < 0:
        lo, hi = 0.0, float(minimum)
    elif hi > side:
        lo, hi = float(side - minimum), float(side)
    return lo, hi, True


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) <= _SNAP_EPS else v


def _pixel_bounds(lo: float, hi: float, side: int) -> tuple[int, int]:
    a = max(0, min(side, math.floor(_snap(lo))))
    b = max(0, min(side, math.ceil(_snap(hi))))
    if b <= a:  # at least one pixel
        if a >= side:
            a, b = side - 1, side
        else:
            b = a + 1
    return a, b


def map_box(
    bbox: Sequence[float],
    seen_size: tuple[int, int],
    original_size: tuple[int, int],
    convention: str = "absolute",
    min_seen_size: float = MIN_SEEN_SIZE,
    max_aspect: float = MAX_BOX_ASPECT,
    region: Sequence[int] | None = None,
) -> MappedBox | ToolCallError:
    """Validate a box in the model's coordinates and map it onto the original image.

    ``seen_size`` and ``original_size`` are (width, height); ``region`` the (x1, y1, x2, y2) of the original
    that the seen image shows (an earlier crop), None for the whole image. Steps: convert to seen pixels;
    reject x2 <= x1 or y2 <= y1 (before clamping) and a box with no overlap with the seen image; clamp to the
    seen image; expand a side shorter than ``min_seen_size`` seen pixels to that length around its centre
    (shifted to stay inside; the full side if the image is smaller); reject a long/short side ratio above
    ``max_aspect``; scale by exactly (region width)/w and (region height)/h; take integer pixel bounds (floor
    for x1/y1, ceil for x2/y2, clamped to the region, at least 1 px); shift by the region's corner. A box
    covering the whole seen image maps to exactly the region ((0, 0, W, H) without one).
    ``max_aspect`` should not exceed 200 (smart_resize's limit, checked on the original box too).
    """
    w, h = check_size(seen_size, "seen_size")
    W, H = check_size(original_size, "original_size")
    check_convention(convention)
    rx1, ry1, rx2, ry2 = (0, 0, W, H) if region is None else (int(v) for v in region)
    if not (0 <= rx1 < rx2 <= W and 0 <= ry1 < ry2 <= H):
        raise ValueError(f"region {tuple(region)} is not a box inside the {W}x{H} original")
    if min_seen_size < 0 or not math.isfinite(min_seen_size):
        raise ValueError(f"min_seen_size must be a finite number >= 0, got {min_seen_size!r}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect!r}")
    if isinstance(bbox, (str, bytes)):
        return ToolCallError(
            f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {type_name(bbox)}.", "bbox_not_a_list"
        )
    numbers = check_bbox(list(bbox))
    if isinstance(numbers, ToolCallError):
        return numbers

    try:
        x1, y1, x2, y2 = to_seen_pixels(numbers, (w, h), convention)
    except OverflowError:
        x1 = y1 = x2 = y2 = math.inf
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return ToolCallError("Error: bbox_2d values are too large.", "not_finite")
    shown = ", ".join(f"{v:g}" for v in numbers)
    if x2 <= x1 or y2 <= y1:
        return ToolCallError(
            f"Error: bbox_2d [{shown}] is empty: it must satisfy x1 < x2 and y1 < y2 "
            "(format [x1, y1, x2, y2], top-left then bottom-right).",
            "empty_box",
        )
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        return ToolCallError(
            f"Error: bbox_2d [{shown}] lies outside the image. " + range_hint(convention, w, h), "outside"
        )

    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    clamped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    cx1, cx2, ex = _expand(cx1, cx2, w, min_seen_size)
    cy1, cy2, ey = _expand(cy1, cy2, h, min_seen_size)
    bw, bh = cx2 - cx1, cy2 - cy1
    aspect = max(bw / bh, bh / bw)
    if aspect > max_aspect:
        return ToolCallError(
            f"Error: bbox_2d [{shown}] is too thin (aspect ratio {aspect:.0f}, at most {max_aspect:g}). "
            "Choose a less elongated region.",
            "aspect",
        )

    RW, RH = rx2 - rx1, ry2 - ry1
    ox1, ox2 = _pixel_bounds(cx1 * RW / w, cx2 * RW / w, RW)
    oy1, oy2 = _pixel_bounds(cy1 * RH / h, cy2 * RH / h, RH)
    ow, oh = ox2 - ox1, oy2 - oy1
    if max(ow / oh, oh / ow) > MAX_ASPECT_RATIO:
        return ToolCallError(
            f"Error: bbox_2d [{shown}] is too thin (aspect ratio above {MAX_ASPECT_RATIO} in the original "
            "image). Choose a less elongated region.",
            "aspect",
        )
    return MappedBox(
        seen_box=(cx1, cy1, cx2, cy2),
        box=(rx1 + ox1, ry1 + oy1, rx1 + ox2, ry1 + oy2),
        seen_size=(w, h),
        original_size=(W, H),
        convention=convention,
        clamped=clamped,
        expanded=ex or ey,
        raw_seen_box=(x1, y1, x2, y2),
    )


def box_coverage(crop_box: Sequence[float] | MappedBox, gt_box: Sequence[float]) -> float:
    """area(crop ∩ gt) / area(gt), both (x1, y1, x2, y2) in original-image coordinates; in [0, 1].
    A MappedBox is taken by its original box. A ground-truth box without area (x2 <= x1 or y2 <= y1)
    cannot be covered: 0.0."""
    if isinstance(crop_box, MappedBox):
        crop_box = crop_box.box
    cx1, cy1, cx2, cy2 = (float(v) for v in crop_box)
    gx1, gy1, gx2, gy2 = (float(v) for v in gt_box)
    if not (gx2 > gx1 and gy2 > gy1):
        return 0.0
    iw = max(0.0, min(cx2, gx2) - max(cx1, gx1))
    ih = max(0.0, min(cy2, gy2) - max(cy1, gy1))
    return iw * ih / ((gx2 - gx1) * (gy2 - gy1))


# ----------------------------------------------------------------------------------------- images


def crop_image(
    original: Image.Image,
    mapped: MappedBox,
    factor: int = 28,
    min_pixels: int = CROP_MIN_PIXELS,
    max_pixels: int = CROP_MAX_PIXELS,
    resample: int = Image.BICUBIC,
) -> Image.Image:
    """Crop ``mapped.box`` from the original image and fit it (vlmrl.data.images.fit_to_budget: ``resample``,
    RGB, sides multiples of ``factor``) into [min_pixels, max_pixels]: a tiny crop is upscaled to at least
    ``min_pixels`` (default 256*28*28, about 448x448), a large one downscaled to at most ``max_pixels``."""
    if tuple(original.size) != tuple(mapped.original_size):
        raise ValueError(
            f"image size {original.size} differs from the size the box was mapped to {mapped.original_size}"
        )
    return fit_to_budget(original.crop(mapped.box), factor, min_pixels, max_pixels, resample)


def first_view(
    image: Image.Image,
    scale: float = FIRST_VIEW_SCALE,
    factor: int = 28,
    min_pixels: int = FIRST_VIEW_MIN_PIXELS,
    max_pixels: int = FIRST_VIEW_MAX_PIXELS,
    resample: int = Image.BICUBIC,
) -> Image.Image:
    """The low-resolution first view: each side times ``scale`` (``resample``), then fitted by fit_to_budget
    into [min_pixels, max_pixels] with sides multiples of ``factor`` (RGB). Its ``.size`` is the
    ``seen_size`` to pass to :func:`map_box`.

    The downscale is its own step before the snap: one direct resize to the snapped size (e.g.
    224 -> 128 for Qwen3-VL) keeps fine detail that an exact 2x downscale removes (docs/synthetic_zoom.md)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if scale != 1.0:
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        # rounding must not push a thin image over smart_resize's aspect limit (5x999 -> 2x500)
        w, h = max(w, math.ceil(h / MAX_ASPECT_RATIO)), max(h, math.ceil(w / MAX_ASPECT_RATIO))
        image = image.convert("RGB").resize((w, h), resample)
    return fit_to_budget(image, factor, min_pixels, max_pixels, resample)


# ----------------------------------------------------------------------------------------- the tool


class CropTool(Tool):
    """``crop``: one argument ``bbox_2d``, a box on the first view of the sample's first image; returns
    that region of the original at high resolution. Record: ``bbox`` (as written), ``box_seen`` (after
    convention, clamp and expansion) and ``box_original``."""

    name = DEFAULT_TOOL_NAME
    instruction = CROP_INSTRUCTION
    error_instruction = ERROR_INSTRUCTION

    def schema(self, coords: str = "absolute", style: str = "full") -> dict:
        from vlmrl.data.prompts import crop_tool_schema

        return crop_tool_schema(self.name, coords, style)

    def short_prompt(self, coords: str = "absolute") -> str:
        from vlmrl.data.prompts import crop_tool_line

        return crop_tool_line(self.name, coords)

    def example(self) -> str:
        return '<tool_call>{"name": "%s", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>' % self.name

    def first_view_arguments(self, bbox: list[float]) -> dict:
        """The arguments of a call cropping ``bbox`` of the first view (scripted SFT demonstrations)."""
        return {"bbox_2d": bbox}

    def validate(self, arguments: dict) -> Box | ToolCallError:
        if "bbox_2d" not in arguments:
            return ToolCallError(f'Error: "arguments" has no "bbox_2d". Use: {self.example()}', "missing_bbox")
        return check_bbox(arguments["bbox_2d"])

    def crop(self, bbox: Box, view: Any, original: Image.Image, context: ToolContext, source: int = 0, **record):
        """Map ``bbox`` (on ``view``, a TrajImage the model saw of ``original``) and crop the original: the
        observation, or the mapping's ToolCallError. ``record`` entries go first in the trace record."""
        region = getattr(view, "box_original", None)
        mapped = map_box(bbox, view.seen_size, original.size, context.convention, min_seen_size=context.min_box,
                         region=region)
        if isinstance(mapped, ToolCallError):
            return ToolCallError(mapped.message, mapped.kind, record={**record, "bbox": list(bbox)})
        image = crop_image(original, mapped, context.factor, context.min_pixels, context.max_pixels, context.resample)
        box_seen, box_original = list(mapped.seen_box), list(mapped.box)
        return self.observation(ToolImage(image, source, box_seen, box_original),
                                record={**record, "bbox": list(bbox), "box_seen": box_seen,
                                        "box_original": box_original, "area_raw": mapped.raw_area_fraction})

    def run(self, args: Box, context: ToolContext):
        return self.crop(args, context.seen[0], context.originals[0], context)
