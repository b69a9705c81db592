"""Image decoding, dataset image references, and the Qwen-VL pixel budget.

- :func:`decode_image` turns bytes / a file path / a PIL image into an RGB image: EXIF orientation is
  applied; alpha (RGBA, LA, PA, palette transparency) is composited on white; CMYK, grayscale and
  16/32-bit integer or float images are converted (high bit depths scaled to 8 bits). Images over a
  pixel cap are refused before their pixels are decoded (decompression-bomb guard). Empty, truncated
  and non-image files give a :class:`~vlmrl.data.sample.DataError` that names where they came from.
- :func:`load_image` resolves a dataset image reference: the Hugging Face ``Image`` struct
  ``{"bytes": ..., "path": ...}``, raw bytes, a base64 string (or ``data:image/...;base64,`` URI), or
  a path relative to the dataset root. Paths that leave the root (``..``, absolute, a symlink that
  resolves outside) are refused.
- :func:`image_cells` turns one image cell of a benchmark table (bytes, base64 text, a data URI, a path,
  an HF image dict, or a list of them) into :class:`LazyImage` s, read and decoded only when called, with
  plain PIL as lmms-eval and VLMEvalKit do (``decode_image(..., plain=True)``).
- :func:`check_aspect_ratio` refuses an image whose sides differ by more than 200x (no Qwen-VL takes it).
- :func:`fit_to_budget` resizes (BICUBIC, RGB) to the ``smart_resize`` size for a family or factor: the one
  resizing path (data budgets, the tool mode's first view and crops).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .sample import Where
from .vision import MAX_ASPECT_RATIO, image_factor, smart_resize

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
"""Default decompression-bomb cap (pixels); recipes set it with ``data.max_image_pixels``. While a
cap is given it replaces PIL's own ``PIL.Image.MAX_IMAGE_PIXELS`` check (so a cap above PIL's ~179 MP
works); with ``max_pixels=None`` PIL's own check is the only one."""

IMAGE_TOKENS_MIN = 4
IMAGE_TOKENS_MAX = 16384

_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"RIFF",  # WEBP (RIFF....WEBP)
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                 Image.DecompressionBombError)
"""What PIL raises on a bad image file (its plugins raise TypeError / KeyError on some corrupt TIFFs);
callers that decode with PIL directly catch these."""
_B64_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def _alpha_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float single-channel images -> 8-bit RGB.

    Integer data: 16-bit modes (I;16*) are scaled by 255/65535; mode I is scaled by 255/65535 when its
    values fit 16 bits (16-bit PNGs decode to I in some PIL versions), else by its maximum.
    Float data (F): values in [0, 1] are scaled by 255, others clipped to [0, 255]."""
    arr = np.asarray(im)
    if im.mode == "F":
        a = arr.astype(np.float64)
        finite = a[np.isfinite(a)]
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            a = a * 255.0
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    else:
        a = arr.astype(np.int64)
        lo = int(a.min()) if a.size else 0
        hi = int(a.max()) if a.size else 0
        if im.mode.startswith("I;16") or (lo >= 0 and hi <= 65535):
            out = ((a * 255 + 32767) // 65535).clip(0, 255).astype(np.uint8)
        else:
            a = a - min(lo, 0)
            top = max(int(a.max()), 1)
            out = ((a * 255 + top // 2) // top).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Return an RGB copy of a loaded PIL image, with EXIF orientation applied and transparency
    composited on white. Handles 1, L, P (with or without transparency), LA, PA, RGBA, RGBa, La, CMYK,
    YCbCr, LAB, HSV, I;16*, I, F."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block is not worth refusing the image for
        pass
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode == "P":
        if "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA":
            return _alpha_on_white(im)
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _alpha_on_white(im)
    if mode in ("L", "1") and "transparency" in im.info:
        return _alpha_on_white(im)
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(im)
    return im.convert("RGB")


def decode_image(src: Any, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, where: Any = None,
                 plain: bool = False) -> Image.Image:
    """Decode ``src`` (bytes-like, a file path, or a PIL image) into an RGB PIL image.

    ``max_pixels`` (None: no cap beyond PIL's own) refuses images whose header declares more pixels,
    before decoding them. ``where`` (a :class:`~vlmrl.data.sample.Where` or text) prefixes error
    messages. ``plain``: PIL's own ``convert("RGB")`` instead of :func:`to_rgb` (no EXIF rotation, alpha
    dropped), as lmms-eval and VLMEvalKit read benchmark images. Raises ``DataError`` (a ValueError) for
    empty, truncated, undecodable and oversized images, ``FileNotFoundError`` for a missing path."""
    w = where if isinstance(where, Where) else Where(file=where)
    if isinstance(src, Image.Image):
        _check_pixels(src.size, max_pixels, w)
        src.load()
        return src.convert("RGB") if plain else to_rgb(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            if not path.is_file():
                raise w.not_found(f"image file not found: {path}")
            data = path.read_bytes()
        except (OSError, ValueError) as e:  # unreadable, a name too long, a NUL byte
            if isinstance(e, FileNotFoundError) and not e.errno:
                raise  # ours, from w.not_found
            raise w.error(f"cannot read image file {str(path)[:200]!r}: {getattr(e, 'strerror', None) or e}") from None
        name = str(path)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        name = "image bytes"
    else:
        raise w.error(f"cannot decode an image from a {type(src).__name__}")
    if not data:
        raise w.error(f"{name} is empty (0 bytes)")
    with warnings.catch_warnings(), _pil_cap(max_pixels):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise w.error(f"decompression-bomb guard (PIL's): {e}; set a cap of your own with "
                          "max_pixels (data.max_image_pixels in a recipe)") from None
        except Image.UnidentifiedImageError:
            raise w.error(
                f"{name} is not a decodable image ({len(data)} bytes, starts with {data[:16]!r})"
            ) from None
        except DECODE_ERRORS as e:
            raise w.error(f"{name} could not be decoded ({len(data)} bytes): {e}") from None
        _check_pixels(im.size, max_pixels, w)
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
        except DECODE_ERRORS as e:
            raise w.error(f"{name} could not be decoded (corrupt or truncated, {len(data)} bytes): {e}") from None
    try:
        return im.convert("RGB") if plain else to_rgb(im)
    except DECODE_ERRORS as e:
        raise w.error(f"{name} (mode {im.mode}) could not be converted to RGB: {e}") from None


@contextmanager
def _pil_cap(max_pixels: int | None):
    """While decoding with our own cap (checked on the header size, before any pixel is decoded), turn
    PIL's fixed-size guard off so that the cap alone decides; ``None`` leaves PIL's guard on."""
    if max_pixels is None:
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_aspect_ratio(size: tuple[int, int], where: Any = None) -> None:
    """Refuse an image no Qwen-VL model can take: a long/short side ratio above ``MAX_ASPECT_RATIO``
    (200, smart_resize's limit), with a DataError naming where the image came from."""
    w = where if isinstance(where, Where) else Where(file=where)
    width, height = size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise w.error(f"image is {width}x{height}: its aspect ratio {max(width, height) / min(width, height):.0f} "
                      f"is above {MAX_ASPECT_RATIO}, which Qwen-VL models cannot take")


def _check_pixels(size: tuple[int, int], max_pixels: int | None, w: Where) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise w.error(f"image has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise w.error(
            f"decompression-bomb guard: image is {width}x{height} = {width * height} pixels, over the cap of "
            f"{max_pixels} (max_image_pixels)"
        )


# ---------------------------------------------------------------------------------------------------
# dataset image references


def _is_image_base64(s: str) -> bool:
    """Whether ``s`` looks like base64 of an image file: base64 characters only, and its first bytes
    decode to a known image magic number (so a relative path is never mistaken for base64)."""
    if len(s) < 16 or not _B64_RE.match(s):
        return False
    head = s[:24]
    try:
        raw = base64.b64decode(head + "=" * (-len(head) % 4), altchars=b"-_" if ("-" in s or "_" in s) else None)
    except (binascii.Error, ValueError):
        return False
    return any(raw.startswith(m) for m in _MAGIC)


def _b64decode(s: str, w: Where) -> bytes:
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_" if ("-" in s or "_" in s) else None,
                                validate=True)
    except (binascii.Error, ValueError) as e:
        raise w.error(f"invalid base64 image data: {e}") from None


def image_ref_kind(ref: Any) -> str:
    """Classify a dataset image reference: "pil", "bytes", "struct" (HF Image dict), "base64",
    "data-uri", "url" or "path"."""
    if isinstance(ref, Image.Image):
        return "pil"
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(ref, dict):
        return "struct"
    if isinstance(ref, str):
        s = ref.strip()
        if s.startswith("data:"):
            return "data-uri"
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) and not s.startswith("file://"):
            return "url"
        if _is_image_base64("".join(s.split())):
            return "base64"
        return "path"
    if isinstance(ref, os.PathLike):
        return "path"
    return type(ref).__name__


def resolve_path(rel: str | os.PathLike, root: str | os.PathLike, where: Any = None, *, must_exist: bool = True) -> Path:
    """Resolve a dataset-relative path under ``root``. Refuses absolute paths, paths that leave the root
    lexically (``../``) and paths whose real location (symlinks resolved) is outside the root."""
    w = where if isinstance(where, Where) else Where(file=where)
    s = os.fspath(rel)
    if s.startswith("file://"):
        s = s[len("file://"):]
    if not s:
        raise w.error("image path is empty")
    if "\x00" in s:
        raise w.error(f"image path {s[:80]!r} contains a NUL byte")
    if os.path.isabs(s) or re.match(r"^[a-zA-Z]:[\\/]", s) or s.startswith("\\"):
        raise w.error(f"image path {s!r} is absolute; paths must be relative to the dataset root {root}")
    root_abs = Path(os.path.abspath(root))
    lexical = Path(os.path.normpath(root_abs / s))
    if lexical != root_abs and root_abs not in lexical.parents:
        raise w.error(f"image path {s!r} escapes the dataset root {root_abs}")
    try:
        root_real = Path(os.path.realpath(root_abs))
        real = Path(os.path.realpath(lexical))
        if real != root_real and root_real not in real.parents:
            raise w.error(f"image path {s!r} resolves to {real}, outside the dataset root {root_real} (symlink)")
        if must_exist and not real.is_file():
            if lexical.is_symlink() or (lexical.exists() and not real.is_file()):
                raise w.error(f"image path {s!r} is not a regular file")
            raise w.not_found(f"image file not found: {lexical}")
    except OSError as e:  # e.g. a name too long for the file system
        if isinstance(e, FileNotFoundError) and not e.errno:
            raise  # ours, from w.not_found
        raise w.error(f"image path {s[:80]!r} cannot be used: {e.strerror or e}") from None
    return real


def check_image_ref(ref: Any, root: str | os.PathLike | None, where: Any = None) -> None:
    """Cheap load-time check of a reference (no decoding): its type, and for paths that the file is
    inside the root and exists."""
    w = where if isinstance(where, Where) else Where(file=where)
    kind = image_ref_kind(ref)
    if kind == "struct":
        if ref.get("bytes") is not None:
            if not isinstance(ref["bytes"], (bytes, bytearray, memoryview, str)):
                raise w.error(f"image struct 'bytes' must be bytes, got {type(ref['bytes']).__name__}")
            return
        if ref.get("path"):
            return check_image_ref(ref["path"], root, w)
        raise w.error("image struct has neither 'bytes' nor 'path'")
    if kind == "url":
        raise w.error(f"image URLs are not supported (no network at run time): {ref[:80]!r}; download the file")
    if kind == "path":
        if root is None:
            raise w.error("image is a path but the dataset has no root directory")
        resolve_path(ref, root, w)
        return
    if kind not in ("pil", "bytes", "base64", "data-uri"):
        raise w.error(f"image must be an image struct, bytes, base64 text or a relative path, got {kind}")


def load_image(ref: Any, root: str | os.PathLike | None = None, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
               where: Any = None) -> Image.Image:
    """Decode one dataset image reference (see module doc) into an RGB PIL image."""
    w = where if isinstance(where, Where) else Where(file=where)
    kind = image_ref_kind(ref)
    if kind == "pil" or kind == "bytes":
        return decode_image(ref, max_pixels=max_pixels, where=w)
    if kind == "struct":
        b = ref.get("bytes")
        if b is not None:
            if isinstance(b, str):
                return load_image(b, root, max_pixels=max_pixels, where=w)
            return decode_image(b, max_pixels=max_pixels, where=w)
        if ref.get("path"):
            return load_image(ref["path"], root, max_pixels=max_pixels, where=w)
        raise w.error("image struct has neither 'bytes' nor 'path'")
    if kind == "data-uri":
        head, _, payload = ref.strip().partition(",")
        if ";base64" not in head:
            raise w.error(f"data URI is not base64 ({head[:40]!r})")
        data = _b64decode("".join(payload.split()), w)
        return decode_image(data, max_pixels=max_pixels, where=w)
    if kind == "base64":
        return decode_image(_b64decode("".join(ref.split()), w), max_pixels=max_pixels, where=w)
    if kind == "url":
        raise w.error(f"image URLs are not supported (no network at run time): {ref[:80]!r}; download the file")
    if kind == "path":
        if root is None:
            raise w.error("image is a path but the dataset has no root directory")
        return decode_image(resolve_path(ref, root, w), max_pixels=max_pixels, where=w)
    raise w.error(f"image must be an image struct, bytes, base64 text or a relative path, got {kind}")


# ---------------------------------------------------------------------------------------------------
# benchmark image cells

IMAGE_KINDS = ("auto", "hf_image", "base64", "path", "bytes")
"""What a benchmark task's image column holds (``data.image_kind``); auto: told apart per cell."""
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class LazyImage:
    """One image of a benchmark document, read and decoded only when called.

    ``img()`` returns an RGB ``PIL.Image`` (plain PIL decoding, PIL's own pixel limit);
    ``img.read_bytes()`` the encoded file bytes; ``img.source`` says where it comes from (for messages and
    traces); ``img.path`` is the image file for images stored as files.
    """

    __slots__ = ("_read", "source", "path")

    def __init__(self, read, source: str, path: Path | None = None):
        self._read = read
        self.source = source
        self.path = path

    def read_bytes(self) -> bytes:
        return self._read()

    def __call__(self) -> Image.Image:
        return decode_image(self.read_bytes(), max_pixels=None, where=self.source, plain=True)

    def __repr__(self) -> str:
        return f"LazyImage({self.source})"


def _file_reader(path: Path, source: str):
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"{source}: cannot read image file {path} ({e.strerror})") from None

    return read


def _base64_reader(value: str, source: str):
    def read() -> bytes:
        try:  # lenient, as VLMEvalKit's TSVs need (line breaks and padding vary)
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{source}: image field is not valid base64 ({e})") from None

    return read


def _looks_like_path(s: str) -> bool:
    return len(s) < 1024 and ("/" in s or "\\" in s or s.lower().endswith(_IMAGE_EXTS))


def _is_missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and cell != cell)


def image_cells(cell: Any, kind: str, root: Path, source: str) -> list[LazyImage]:
    """LazyImages for one image cell of a benchmark table: an HF image dict, bytes, base64 text (or a
    ``data:`` URI), a path relative to ``root``, or a list of them; ``("base64", text)`` is a TSV cell.
    ``kind`` (:data:`IMAGE_KINDS`) says how to read text: auto/hf_image tell base64 from a path per cell."""
    if isinstance(cell, tuple) and len(cell) == 2 and cell[0] == "base64":  # TSV cell
        kind, cell = "base64", cell[1]
    if _is_missing(cell):
        return []
    if isinstance(cell, (list, tuple)):
        out = []
        for k, c in enumerate(cell):
            out.extend(image_cells(c, kind, root, f"{source}[{k}]"))
        return out
    if isinstance(cell, dict):
        data, p = cell.get("bytes"), cell.get("path")
        if data:
            return [LazyImage(lambda d=bytes(data): d, source)]
        if p:
            return [LazyImage(_file_reader(root / p, source), source, root / p)]
        return []
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return [LazyImage(lambda d=bytes(cell): d, source)]
    if isinstance(cell, str):
        if not cell.strip():
            return []
        if kind in ("auto", "hf_image") and cell.lstrip().startswith("data:"):
            head, _, payload = cell.strip().partition(",")
            if ";base64" not in head:
                raise ValueError(f"{source}: data URI is not base64 ({head[:40]!r})")
            return [LazyImage(_base64_reader(payload, source), source)]
        if kind == "path" or (kind in ("auto", "hf_image") and _looks_like_path(cell)
                              and not _is_image_base64("".join(cell.split()))):
            p = root / cell
            return [LazyImage(_file_reader(p, source), source, p)]
        return [LazyImage(_base64_reader(cell, source), source)]
    raise ValueError(f"{source}: unsupported image value of type {type(cell).__name__}")


# ---------------------------------------------------------------------------------------------------
# pixel budget


def budget_size(width: int, height: int, family_or_factor: str | int = 28, min_pixels: int | None = None,
                max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) that :func:`fit_to_budget` produces. Defaults follow qwen_vl_utils:
    ``min_pixels = 4 * factor**2``, ``max_pixels = 16384 * factor**2``."""
    factor = image_factor(family_or_factor) if isinstance(family_or_factor, str) else int(family_or_factor)
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    min_pixels = IMAGE_TOKENS_MIN * factor * factor if min_pixels is None else int(min_pixels)
    max_pixels = IMAGE_TOKENS_MAX * factor * factor if max_pixels is None else int(max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return w, h


RESAMPLE_FILTERS = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}  # rollout.resample (AdaptVision: lanczos)


def resample_filter(name: str) -> int:
    """The PIL filter of a `rollout.resample` name; ValueError naming the choices otherwise."""
    try:
        return RESAMPLE_FILTERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {name!r}") from None


def fit_to_budget(image: Image.Image, family_or_factor: str | int = 28, min_pixels: int | None = None,
                  max_pixels: int | None = None, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize ``image`` (BICUBIC, RGB) to its smart_resize size: both sides multiples of the factor (28 for
    Qwen2/2.5-VL, 32 for Qwen3-VL; pass the family name or the number), pixel count within
    [min_pixels, max_pixels]. The one resizing path for vision-tower inputs: dataset images, the tool
    mode's first view and crops (vlmrl/rollout/tools/crop.py) all come through here. Returns the image
    itself when it is RGB and already has that size."""
    w, h = budget_size(image.width, image.height, family_or_factor, min_pixels, max_pixels)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if (w, h) == image.size:
        return image
    return image.resize((w, h), resample)
