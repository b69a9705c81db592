"""The crop-bounding-box tool, usable without a model.

The policy first sees a low-resolution view of the image (:func:`first_view`). It may then call the
crop tool in Qwen's tool-call format::

    <think>...</think>
    <tool_call>
    {"name": "crop", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}
    </tool_call>

and the rollout engine answers with a user turn built from :func:`observation_text` that holds the
crop of the *original* image at high resolution, or an error text (and no image) for an invalid call.

Pipeline, each step a plain function a test can call::

    call = parse_tool_call(text, tool_name="crop")      # None (answer turn) | ToolCall | ToolCallError
    box = map_box(call.bbox, seen.size, original.size, convention)   # MappedBox | ToolCallError
    crop = crop_image(original, box, factor=28)          # PIL image sized by smart_resize
    obs = observation_text(ok=True)                      # text around the crop image

or all at once with :func:`run_crop_tool`. Model mistakes (bad JSON, bad boxes) are never raised:
they come back as :class:`ToolCallError` whose ``message`` is shown to the model. Caller mistakes
(bad sizes, unknown convention, non-str text) raise ``ValueError`` / ``TypeError``.

Coordinate conventions (``convention``):

- ``"absolute"``: pixels of the image the model saw (Qwen2.5-VL's grounding format).
- ``"rel1000"``: 0..1000 relative to the seen image (Qwen2-VL and Qwen3-VL).
- ``"rel1"``: 0..1 relative to the seen image.

(The conventions and each family's default are in the family table, ``vlmrl/family.py``.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from vlmrl.data.vision import MAX_ASPECT_RATIO, smart_resize
from vlmrl.family import CONVENTION_RANGE as _CONVENTION_RANGE
from vlmrl.family import CONVENTIONS, default_convention

__all__ = [
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "TOOL_RESPONSE_CLOSE",
    "DEFAULT_TOOL_NAME",
    "MAX_TOOL_CALL_CHARS",
    "CONVENTIONS",
    "MIN_SEEN_SIZE",
    "MAX_BOX_ASPECT",
    "FIRST_VIEW_SCALE",
    "FIRST_VIEW_MIN_PIXELS",
    "FIRST_VIEW_MAX_PIXELS",
    "CROP_MIN_PIXELS",
    "CROP_MAX_PIXELS",
    "CROP_INSTRUCTION",
    "ERROR_INSTRUCTION",
    "ToolCall",
    "ToolCallError",
    "MappedBox",
    "Observation",
    "CropResult",
    "has_tool_call",
    "parse_tool_call",
    "default_convention",
    "to_seen_pixels",
    "map_box",
    "crop_image",
    "first_view",
    "box_coverage",
    "observation_text",
    "run_crop_tool",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
DEFAULT_TOOL_NAME = "crop"

# Longest JSON body (characters between the tags) that is handed to json.loads. A real call is
# well under 200 characters; this bounds parse time and memory on degenerate generations.
MAX_TOOL_CALL_CHARS = 4096

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

_FORMAT_HINT = '<tool_call>{{"name": "{name}", "arguments": {{"bbox_2d": [x1, y1, x2, y2]}}}}</tool_call>'
_SNAP_EPS = 1e-6  # float noise tolerance when turning original coordinates into pixel bounds


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call. ``bbox`` is in the model's coordinate convention (not yet mapped);
    ``raw`` is the ``<tool_call>...</tool_call>`` block and ``span`` its (start, end) in the text."""

    name: str
    bbox: tuple[float, float, float, float]
    raw: str
    span: tuple[int, int] = (0, 0)
    ok: bool = field(default=True, init=False)


@dataclass(frozen=True)
class ToolCallError:
    """An invalid call. ``message`` is meant for the model (it starts with "Error: "); ``kind`` is a
    short machine-readable reason for logs and rewards, one of: no_closing_tag, several_calls,
    too_long, malformed_json, several_objects, not_an_object, wrong_name, missing_arguments,
    bad_arguments, missing_bbox, bbox_not_a_list, wrong_arity, not_a_number, not_finite,
    empty_box, outside, aspect."""

    message: str
    kind: str
    raw: str = ""
    ok: bool = field(default=False, init=False)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MappedBox:
    """A validated box. ``seen_box`` is in seen-image pixels (floats, after clamping and expansion);
    ``box`` is the integer pixel box (x1, y1, x2, y2) in the original image, right/bottom exclusive
    as for ``PIL.Image.crop``, with ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``."""

    seen_box: tuple[float, float, float, float]
    box: tuple[int, int, int, int]
    seen_size: tuple[int, int]
    original_size: tuple[int, int]
    convention: str
    clamped: bool = False
    expanded: bool = False
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


@dataclass(frozen=True)
class Observation:
    """Text of the observation (user) turn. With an image: ``before_image`` + image + ``after_image``;
    without (invalid call): ``after_image`` is None and ``before_image`` is the whole text.
    The chat-template wrapping (``<|im_start|>user`` ... ``<|im_end|>``) and the vision tokens
    (``<|vision_start|><|image_pad|>...<|vision_end|>``) are the caller's."""

    before_image: str
    after_image: str | None

    @property
    def has_image(self) -> bool:
        return self.after_image is not None

    def render(self, image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>") -> str:
        """The whole text with ``image_placeholder`` where the image goes (for traces and tests)."""
        if self.after_image is None:
            return self.before_image
        return self.before_image + image_placeholder + self.after_image


@dataclass(frozen=True)
class CropResult:
    """What :func:`run_crop_tool` gives for a valid call: the call, the mapped box and the crop."""

    call: ToolCall
    mapped: MappedBox
    image: Image.Image
    ok: bool = field(default=True, init=False)


# ----------------------------------------------------------------------------------------- parsing


def has_tool_call(text: str) -> bool:
    """True when the text contains an opening ``<tool_call>`` tag (the turn is a tool turn)."""
    return TOOL_CALL_OPEN in text


def _short(value: Any, limit: int = 40) -> str:
    try:
        s = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError, OverflowError):
        s = repr(type(value).__name__)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _NonFiniteConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteConstant(name)


def _loads(body: str) -> tuple[str, Any, int]:
    """json.loads with NaN/Infinity rejected. Returns (status, value, end) with status "ok",
    "nonfinite", "json" (message in value) or "extra" (trailing data after the first value)."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    stripped = body.strip()
    try:
        value, end = decoder.raw_decode(stripped)
    except _NonFiniteConstant as e:
        return "nonfinite", str(e), 0
    except json.JSONDecodeError as e:
        return "json", f"{e.msg} at character {e.pos}", 0
    except RecursionError:
        return "json", "nesting too deep", 0
    except (ValueError, OverflowError, MemoryError) as e:  # e.g. an integer with > 4300 digits
        return "json", str(e)[:80], 0
    if stripped[end:].strip():
        return "extra", value, end
    return "ok", value, end


def parse_tool_call(text: str, tool_name: str = DEFAULT_TOOL_NAME) -> ToolCall | ToolCallError | None:
    """Parse a Qwen ``<tool_call>{json}</tool_call>`` block from a generated assistant turn.

    Returns ``None`` when the text has no ``<tool_call>`` tag at all: the turn is an answer turn.
    Otherwise returns a :class:`ToolCall` (name and bbox as 4 floats, in the model's coordinate
    convention) or a :class:`ToolCallError` whose ``message`` can be shown to the model.

    Text before the block (e.g. ``<think>...</think>``) and whitespace/newlines inside the tags are
    allowed; text after the closing tag is ignored. Errors: no closing tag; more than one block;
    a body over ``MAX_TOOL_CALL_CHARS``; malformed JSON or several JSON values; NaN/Infinity; a
    non-object; a name other than ``tool_name``; missing/non-object ``arguments``; missing
    ``bbox_2d``; ``bbox_2d`` not a list of exactly 4 numbers (booleans, strings such as "12",
    null, nested lists and non-finite or overflowing numbers are rejected). Extra keys are ignored.

    Only ``json`` is used (no code is evaluated). The function never raises for any ``str`` input;
    a non-str ``text`` is a caller bug and raises TypeError.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_tool_call expects a str, got {type(text).__name__}")
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return None
    hint = _FORMAT_HINT.format(name=tool_name)
    body_start = start + len(TOOL_CALL_OPEN)
    close = text.find(TOOL_CALL_CLOSE, body_start)
    if text.count(TOOL_CALL_OPEN) > 1:
        return ToolCallError(
            "Error: only one tool call per turn is allowed, found "
            f"{text.count(TOOL_CALL_OPEN)} <tool_call> blocks. Call the tool once: {hint}",
            "several_calls",
            text[start:],
        )
    if close < 0:
        return ToolCallError(
            f"Error: the tool call has no closing </tool_call> tag. Use: {hint}",
            "no_closing_tag",
            text[start:],
        )
    end = close + len(TOOL_CALL_CLOSE)
    raw = text[start:end]
    body = text[body_start:close]

    def err(message: str, kind: str) -> ToolCallError:
        return ToolCallError("Error: " + message, kind, raw)

    if len(body) > MAX_TOOL_CALL_CHARS:
        return err(f"the tool call is too long ({len(body)} characters, at most {MAX_TOOL_CALL_CHARS}). Use: {hint}", "too_long")
    if not body.strip():
        return err(f"the tool call is empty. Use: {hint}", "malformed_json")

    status, obj, _ = _loads(body)
    if status == "nonfinite":
        return err(f"the tool call contains {obj}; coordinates must be finite numbers.", "not_finite")
    if status == "json":
        return err(f"the tool call is not valid JSON ({obj}). Use: {hint}", "malformed_json")
    if status == "extra":
        return err(f"the tool call must hold exactly one JSON object, found more after the first. Use: {hint}", "several_objects")
    if not isinstance(obj, dict):
        return err(f"the tool call must be a JSON object, got {_type_name(obj)}. Use: {hint}", "not_an_object")

    name = obj.get("name")
    if name != tool_name:
        if name is None:
            return err(f'the tool call has no "name"; the only tool is "{tool_name}". Use: {hint}', "wrong_name")
        return err(f'unknown tool {_short(name)}; the only tool is "{tool_name}". Use: {hint}', "wrong_name")
    if "arguments" not in obj:
        return err(f'the tool call has no "arguments". Use: {hint}', "missing_arguments")
    args = obj["arguments"]
    if not isinstance(args, dict):
        return err(f'"arguments" must be a JSON object, got {_type_name(args)}. Use: {hint}', "bad_arguments")
    if "bbox_2d" not in args:
        return err(f'"arguments" has no "bbox_2d". Use: {hint}', "missing_bbox")
    bbox = args["bbox_2d"]
    if not isinstance(bbox, list):
        return err(
            f"bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {_type_name(bbox)} {_short(bbox)}.",
            "bbox_not_a_list",
        )
    numbers = _check_numbers(bbox)
    if isinstance(numbers, ToolCallError):
        return ToolCallError(numbers.message, numbers.kind, raw)
    return ToolCall(name=tool_name, bbox=numbers, raw=raw, span=(start, end))


def _check_numbers(bbox: Sequence[Any]) -> tuple[float, float, float, float] | ToolCallError:
    if len(bbox) != 4:
        return ToolCallError(
            f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {len(bbox)} values.", "wrong_arity"
        )
    out = []
    for i, v in enumerate(bbox):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return ToolCallError(
                f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2]; value {i + 1} is "
                f"{_type_name(v)} ({_short(v)}), not a number.",
                "not_a_number",
            )
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            return ToolCallError(
                f"Error: bbox_2d values must be finite numbers; value {i + 1} is {_short(v)}.", "not_finite"
            )
        out.append(f)
    return (out[0], out[1], out[2], out[3])


# ----------------------------------------------------------------------------------------- mapping


def _check_size(size: Sequence[int], what: str) -> tuple[int, int]:
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (width, height), got {size!r}") from None
    if isinstance(w, bool) or isinstance(h, bool) or int(w) != w or int(h) != h or w <= 0 or h <= 0:
        raise ValueError(f"{what} must be two positive integers (width, height), got {size!r}")
    return int(w), int(h)


def _check_convention(convention: str) -> str:
    if convention not in _CONVENTION_RANGE:
        raise ValueError(f"unknown coordinate convention {convention!r}; expected one of {list(CONVENTIONS)}")
    return convention


def to_seen_pixels(
    bbox: Sequence[float], seen_size: tuple[int, int], convention: str
) -> tuple[float, float, float, float]:
    """Convert a box from ``convention`` to seen-image pixel coordinates (no validation)."""
    w, h = _check_size(seen_size, "seen_size")
    rng = _CONVENTION_RANGE[_check_convention(convention)]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if rng is None:
        return (x1, y1, x2, y2)
    # multiply first, then divide: exact for the full-image box (1000 * w / 1000 == w)
    return (x1 * w / rng, y1 * h / rng, x2 * w / rng, y2 * h / rng)


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
) -> MappedBox | ToolCallError:
    """Validate a box in the model's coordinates and map it onto the original image.

    ``seen_size`` and ``original_size`` are (width, height). Steps: convert to seen pixels; reject
    x2 <= x1 or y2 <= y1 (before clamping) and a box with no overlap with the seen image; clamp to
    the seen image; expand a side shorter than ``min_seen_size`` seen pixels to that length around
    its centre (shifted to stay inside; the full side if the image is smaller); reject a long/short
    side ratio above ``max_aspect``; scale by exactly W/w and H/h; take integer pixel bounds (floor
    for x1/y1, ceil for x2/y2, clamped to the image, at least 1 px). A box covering the whole seen
    image maps to exactly (0, 0, W, H). Returns :class:`MappedBox` or :class:`ToolCallError`.
    ``max_aspect`` should not exceed 200 (smart_resize's limit, checked on the original box too).
    """
    w, h = _check_size(seen_size, "seen_size")
    W, H = _check_size(original_size, "original_size")
    _check_convention(convention)
    if min_seen_size < 0 or not math.isfinite(min_seen_size):
        raise ValueError(f"min_seen_size must be a finite number >= 0, got {min_seen_size!r}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect!r}")
    if isinstance(bbox, (str, bytes)):
        return ToolCallError(
            f"Error: bbox_2d must be a list of 4 numbers [x1, y1, x2, y2], got {_type_name(bbox)}.", "bbox_not_a_list"
        )
    numbers = _check_numbers(list(bbox))
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
            f"Error: bbox_2d [{shown}] lies outside the image. " + _range_hint(convention, w, h), "outside"
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

    ox1, ox2 = _pixel_bounds(cx1 * W / w, cx2 * W / w, W)
    oy1, oy2 = _pixel_bounds(cy1 * H / h, cy2 * H / h, H)
    ow, oh = ox2 - ox1, oy2 - oy1
    if max(ow / oh, oh / ow) > MAX_ASPECT_RATIO:
        return ToolCallError(
            f"Error: bbox_2d [{shown}] is too thin (aspect ratio above {MAX_ASPECT_RATIO} in the original "
            "image). Choose a less elongated region.",
            "aspect",
        )
    return MappedBox(
        seen_box=(cx1, cy1, cx2, cy2),
        box=(ox1, oy1, ox2, oy2),
        seen_size=(w, h),
        original_size=(W, H),
        convention=convention,
        clamped=clamped,
        expanded=ex or ey,
    )


def _range_hint(convention: str, w: int, h: int) -> str:
    if convention == "absolute":
        return f"Coordinates are pixels of the {w}x{h} image: 0 <= x <= {w}, 0 <= y <= {h}."
    if convention == "rel1000":
        return "Coordinates are relative to the image, from 0 to 1000."
    return "Coordinates are relative to the image, from 0 to 1."


# ----------------------------------------------------------------------------------------- images


def _resize_to_budget(
    image: Image.Image, width: float, height: float, factor: int, min_pixels: int, max_pixels: int
) -> Image.Image:
    th, tw = smart_resize(max(1, round(height)), max(1, round(width)), factor=factor,
                          min_pixels=min_pixels, max_pixels=max_pixels)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size == (tw, th):
        return image.copy()
    return image.resize((tw, th), Image.Resampling.BICUBIC)


def crop_image(
    original: Image.Image,
    mapped: MappedBox,
    factor: int = 28,
    min_pixels: int = CROP_MIN_PIXELS,
    max_pixels: int = CROP_MAX_PIXELS,
) -> Image.Image:
    """Crop ``mapped.box`` from the original image and resize it (BICUBIC, RGB) to
    ``smart_resize(h, w, factor, min_pixels, max_pixels)``: sides are multiples of ``factor`` and a
    tiny crop is upscaled to at least ``min_pixels`` pixels (default 256*28*28, about 448x448); a
    large one is downscaled to at most ``max_pixels`` (default 1024*28*28, about 896x896)."""
    if tuple(original.size) != tuple(mapped.original_size):
        raise ValueError(
            f"image size {original.size} differs from the size the box was mapped to {mapped.original_size}"
        )
    region = original.crop(mapped.box)
    return _resize_to_budget(region, region.width, region.height, factor, min_pixels, max_pixels)


def first_view(
    image: Image.Image,
    scale: float = FIRST_VIEW_SCALE,
    factor: int = 28,
    min_pixels: int = FIRST_VIEW_MIN_PIXELS,
    max_pixels: int = FIRST_VIEW_MAX_PIXELS,
) -> Image.Image:
    """The low-resolution first view: each side times ``scale`` (BICUBIC), then snapped by smart_resize
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
        image = image.convert("RGB").resize((w, h), Image.BICUBIC)
    return _resize_to_budget(image, image.width, image.height, factor, min_pixels, max_pixels)


def box_coverage(crop_box: Sequence[float] | MappedBox, gt_box: Sequence[float]) -> float:
    """area(crop ∩ gt) / area(gt), both (x1, y1, x2, y2) in original-image coordinates; in [0, 1].
    A MappedBox is taken by its original box. Raises ValueError for a gt box of zero area."""
    if isinstance(crop_box, MappedBox):
        crop_box = crop_box.box
    cx1, cy1, cx2, cy2 = (float(v) for v in crop_box)
    gx1, gy1, gx2, gy2 = (float(v) for v in gt_box)
    gt_area = (gx2 - gx1) * (gy2 - gy1)
    if not (gx2 > gx1 and gy2 > gy1):
        raise ValueError(f"ground-truth box {tuple(gt_box)} has no area (need x1 < x2 and y1 < y2)")
    iw = max(0.0, min(cx2, gx2) - max(cx1, gx1))
    ih = max(0.0, min(cy2, gy2) - max(cy1, gy1))
    return min(1.0, iw * ih / gt_area)


# ----------------------------------------------------------------------------------------- observation


def observation_text(
    ok: bool = True,
    error: str | ToolCallError | None = None,
    *,
    instruction: str = CROP_INSTRUCTION,
    error_instruction: str = ERROR_INSTRUCTION,
) -> Observation:
    """Text of the observation turn.

    Valid call (``ok=True``): ``before_image = "<tool_response>\\n"`` and
    ``after_image = "\\n" + instruction + "\\n</tool_response>"``; the caller puts the crop's vision
    tokens between them. Invalid call (``ok=False``, ``error`` its message or ToolCallError): one
    text ``"<tool_response>\\n" + error + "\\n" + error_instruction + "\\n</tool_response>"`` and
    no image (``after_image`` is None)."""
    if ok:
        if error is not None:
            raise ValueError("observation_text: error must be None when ok=True")
        return Observation(TOOL_RESPONSE_OPEN + "\n", "\n" + instruction + "\n" + TOOL_RESPONSE_CLOSE)
    if error is None:
        raise ValueError("observation_text: ok=False needs an error message")
    message = error.message if isinstance(error, ToolCallError) else str(error)
    parts = [message, error_instruction] if error_instruction else [message]
    return Observation(TOOL_RESPONSE_OPEN + "\n" + "\n".join(parts) + "\n" + TOOL_RESPONSE_CLOSE, None)


def run_crop_tool(
    text: str,
    original: Image.Image,
    seen_size: tuple[int, int],
    convention: str = "absolute",
    tool_name: str = DEFAULT_TOOL_NAME,
    factor: int = 28,
    min_pixels: int = CROP_MIN_PIXELS,
    max_pixels: int = CROP_MAX_PIXELS,
    min_seen_size: float = MIN_SEEN_SIZE,
    max_aspect: float = MAX_BOX_ASPECT,
) -> CropResult | ToolCallError | None:
    """parse_tool_call + map_box + crop_image. None for an answer turn (no ``<tool_call>``)."""
    call = parse_tool_call(text, tool_name)
    if call is None or isinstance(call, ToolCallError):
        return call
    mapped = map_box(call.bbox, seen_size, original.size, convention, min_seen_size, max_aspect)
    if isinstance(mapped, ToolCallError):
        return ToolCallError(mapped.message, mapped.kind, call.raw)
    image = crop_image(original, mapped, factor, min_pixels, max_pixels)
    return CropResult(call, mapped, image)
