"""Synthetic "zoom" VQA task: ``vlmrl make-data zoom --out DIR --n N --n-test M --seed S``.

Each image (default 224x224) holds one to four large coloured shapes and one small grey tag with a
tiny symbol (a digit or a letter from a 3x5 bitmap font). Half the questions (``--zoom-fraction``)
are about the large shapes and can be answered from the half-resolution first view; the others ask
for the symbol on the tag, which cannot be read at half resolution: with the default ``emboss``
style the symbol's strokes are drawn with the pixel pattern ``[+1, -3, +3, -1] * 40`` (the third
difference), which PIL's 2x BICUBIC downscale maps exactly to zero, so the half-resolution views of
the same scene with different symbols are byte-identical. See docs/synthetic_zoom.md.

Output: ``DIR/train.jsonl``, ``DIR/test.jsonl`` (vlmrl row format, readable by
:func:`vlmrl.data.load_dataset`), ``DIR/images/{split}-{index:06d}.png``, ``DIR/info.json``.
Everything is a pure function of the seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# 3x5 bitmap font, rows top to bottom.
DIGIT_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
}
LETTER_GLYPHS = {
    "A": ("010", "101", "111", "101", "101"),
    "C": ("011", "100", "100", "100", "011"),
    "E": ("111", "100", "111", "100", "111"),
    "F": ("111", "100", "111", "100", "100"),
    "H": ("101", "101", "111", "101", "101"),
    "L": ("100", "100", "100", "100", "111"),
    "P": ("111", "101", "111", "100", "100"),
    "U": ("101", "101", "101", "101", "111"),
}
GLYPHS = {**DIGIT_GLYPHS, **LETTER_GLYPHS}
DIGITS = tuple(DIGIT_GLYPHS)
LETTERS = tuple(LETTER_GLYPHS)

COLORS = {
    "red": (220, 50, 47),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 190, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUND = (236, 236, 236)

# Tag styles. emboss: every "on" cell of the 3x5 glyph is a 4x2-pixel patch whose rows are
# PLATE + AMPLITUDE * [+1, -3, +3, -1] starting at an odd x; "off" cells are plain plate.
# solid: a plain 3x5-pixel dark glyph on a light plate (blurred, not erased, at half resolution).
EMBOSS_KERNEL = (1, -3, 3, -1)
EMBOSS_AMPLITUDE = 40
DETAIL_STYLES = {
    #          cell w, cell h, plate rgb,        ink rgb
    "emboss": (4, 2, (128, 128, 128), None),
    "solid": (1, 1, (235, 235, 235), (25, 25, 25)),
}
TAG_MARGIN = 2  # plate pixels around the glyph
EDGE_MARGIN = 8  # tag keeps this far from the image border (the bicubic footprint stays inside)

CATEGORIES = {
    # name: (needs_zoom, answer_type, question)
    "big_color": (False, "word", "What color is the large shape?"),
    "big_shape": (False, "choice", "Which shape is the large one?"),
    "big_count": (False, "number", "How many large shapes are in the image?"),
    "tag_digit": (True, "number", "What digit is printed on the small gray tag?"),
    "tag_digit_choice": (True, "choice", "Which digit is printed on the small gray tag?"),
    "tag_letter": (True, "word", "What letter is printed on the small gray tag?"),
    "tag_color": (True, "word", "What color are the stripes on the small gray tag?"),
    "tag_fill": (True, "word", "What color is the small tag?"),
}
# tag_color: the tag's glyph area is striped with the emboss pattern in the colour's channels only
STRIPE_CHANNELS = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}
# --tag-size N: every tag is an N-px square of 1-px vertical stripes in the tag colour's channels (the
# emboss kernel laid every 2 px: interior columns +-4 * STRIPE_UNIT, tapered ends), erased exactly at half
# resolution like the glyph, but covering many vision patches with one phase: much easier to learn to read.
STRIPE_UNIT = 10
# tag_fill (needs --tag-size N): every tag is a plain N-px square of one colour instead. Not erased at half
# resolution, only small: in the first view it covers part of one vision patch, after a crop it covers
# whole patches, where reading its colour is the same skill as reading the large shape's colour.
# corners: the tag sits near one of the 4 corners (coarse location); fixed: always in the bottom-right corner
TAG_LAYOUTS = ("anywhere", "corners", "fixed")
DEFAULT_CATEGORIES = ("big_color", "big_shape", "big_count", "tag_digit", "tag_digit_choice", "tag_letter")
TASKS = ("zoom", "digits")  # digits: real handwritten digits from scikit-learn (vlmrl/data/digits.py)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)


@dataclass(frozen=True)
class ZoomScene:
    """Everything needed to draw one image (kept in ``meta.scene`` so it can be re-rendered)."""

    width: int
    height: int
    shapes: tuple[Shape, ...]
    glyph_xy: tuple[int, int]  # top-left pixel of the glyph
    symbol: str
    style: str = "emboss"
    stripe: str = ""  # tag_color scenes: the stripe colour (the glyph is not drawn)
    tag_size: int = 0  # > 0: the striped area is this many px square (every scene, see --tag-size)
    solid: bool = False  # with tag_size: the square is plain `stripe` colour (tag_fill), not stripes

    @property
    def tag_box(self) -> tuple[int, int, int, int]:
        gw, gh = (self.tag_size, self.tag_size) if self.tag_size else glyph_size(self.style)
        x, y = self.glyph_xy
        return (x - TAG_MARGIN, y - TAG_MARGIN, x + gw + TAG_MARGIN, y + gh + TAG_MARGIN)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shapes"] = [dict(kind=s.kind, color=s.color, box=list(s.box)) for s in self.shapes]
        d["glyph_xy"] = list(self.glyph_xy)
        if not self.stripe:
            del d["stripe"]
        if not self.tag_size:
            del d["tag_size"]
        if not self.solid:
            del d["solid"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ZoomScene":
        return cls(width=int(d["width"]), height=int(d["height"]),
                   shapes=tuple(Shape(s["kind"], s["color"], tuple(s["box"])) for s in d["shapes"]),
                   glyph_xy=tuple(d["glyph_xy"]), symbol=str(d["symbol"]), style=d.get("style", "emboss"),
                   stripe=d.get("stripe", ""), tag_size=int(d.get("tag_size", 0)),
                   solid=bool(d.get("solid", False)))


@dataclass
class ZoomConfig:
    image_size: tuple[int, int] = (224, 224)  # width, height
    zoom_fraction: float = 0.5
    detail_style: str = "emboss"
    categories: tuple[str, ...] = DEFAULT_CATEGORIES  # tag_color only when asked for
    symbols: tuple[str, ...] = ()  # restrict tag symbols to this subset of DIGITS + LETTERS (() = all)
    tag_layout: str = "anywhere"  # anywhere | corners (near one of the 4 corners: an easy box) | fixed
    tag_size: int = 0  # 0: a glyph-sized tag; N: every tag an N-px striped square (tag_color only)

    def __post_init__(self) -> None:
        w, h = self.image_size
        if w % 2 or h % 2:
            raise ValueError(f"image size must be even on both sides (the half-resolution view is exact), got {w}x{h}")
        if min(w, h) < 96:
            raise ValueError(f"image size must be at least 96 px per side, got {w}x{h}")
        if self.detail_style not in DETAIL_STYLES:
            raise ValueError(f"unknown detail style {self.detail_style!r}; expected one of {sorted(DETAIL_STYLES)}")
        if not 0.0 <= self.zoom_fraction <= 1.0:
            raise ValueError(f"zoom_fraction must be in [0, 1], got {self.zoom_fraction}")
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad or not self.categories:
            raise ValueError(f"unknown categories {bad}; expected a non-empty subset of {list(CATEGORIES)}")
        if self.tag_layout not in TAG_LAYOUTS:
            raise ValueError(f"unknown tag layout {self.tag_layout!r}; expected one of {TAG_LAYOUTS}")
        if "tag_color" in self.categories and self.detail_style != "emboss":
            raise ValueError("tag_color questions need the emboss detail style (stripes erased at half resolution)")
        if "tag_fill" in self.categories and not self.tag_size:
            raise ValueError("tag_fill questions need --tag-size (the size of the plain coloured tag)")
        if self.tag_size:
            tag_qs = [c for c in self.categories if CATEGORIES[c][0]]
            if len(tag_qs) > 1 or any(c not in ("tag_color", "tag_fill") for c in tag_qs):
                raise ValueError("--tag-size makes every tag a coloured square: the only tag question is tag_color "
                                 f"(striped) or tag_fill (plain), got {tag_qs}")
            if not 8 <= self.tag_size <= min(w, h) // 4 or self.tag_size % 2:
                raise ValueError(f"tag size must be even and in [8, {min(w, h) // 4}] px, got {self.tag_size}")
        self.symbols = tuple(self.symbols)
        bad = [c for c in self.symbols if c not in GLYPHS]
        if bad:
            raise ValueError(f"unknown symbols {bad}; expected a subset of {''.join(GLYPHS)}")
        zoom = {c for c in self.categories if CATEGORIES[c][0]}
        if self.symbols and "tag_letter" in zoom and not self.pool(LETTERS):
            raise ValueError(f"symbols {''.join(self.symbols)} hold no letter, but tag_letter questions need one")
        if self.symbols and zoom & {"tag_digit", "tag_digit_choice"} and not self.pool(DIGITS):
            raise ValueError(f"symbols {''.join(self.symbols)} hold no digit, but tag_digit questions need one")
        if self.symbols and "tag_digit_choice" in zoom and len(self.pool(DIGITS)) < 4:
            raise ValueError("tag_digit_choice questions need at least 4 digits among the symbols")

    def pool(self, kind: tuple[str, ...]) -> tuple[str, ...]:
        """The symbols of `kind` (DIGITS or LETTERS) this config draws from."""
        return tuple(c for c in kind if not self.symbols or c in self.symbols)


def glyph_size(style: str) -> tuple[int, int]:
    cw, ch, _, _ = DETAIL_STYLES[style]
    return 3 * cw, 5 * ch


# ---------------------------------------------------------------------------------------------------
# drawing


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape) -> None:
    x1, y1, x2, y2 = s.box
    fill = COLORS[s.color]
    if s.kind == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif s.kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif s.kind == "triangle":
        draw.polygon([((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
    elif s.kind == "diamond":
        cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
        draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {s.kind!r}")


def render_scene(scene: ZoomScene) -> Image.Image:
    """Draw a scene into an RGB image (pure function of the scene)."""
    im = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(im)
    for s in scene.shapes:
        _draw_shape(draw, s)
    cw, ch, plate, ink = DETAIL_STYLES[scene.style]
    x1, y1, x2, y2 = scene.tag_box
    draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=plate)
    glyph = GLYPHS[scene.symbol]
    gx, gy = scene.glyph_xy
    if scene.tag_size and scene.solid:
        draw.rectangle((gx, gy, gx + scene.tag_size - 1, gy + scene.tag_size - 1), fill=COLORS[scene.stripe])
        return im
    if scene.style == "solid":
        for r, bits in enumerate(glyph):
            for q, b in enumerate(bits):
                if b == "1":
                    draw.point((gx + q, gy + r), fill=ink)
        return im
    arr = np.asarray(im).astype(np.int16)
    if scene.tag_size:
        _draw_stripes(arr, gx, gy, scene.tag_size, STRIPE_CHANNELS[scene.stripe])
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    patch = EMBOSS_AMPLITUDE * np.asarray(EMBOSS_KERNEL, dtype=np.int16)
    channels = list(STRIPE_CHANNELS[scene.stripe]) if scene.stripe else [0, 1, 2]
    for r, bits in enumerate(glyph):
        for q, b in enumerate(bits):
            if b == "1" or scene.stripe:
                y0, x0 = gy + r * ch, gx + q * cw
                for c in channels:
                    arr[y0:y0 + ch, x0:x0 + cw, c] += patch[None, :]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def _draw_stripes(arr: np.ndarray, x: int, y: int, size: int, channels) -> None:
    """Add the emboss kernel, starting every 2 px over `size` columns from x (odd), to the channels.
    Each copy is erased by a 2x BICUBIC downscale, so their sum (1-px stripes) is too."""
    row = np.zeros(size, dtype=np.int16)
    for k in range(0, size - 3, 2):
        row[k:k + 4] += np.asarray(EMBOSS_KERNEL, dtype=np.int16) * STRIPE_UNIT
    for c in channels:
        arr[y:y + size, x:x + size, c] += row[None, :]


def half_view(image: Image.Image) -> Image.Image:
    """The half-resolution first view the task is designed against: each side halved, BICUBIC."""
    return image.resize((image.width // 2, image.height // 2), Image.BICUBIC)


# ---------------------------------------------------------------------------------------------------
# sampling


def _overlaps(a, b, gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _tag_spots(rng: random.Random, w: int, h: int, gw: int, gh: int, layout: str):
    """Candidate glyph positions: uniform anywhere, near a corner (a random corner, jittered), or fixed
    (the bottom-right corner)."""
    lo_x, hi_x = EDGE_MARGIN + TAG_MARGIN, w - EDGE_MARGIN - TAG_MARGIN - gw
    lo_y, hi_y = EDGE_MARGIN + TAG_MARGIN, h - EDGE_MARGIN - TAG_MARGIN - gh
    for _ in range(200):
        if layout == "fixed":
            gx, gy = hi_x, hi_y
        elif layout == "corners":
            jx, jy = rng.randint(0, max(0, w // 8 - EDGE_MARGIN)), rng.randint(0, max(0, h // 8 - EDGE_MARGIN))
            gx = lo_x + jx if rng.random() < 0.5 else hi_x - jx
            gy = lo_y + jy if rng.random() < 0.5 else hi_y - jy
        else:
            gx, gy = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
        yield gx, gy


def _sample_layout(rng: random.Random, w: int, h: int, n_shapes: int, style: str, layout: str = "anywhere",
                   tag_size: int = 0):
    m = min(w, h)
    if n_shapes == 1:
        lo, hi = int(0.30 * m), int(0.45 * m)
    else:
        lo, hi = int(0.17 * m), int(0.25 * m)
    gw, gh = (tag_size, tag_size) if tag_size else glyph_size(style)
    tw, th = gw + 2 * TAG_MARGIN, gh + 2 * TAG_MARGIN
    for _ in range(100):
        boxes = []
        for _ in range(n_shapes):
            for _ in range(100):
                size = rng.randint(lo, hi)
                x = rng.randint(4, w - size - 4)
                y = rng.randint(4, h - size - 4)
                box = (x, y, x + size, y + size)
                if not any(_overlaps(box, b, 6) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) != n_shapes:
            continue
        for gx, gy in _tag_spots(rng, w, h, gw, gh, layout):
            if style == "emboss" and gx % 2 == 0:
                gx += 1 if gx + 1 <= w - EDGE_MARGIN - TAG_MARGIN - gw else -1
            tag = (gx - TAG_MARGIN, gy - TAG_MARGIN, gx - TAG_MARGIN + tw, gy - TAG_MARGIN + th)
            if not any(_overlaps(tag, b, 6) for b in boxes):
                return boxes, (gx, gy)
    raise RuntimeError(f"could not place {n_shapes} shapes and a tag in a {w}x{h} image")


def make_zoom_sample(seed: int, index: int, split: str = "train", config: ZoomConfig | None = None):
    """(image, row) for one sample. ``row`` is the JSONL row without ``images`` (the writer adds it)."""
    cfg = config or ZoomConfig()
    rng = random.Random(f"vlmrl-zoom:{seed}:{split}:{index}")
    w, h = cfg.image_size
    zoom_cats = [c for c in cfg.categories if CATEGORIES[c][0]]
    low_cats = [c for c in cfg.categories if not CATEGORIES[c][0]]
    want_zoom = rng.random() < cfg.zoom_fraction
    pool = (zoom_cats if want_zoom else low_cats) or (low_cats or zoom_cats)
    cat = rng.choice(pool)
    needs_zoom, answer_type, question = CATEGORIES[cat]

    if cat == "big_count":
        n_shapes = rng.randint(1, 4)
    elif cat in ("big_color", "big_shape"):
        n_shapes = 1
    else:
        n_shapes = rng.randint(1, 3)
    boxes, glyph_xy = _sample_layout(rng, w, h, n_shapes, cfg.detail_style, cfg.tag_layout, cfg.tag_size)
    shapes = tuple(Shape(rng.choice(SHAPES), rng.choice(sorted(COLORS)), box) for box in boxes)
    if cat == "tag_letter":
        symbol = rng.choice(cfg.pool(LETTERS))
    elif cat in ("tag_digit", "tag_digit_choice"):
        symbol = rng.choice(cfg.pool(DIGITS))
    else:
        symbol = rng.choice(cfg.pool(DIGITS + LETTERS))
    stripe = rng.choice(sorted(STRIPE_CHANNELS)) if cat == "tag_color" or cfg.tag_size else ""
    scene = ZoomScene(w, h, shapes, glyph_xy, symbol, cfg.detail_style, stripe, cfg.tag_size,
                      solid="tag_fill" in cfg.categories)

    choices = None
    if cat == "big_color":
        answer, gt = shapes[0].color, [shapes[0].box]
    elif cat == "big_shape":
        choices = list(SHAPES)
        rng.shuffle(choices)
        answer, gt = "ABCD"[choices.index(shapes[0].kind)], [shapes[0].box]
    elif cat == "big_count":
        answer, gt = str(n_shapes), [s.box for s in shapes]
    elif cat == "tag_digit_choice":
        choices = rng.sample([d for d in cfg.pool(DIGITS) if d != symbol], 3) + [symbol]
        rng.shuffle(choices)
        answer, gt = "ABCD"[choices.index(symbol)], [scene.tag_box]
    elif cat in ("tag_color", "tag_fill"):
        answer, gt = stripe, [scene.tag_box]
    else:  # tag_digit, tag_letter
        answer, gt = symbol, [scene.tag_box]

    row: dict[str, Any] = {
        "id": f"zoom-{split}-{index:06d}",
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
    }
    if choices is not None:
        row["choices"] = choices
    row["meta"] = {
        "category": cat,
        "needs_zoom": needs_zoom,
        "gt_boxes": [list(b) for b in gt],
        "image_size": [w, h],
        "detail_style": cfg.detail_style,
        "tag_box": list(scene.tag_box),
        "scene": scene.to_dict(),
    }
    return render_scene(scene), row


def dataset_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """The folder a generated dataset is written to (with its ``images/``); FileExistsError if it already holds a
    dataset's files and `overwrite` is not set."""
    out = Path(out_dir)
    existing = [p for p in ("train.jsonl", "test.jsonl", "info.json") if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def make_zoom_dataset(out_dir: str | Path, n: int = 200, n_test: int = 50, seed: int = 0,
                      config: ZoomConfig | None = None, *, overwrite: bool = False) -> dict:
    """Write ``train.jsonl``, ``test.jsonl``, ``images/`` and ``info.json`` under ``out_dir``; returns
    the info dict (arguments and per-split category counts)."""
    cfg = config or ZoomConfig()
    if n < 0 or n_test < 0:
        raise ValueError(f"sample counts must be >= 0, got n={n}, n_test={n_test}")
    out = dataset_dir(out_dir, overwrite)
    counts: dict[str, dict[str, int]] = {}
    for split, count in (("train", n), ("test", n_test)):
        counts[split] = {c: 0 for c in cfg.categories}
        lines = []
        for i in range(count):
            image, row = make_zoom_sample(seed, i, split, cfg)
            rel = f"images/{split}-{i:06d}.png"
            image.save(out / rel, format="PNG")
            row = {"id": row["id"], "images": [rel], **{k: v for k, v in row.items() if k != "id"}}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            counts[split][row["meta"]["category"]] += 1
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    info = {
        "task": "zoom",
        "seed": seed,
        "n": n,
        "n_test": n_test,
        "image_size": list(cfg.image_size),
        "zoom_fraction": cfg.zoom_fraction,
        "detail_style": cfg.detail_style,
        "symbols": "".join(cfg.pool(DIGITS + LETTERS)),
        "tag_layout": cfg.tag_layout,
        **({"tag_size": cfg.tag_size} if cfg.tag_size else {}),
        "categories": {c: {"needs_zoom": CATEGORIES[c][0], "answer_type": CATEGORIES[c][1],
                           "question": CATEGORIES[c][2]} for c in cfg.categories},
        "counts": counts,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info


# ---------------------------------------------------------------------------------------------------
# CLI: vlmrl make-data


def _parse_size(text: str) -> tuple[int, int]:
    try:
        if "x" in text.lower():
            a, b = text.lower().split("x", 1)
            return int(a), int(b)
        v = int(text)
        return v, v
    except ValueError:
        raise ValueError(f"--image-size must be N or WxH (e.g. 224 or 256x192), got {text!r}") from None


def add_args(parser) -> None:
    parser.add_argument("kind", help=f"task kind: {', '.join(TASKS)}")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=None, help="number of train samples (default 200; digits 600)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="number of held-out test samples (default 50; digits 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed gives byte-identical files")
    parser.add_argument("--image-size", default=None,
                        help="image size N or WxH, even sides (default 224; digits: N, default 112)")
    parser.add_argument("--zoom-fraction", type=float, default=0.5,
                        help="fraction of questions about the tiny tag (need zoom); default 0.5")
    parser.add_argument("--detail-style", default="emboss", choices=sorted(DETAIL_STYLES),
                        help="how the tag symbol is drawn: emboss (erased exactly at half resolution, default) "
                             "or solid (a plain tiny glyph, only blurred)")
    parser.add_argument("--categories", default=None,
                        help=f"comma-separated subset of question kinds ({', '.join(CATEGORIES)}; default: all but "
                             "tag_color; digits: digit, parity, greater, default digit,parity)")
    parser.add_argument("--source", default=None,
                        help="digits only: scikit-learn's digits.csv.gz or a scikit_learn-*.whl (default: the "
                             "installed scikit-learn's copy)")
    parser.add_argument("--symbols", default="",
                        help="restrict the tag symbols to these characters, e.g. 0147 (default: all digits and "
                             f"letters {''.join(GLYPHS)})")
    parser.add_argument("--tag-layout", default="anywhere", choices=TAG_LAYOUTS,
                        help="where the tag goes: anywhere (default), near one of the 4 corners, or fixed "
                             "(always the bottom-right corner: the box to crop never changes)")
    parser.add_argument("--tag-size", type=int, default=0,
                        help="N > 0: every tag is an N-px square of 1-px stripes in the tag colour (erased at half "
                             "resolution, easy to read after a crop; tag_color questions) or of plain colour "
                             "(tag_fill questions); then that is the only tag question")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def _usage_error(message: str) -> Exception:
    """A ``vlmrl.cli.UsageError`` that is also a ValueError, so that ``python -m vlmrl.cli`` (where the
    running module is ``__main__``, not ``vlmrl.cli``) still prints it without a traceback."""
    from vlmrl.cli import UsageError

    class MakeDataUsageError(UsageError, ValueError):
        pass

    return MakeDataUsageError(message)


def run(args) -> int:
    if args.kind not in TASKS:
        raise _usage_error(f"unknown task kind {args.kind!r}; available: {', '.join(TASKS)}")
    if args.kind == "digits":
        return _run_digits(args)
    if args.source:
        raise _usage_error("--source is for make-data digits")
    args.n = 200 if args.n is None else args.n
    args.n_test = 50 if args.n_test is None else args.n_test
    try:
        size = _parse_size(args.image_size or "224")
        cats = tuple(c.strip() for c in args.categories.split(",") if c.strip()) if args.categories else DEFAULT_CATEGORIES
        syms = tuple(c for c in args.symbols.replace(",", "").upper() if not c.isspace())
        cfg = ZoomConfig(image_size=size, zoom_fraction=args.zoom_fraction, detail_style=args.detail_style,
                         categories=cats, symbols=syms, tag_layout=args.tag_layout, tag_size=args.tag_size)
        info = make_zoom_dataset(args.out, n=args.n, n_test=args.n_test, seed=args.seed, config=cfg,
                                 overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise _usage_error(str(e)) from None
    print(f"wrote {info['n']} train and {info['n_test']} test samples ({size[0]}x{size[1]}, "
          f"{', '.join(cfg.categories)}) to {args.out}: train.jsonl, test.jsonl, images/, info.json")
    return 0


def _run_digits(args) -> int:
    from vlmrl.data.digits import DEFAULT_KINDS, make_digits_dataset

    try:
        kinds = tuple(c.strip() for c in args.categories.split(",") if c.strip()) if args.categories else DEFAULT_KINDS
        size = int(args.image_size) if args.image_size else 112
        info = make_digits_dataset(args.out, n=600 if args.n is None else args.n,
                                   n_test=200 if args.n_test is None else args.n_test, seed=args.seed, kinds=kinds,
                                   image_size=size, source=args.source, overwrite=args.overwrite)
    except FileNotFoundError:
        raise
    except (ValueError, FileExistsError) as e:
        raise _usage_error(str(e)) from None
    print(f"wrote {info['n']} train and {info['n_test']} test digits ({size}x{size}, {', '.join(kinds)}) from "
          f"{info['source']} to {args.out}: train.jsonl, test.jsonl, images/, info.json")
    for split in ("train", "test"):  # the balanced answers (vlmrl.data.digits.plan_split)
        c = info["counts"][split]
        parts = [f"{k} " + "/".join(f"{a} {c[k].get(a, 0)}" for a in ans) for k, ans in
                 (("greater", ("A", "B")), ("parity", ("even", "odd"))) if k in c]
        if parts:
            print(f"  {split}: " + ", ".join(parts))
    return 0
