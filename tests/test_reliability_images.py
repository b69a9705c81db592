"""Bad and unusual images: each is decoded correctly or refused with a DataError naming file, row and field.

Complements tests/test_data_images.py (modes, truncated files, empty files, non-images, the pixel cap),
which docs/reliability.md also lists. Each test's docstring tag feeds docs/reliability.md
(tools/reliability_table.py).
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from vlmrl.data import DataError, decode_image, fit_to_budget, load_dataset
from vlmrl.rollout import MappedBox, first_view, map_box

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def one_row(tmp_path, data: bytes, name: str):
    """A JSONL dataset whose row 1 holds the image ``name`` (row 0 has none)."""
    (tmp_path / name).write_bytes(data)
    rows = [{"question": "q?", "images": [], "answer": "a"}, {"question": "q?", "images": [name], "answer": "a"}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_one_pixel_image_goes_through_the_whole_image_path():
    """Reliability[images]: a 1x1 image | decoded; the pixel budget upscales it to 2x2 tokens (56x56); the first view and the crop-box mapping work on it"""
    im = decode_image(encode(Image.new("RGB", (1, 1), RED)))
    assert im.size == (1, 1) and im.getpixel((0, 0)) == RED
    assert fit_to_budget(im, 28).size == (56, 56)
    seen = first_view(im, 0.5, 28)
    assert seen.size == (56, 56)
    m = map_box([0, 0, 56, 56], seen.size, im.size, "absolute")
    assert isinstance(m, MappedBox) and m.box == (0, 0, 1, 1)


def test_animated_gif_gives_its_first_frame():
    """Reliability[images]: an animated GIF | its first frame, as RGB"""
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    assert out.mode == "RGB" and out.getpixel((4, 4)) == RED


def test_gif_with_a_transparent_colour_is_composited_on_white():
    """Reliability[images]: a palette GIF with a transparent colour | transparent pixels become white (not black)"""
    im = Image.new("P", (2, 1), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 0), 1)
    out = decode_image(encode(im, "GIF", transparency=0))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == BLUE


# stored pixels = the inverse of what the EXIF orientation tag tells a viewer to do
_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(_STORED))
def test_every_exif_orientation_is_turned_upright(orientation):
    """Reliability[images]: a PNG with any EXIF orientation (2-8: mirrored, rotated, transposed) | turned upright, pixel for pixel"""
    upright = Image.new("RGB", (6, 4), WHITE)
    upright.paste(RED, (0, 0, 2, 1))  # a marker in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORED[orientation])
    out = decode_image(encode(stored, "PNG", exif=exif.tobytes()))
    assert out.size == (6, 4) and out.tobytes() == upright.tobytes()


def test_pixel_cap_replaces_pils_own_limit(monkeypatch):
    """Reliability[images]: a large image with a pixel cap above PIL's own bomb limit (data.max_image_pixels) | the configured cap decides: decoded under it, a DataError naming the cap over it"""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse anything over 2000 pixels
    big = encode(Image.new("1", (300, 200), 1))
    assert decode_image(big, max_pixels=100_000).size == (300, 200)
    with pytest.raises(DataError, match=r"300x200 = 60000 pixels, over the cap of 50000 \(max_image_pixels\)"):
        decode_image(big, max_pixels=50_000)
    with pytest.raises(DataError, match="PIL's"):  # no cap of ours: PIL's limit is the guard
        decode_image(big, max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_too_thin_image_is_refused_with_its_row(tmp_path):
    """Reliability[images]: an image with an aspect ratio above 200 (1x300) | DataError naming file, row and field when the row is read (Qwen-VL cannot take it)"""
    path = one_row(tmp_path, encode(Image.new("RGB", (1, 300), RED)), "thin.png")
    ds = load_dataset(path)
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert str(path) in msg and "row 1" in msg and "field 'images[0]'" in msg and "aspect ratio 300" in msg
    assert ds[0].images == []


@pytest.mark.parametrize("size", [(5, 999), (999, 5), (1, 200), (3, 599)])
def test_thin_image_within_the_limit_survives_the_first_view(size):
    """Reliability[images]: a thin image just within the aspect limit (5x999, 1x200) in tool mode | the 0.5x first view keeps the aspect ratio within 200 (rounding alone would give 2x500), so the prompt builds"""
    im = Image.new("RGB", size, RED)
    for factor in (28, 32):
        seen = first_view(im, 0.5, factor)
        assert seen.width % factor == 0 and seen.height % factor == 0
        assert isinstance(map_box([0, 0, seen.width, seen.height], seen.size, size, "absolute"), MappedBox)


@pytest.mark.parametrize("ref, reason", [
    ("data:image/png;base64,!!not base64!!", "invalid base64"),
    ("data:image/png,rawbytes", "not base64"),
    ("img", "not a regular file"),
])
def test_bad_references_name_the_row(tmp_path, ref, reason):
    """Reliability[images]: a broken data: URI, a data: URI without base64, a directory given as an image path | DataError naming file, row and field"""
    (tmp_path / "img").mkdir()
    rows = [{"question": "q?", "images": [], "answer": "a"}, {"question": "q?", "images": [ref], "answer": "a"}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        load_dataset(path)[1]
    msg = str(e.value)
    assert str(path) in msg and "row 1" in msg and "field 'images[0]'" in msg and reason in msg, msg
