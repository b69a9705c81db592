"""Image decoding (modes, EXIF, bad files, decompression-bomb guard), image references and the pixel budget."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlmrl.data import DataError, decode_image, fit_to_budget, load_dataset, load_image, smart_resize
from vlmrl.data.images import budget_size, image_ref_kind, resolve_path


def png_bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- modes


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    im.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent -> white
    out = decode_image(png_bytes(im))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((1, 1))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_la_composited_on_white():
    im = Image.new("LA", (2, 1), (0, 255))
    im.putpixel((1, 0), (0, 0))
    out = decode_image(png_bytes(im))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_palette_with_transparency():
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 0), 1)
    out = decode_image(png_bytes(im, transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # index 0 is transparent
    assert out.getpixel((1, 0)) == (0, 0, 255)
    plain = decode_image(png_bytes(im))  # no transparency: plain palette colours
    assert plain.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    out = decode_image(png_bytes(im, fmt))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 240 and g < 15 and b < 15


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_scaled_to_8bit(fmt):
    a = np.array([[0, 32896, 65535]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    out = decode_image(png_bytes(im, fmt))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert [decode_image(i32).getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert [decode_image(f).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_grayscale_and_bilevel():
    out = decode_image(png_bytes(Image.new("L", (2, 2), 77)))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)
    out = decode_image(png_bytes(Image.new("1", (2, 2), 1)))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    out = decode_image(png_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# --------------------------------------------------------------------------------------------- bad files


def _row_dataset(tmp_path, data: bytes, name: str = "bad.png"):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / name).write_bytes(data)
    rows = [{"id": "ok", "images": [], "question": "q?", "answer": "a"},
            {"id": "bad", "images": [f"img/{name}"], "question": "q?", "answer": "a"}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _assert_names_place(msg: str, path, row: int, field: str):
    assert str(path) in msg, msg
    assert f"row {row}" in msg, msg
    assert f"'{field}'" in msg, msg


def test_truncated_png_named(tmp_path):
    data = png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))
    path = _row_dataset(tmp_path, data[: len(data) // 2])
    ds = load_dataset(path)  # lazy: loading does not decode
    assert len(ds) == 2 and ds[0].images == []
    with pytest.raises(DataError) as e:
        ds[1]
    _assert_names_place(str(e.value), path, 1, "images[0]")
    assert "truncated" in str(e.value)


def test_truncated_jpeg_named(tmp_path):
    data = png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    path = _row_dataset(tmp_path, data[: len(data) // 2], "bad.jpg")
    with pytest.raises(DataError) as e:
        load_dataset(path)[1]
    _assert_names_place(str(e.value), path, 1, "images[0]")
    assert "truncated" in str(e.value)


def test_zero_byte_file_named(tmp_path):
    path = _row_dataset(tmp_path, b"")
    with pytest.raises(DataError) as e:
        load_dataset(path)[1]
    _assert_names_place(str(e.value), path, 1, "images[0]")
    assert "empty (0 bytes)" in str(e.value)


def test_non_image_with_png_extension_named(tmp_path):
    path = _row_dataset(tmp_path, b"hello, I am a text file\n" * 3)
    with pytest.raises(DataError) as e:
        load_dataset(path)[1]
    _assert_names_place(str(e.value), path, 1, "images[0]")
    assert "not a decodable image" in str(e.value)


def test_decompression_bomb_cap(tmp_path):
    bomb = png_bytes(Image.new("1", (3000, 3000), 0))  # 9 MP in a few kB
    assert len(bomb) < 20_000
    with pytest.raises(DataError, match="decompression-bomb guard.*3000x3000 = 9000000 pixels.*1000000"):
        decode_image(bomb, max_pixels=1_000_000)
    assert decode_image(bomb, max_pixels=10_000_000).size == (3000, 3000)
    path = _row_dataset(tmp_path, bomb)
    with pytest.raises(DataError) as e:
        load_dataset(path, max_image_pixels=1_000_000)[1]
    _assert_names_place(str(e.value), path, 1, "images[0]")
    assert "decompression-bomb" in str(e.value)


def test_decode_image_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        decode_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------------------------- references


def test_ref_kinds(tmp_path):
    data = png_bytes(Image.new("RGB", (3, 3), (1, 2, 3)))
    b64 = base64.b64encode(data).decode()
    assert image_ref_kind(b64) == "base64"
    assert image_ref_kind("data:image/png;base64," + b64) == "data-uri"
    assert image_ref_kind({"bytes": data, "path": "x.png"}) == "struct"
    assert image_ref_kind("img/0001.png") == "path"
    assert image_ref_kind("img/0001") == "path"  # base64 charset but not an image
    assert image_ref_kind("https://example.com/a.png") == "url"
    for ref in (data, b64, "data:image/png;base64," + b64, {"bytes": data, "path": None},
                {"bytes": None, "path": "a.png"}):
        (tmp_path / "a.png").write_bytes(data)
        assert load_image(ref, tmp_path).getpixel((1, 1)) == (1, 2, 3)
    with pytest.raises(DataError, match="URLs are not supported"):
        load_image("https://example.com/a.png", tmp_path)


def test_resolve_path_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    assert resolve_path("img/a.png", root) == (root / "img" / "a.png").resolve()
    assert resolve_path("img/../img/a.png", root).name == "a.png"  # stays inside: fine
    with pytest.raises(DataError, match="escapes the dataset root"):
        resolve_path("../outside.png", root)
    with pytest.raises(DataError, match="absolute"):
        resolve_path(str(tmp_path / "outside.png"), root)
    os.symlink(tmp_path / "outside.png", root / "img" / "link.png")
    with pytest.raises(DataError, match="outside the dataset root"):
        resolve_path("img/link.png", root)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        resolve_path("img/missing.png", root)


# --------------------------------------------------------------------------------------------- pixel budget


@pytest.mark.parametrize(
    "size, fam, lo, hi",
    [((224, 224), 28, None, None), ((500, 300), 28, None, None), ((500, 300), "qwen3_vl", None, None),
     ((1000, 800), "qwen2_5_vl", None, 256 * 28 * 28), ((10, 10), 28, None, None), ((640, 480), 32, 1024, 200_000),
     ((37, 3000), 28, None, 100_000)],
)
def test_fit_to_budget_sizes(size, fam, lo, hi):
    im = Image.new("RGB", size, (10, 200, 30))
    out = fit_to_budget(im, fam, lo, hi)
    factor = {"qwen3_vl": 32, "qwen2_5_vl": 28}.get(fam, fam)
    lo_ = lo if lo is not None else 4 * factor * factor
    hi_ = hi if hi is not None else 16384 * factor * factor
    assert out.width % factor == 0 and out.height % factor == 0
    assert lo_ <= out.width * out.height <= hi_
    h, w = smart_resize(size[1], size[0], factor, lo_, hi_)
    assert out.size == (w, h) == budget_size(size[0], size[1], fam, lo, hi)
    if out.size != im.size:
        assert np.array_equal(np.asarray(out), np.asarray(im.resize((w, h), Image.BICUBIC)))


def test_fit_to_budget_examples():
    assert fit_to_budget(Image.new("RGB", (10, 10)), 28).size == (56, 56)  # min 4 tokens
    im = Image.new("RGB", (224, 224))
    assert fit_to_budget(im, "qwen2_vl") is im  # already fits: unchanged
    assert fit_to_budget(im, "qwen3_vl").size == (224, 224)
    assert fit_to_budget(Image.new("RGB", (448, 448)), 28, max_pixels=112 * 112).size == (112, 112)
    with pytest.raises(ValueError, match="unknown model family"):
        fit_to_budget(im, "llava")


# ---------------------------------------------------------------- benchmark image cells (LazyImage)


def _png(mode="RGB", color=(10, 20, 30)):
    buf = io.BytesIO()
    Image.new(mode, (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_cells_kinds(tmp_path):
    from vlmrl.data.images import image_cells

    png = _png()
    (tmp_path / "im.png").write_bytes(png)
    text = base64.b64encode(png).decode()
    cells = [{"bytes": png, "path": None}, {"bytes": None, "path": "im.png"}, png, "im.png", text,
             "data:image/png;base64," + text, ["im.png", None, text]]
    images = [im for c in cells for im in image_cells(c, "auto", tmp_path, "src")]
    assert len(images) == 8 and all(im().getpixel((0, 0)) == (10, 20, 30) for im in images)
    assert images[3].path == tmp_path / "im.png" and images[1].source == "src"
    assert image_cells(None, "auto", tmp_path, "src") == [] and image_cells("  ", "auto", tmp_path, "src") == []
    assert image_cells(("base64", text), "path", tmp_path, "src")[0]().size == (4, 4)  # a TSV cell
    with pytest.raises(FileNotFoundError, match="src: cannot read image file"):
        image_cells("missing.png", "auto", tmp_path, "src")[0]()
    with pytest.raises(ValueError, match="src: unsupported image value of type int"):
        image_cells(3, "auto", tmp_path, "src")


def test_plain_decoding_drops_alpha_like_lmms_eval():
    # A transparent pixel: plain PIL keeps its colour (alpha dropped), vlmrl's training decode composites on white.
    rgba = _png("RGBA", (10, 20, 30, 0))
    assert decode_image(rgba, plain=True).getpixel((0, 0)) == (10, 20, 30)
    assert decode_image(rgba).getpixel((0, 0)) == (255, 255, 255)
