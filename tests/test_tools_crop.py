"""The crop tool without a model: coordinate conventions, box mapping (also through an earlier crop's box),
cropping, the first view, box coverage, observation text and the tool's run."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmrl.data.vision import smart_resize
from vlmrl.rollout import (
    CROP_INSTRUCTION,
    CROP_MIN_PIXELS,
    ERROR_INSTRUCTION,
    CropTool,
    MappedBox,
    ToolCallError,
    ToolContext,
    ToolImage,
    box_coverage,
    crop_image,
    default_convention,
    first_view,
    map_box,
    to_seen_pixels,
)
from vlmrl.rollout.trajectory import TrajImage


def call_json(bbox, name="crop") -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': {'bbox_2d': bbox}})}</tool_call>"


# ------------------------------------------------------------------------------------------ conventions


def test_default_convention():
    assert default_convention("qwen2_5_vl") == "absolute"
    assert default_convention("Qwen2.5-VL") == "absolute"
    assert default_convention("qwen2_vl") == "rel1000"
    assert default_convention("qwen3_vl") == "rel1000"
    with pytest.raises(ValueError, match="unknown model family"):
        default_convention("llava")


SEEN, ORIG = (224, 168), (448, 336)


@pytest.mark.parametrize(
    "convention, bbox",
    [
        ("rel1000", [250, 250, 750, 750]),
        ("absolute", [56, 42, 168, 126]),
        ("rel1", [0.25, 0.25, 0.75, 0.75]),
    ],
)
def test_each_convention_maps_to_the_same_box(convention, bbox):
    m = map_box(bbox, SEEN, ORIG, convention)
    assert isinstance(m, MappedBox) and m.ok
    assert m.seen_box == (56.0, 42.0, 168.0, 126.0)
    assert m.box == (112, 84, 336, 252)
    assert not m.clamped and not m.expanded
    assert m.width == 224 and m.height == 168
    assert m.seen_area_fraction == pytest.approx(0.25)


def test_to_seen_pixels():
    assert to_seen_pixels([0, 0, 1000, 1000], (224, 168), "rel1000") == (0, 0, 224, 168)
    assert to_seen_pixels([0.5, 0.5, 1, 1], (224, 168), "rel1") == (112, 84, 224, 168)
    with pytest.raises(ValueError, match="convention"):
        to_seen_pixels([0, 0, 1, 1], (224, 168), "percent")


def test_non_integer_scale_floor_and_ceil():
    # sx = 500/224, sy = 300/224
    m = map_box([10, 20, 110, 120], (224, 224), (500, 300), "absolute")
    # x: 22.32 -> 22, 245.54 -> 246; y: 26.79 -> 26, 160.71 -> 161
    assert m.box == (22, 26, 246, 161)


def test_full_box_each_convention():
    for conv, full in [("absolute", [0, 0, 252, 196]), ("rel1000", [0, 0, 1000, 1000]), ("rel1", [0, 0, 1, 1])]:
        m = map_box(full, (252, 196), (1001, 777), conv)
        assert m.box == (0, 0, 1001, 777)


def test_clamp():
    m = map_box([-10, -5, 100, 200], SEEN, ORIG, "absolute")
    assert m.clamped and not m.expanded
    assert m.seen_box == (0.0, 0.0, 100.0, 168.0)
    assert m.box == (0, 0, 200, 336)
    # seen (179.2, 134.4, 268.8, 184.8) -> clamped to (179.2, 134.4, 224, 168) -> x2 floor/ceil
    m = map_box([800, 800, 1200, 1100], SEEN, ORIG, "rel1000")
    assert m.clamped and not m.expanded and m.box == (358, 268, 448, 336)


@pytest.mark.parametrize("bbox", [[100, 10, 50, 60], [100, 10, 100, 60], [10, 60, 50, 60], [10, 80, 50, 60]])
def test_reject_empty_box(bbox):
    err = map_box(bbox, SEEN, ORIG, "absolute")
    assert isinstance(err, ToolCallError) and err.kind == "empty_box"
    assert "x1 < x2 and y1 < y2" in err.message


@pytest.mark.parametrize(
    "bbox", [[300, 10, 400, 60], [10, 200, 50, 300], [-50, 10, -1, 60], [224, 0, 300, 10], [0, -20, 10, 0]]
)
def test_reject_fully_outside(bbox):
    err = map_box(bbox, SEEN, ORIG, "absolute")
    assert isinstance(err, ToolCallError) and err.kind == "outside"
    assert "outside the image" in err.message and "224x168" in err.message


def test_reject_outside_rel1000_hint():
    err = map_box([1100, 0, 1200, 500], SEEN, ORIG, "rel1000")
    assert err.kind == "outside" and "0 to 1000" in err.message


def test_reject_aspect():
    seen, orig = (10000, 100), (20000, 200)
    ok = map_box([0, 40, 5600, 41], seen, orig, "absolute")  # expanded to 5600 x 28: ratio 200
    assert isinstance(ok, MappedBox) and ok.expanded and ok.seen_box == (0.0, 26.5, 5600.0, 54.5)
    err = map_box([0, 40, 6000, 41], seen, orig, "absolute")  # 6000 / 28 = 214
    assert isinstance(err, ToolCallError) and err.kind == "aspect" and "too thin" in err.message
    err = map_box([0, 0, 6000, 28], seen, orig, "absolute", max_aspect=100)
    assert err.kind == "aspect"


def test_map_box_rejects_bad_values():
    assert map_box([1, 2, 3], SEEN, ORIG).kind == "wrong_arity"
    assert map_box([1, 2, float("nan"), 4], SEEN, ORIG).kind == "not_finite"
    assert map_box([1, 2, True, 4], SEEN, ORIG).kind == "not_a_number"
    assert map_box("1234", SEEN, ORIG).kind == "bbox_not_a_list"
    assert map_box([0, 0, 1e308, 1e308], SEEN, ORIG, "rel1000").kind == "not_finite"
    with pytest.raises(ValueError):
        map_box([1, 2, 3, 4], (0, 10), ORIG)
    with pytest.raises(ValueError):
        map_box([1, 2, 3, 4], SEEN, ORIG, "pixels")


# ------------------------------------------------------------------------------------------ expansion


def test_tiny_box_expanded_around_centre():
    m = map_box([100, 50, 110, 60], SEEN, ORIG, "absolute")
    assert m.expanded and not m.clamped
    assert m.seen_box == (91.0, 41.0, 119.0, 69.0)  # centre (105, 55), 28 x 28
    assert m.box == (182, 82, 238, 138)


def test_expansion_one_axis():
    m = map_box([10, 10, 110, 15], SEEN, ORIG, "absolute")
    assert m.expanded
    assert m.seen_box == (10.0, 0.0, 110.0, 28.0)  # centre y 12.5 -> [-1.5, 26.5] -> shifted to [0, 28]


def test_expansion_near_borders():
    m = map_box([0, 0, 4, 4], SEEN, ORIG, "absolute")
    assert m.seen_box == (0.0, 0.0, 28.0, 28.0) and m.box == (0, 0, 56, 56)
    m = map_box([220, 160, 224, 168], SEEN, ORIG, "absolute")
    assert m.seen_box == (196.0, 140.0, 224.0, 168.0) and m.box == (392, 280, 448, 336)
    # clamped first, then expanded
    m = map_box([-30, 100, 5, 110], SEEN, ORIG, "absolute")
    assert m.clamped and m.expanded and m.seen_box == (0.0, 91.0, 28.0, 119.0)


def test_expansion_image_smaller_than_minimum():
    m = map_box([5, 10, 10, 50], (20, 100), (40, 200), "absolute")
    assert m.seen_box == (0.0, 10.0, 20.0, 50.0) and m.box == (0, 20, 40, 100)
    m = map_box([0, 0, 1, 1], (20, 100), (40, 200), "absolute", min_seen_size=0)
    assert not m.expanded and m.box == (0, 0, 2, 2)


def test_at_least_one_pixel():
    # original smaller than seen: a 28-px seen box is < 1 original px wide
    m = map_box([0, 0, 28, 28], (2800, 2800), (10, 10), "absolute")
    assert m.box == (0, 0, 1, 1)
    m = map_box([2772, 2772, 2800, 2800], (2800, 2800), (10, 10), "absolute")
    assert m.box == (9, 9, 10, 10)


# ------------------------------------------------------------------------------------------ images


def gradient(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), 128) for y in range(h) for x in range(w)])
    return img


def test_crop_size_matches_smart_resize_and_upscales():
    orig = gradient(448, 336)
    m = map_box([250, 250, 750, 750], SEEN, ORIG, "rel1000")
    crop = crop_image(orig, m)
    h, w = smart_resize(168, 224, 28, min_pixels=CROP_MIN_PIXELS, max_pixels=1024 * 28 * 28)
    assert crop.size == (w, h)
    assert w * h >= CROP_MIN_PIXELS > 224 * 168  # upscaled
    assert w % 28 == 0 and h % 28 == 0 and crop.mode == "RGB"
    # the crop shows the right region: top-left pixel colour ~ original at (112, 84)
    r, g, _ = crop.getpixel((0, 0))
    er, eg, _ = orig.getpixel((112, 84))
    assert abs(r - er) <= 3 and abs(g - eg) <= 3


def test_crop_budget_and_factor():
    orig = gradient(600, 400)
    m = map_box([0, 0, 1, 1], (300, 200), (600, 400), "rel1")
    crop = crop_image(orig, m, factor=32, min_pixels=32 * 32, max_pixels=64 * 32 * 32)
    assert crop.size[0] * crop.size[1] <= 64 * 32 * 32
    assert (crop.size[1], crop.size[0]) == smart_resize(400, 600, 32, 32 * 32, 64 * 32 * 32)
    tiny = map_box([0, 0, 1, 1], (300, 200), (600, 400), "absolute")  # expanded to 28x28 seen = 56x56 orig
    assert tiny.box == (0, 0, 56, 56)
    up = crop_image(orig, tiny, min_pixels=4 * 28 * 28 * 16, max_pixels=1024 * 28 * 28)
    assert up.size == (224, 224)


def test_crop_size_mismatch():
    m = map_box([0, 0, 10, 10], SEEN, ORIG)
    with pytest.raises(ValueError, match="differs"):
        crop_image(gradient(100, 100), m)


def test_first_view_sizes():
    img = gradient(1000, 800)
    v = first_view(img)  # 500x400 -> smart_resize -> 504x392
    assert v.size == (504, 392)
    assert (v.size[1], v.size[0]) == smart_resize(400, 500, 28, 4 * 28 * 28, 1024 * 28 * 28)
    v = first_view(img, scale=1.0, factor=32, max_pixels=256 * 32 * 32)
    assert v.size[0] * v.size[1] <= 256 * 32 * 32 and v.size[0] % 32 == 0 and v.size[1] % 32 == 0
    small = first_view(gradient(40, 30), scale=0.5)  # 20x15 -> upscaled to >= min_pixels 3136
    assert small.size == (84, 56)
    assert first_view(img.convert("L")).mode == "RGB"
    with pytest.raises(ValueError):
        first_view(img, scale=0)


def test_box_coverage():
    assert box_coverage((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_coverage((0, 0, 100, 100), (10, 10, 20, 20)) == 1.0
    assert box_coverage((0, 0, 15, 20), (10, 10, 20, 20)) == pytest.approx(0.5)
    assert box_coverage((30, 30, 40, 40), (10, 10, 20, 20)) == 0.0
    m = map_box([250, 250, 750, 750], SEEN, ORIG, "rel1000")
    assert box_coverage(m, (100, 84, 124, 252)) == pytest.approx(0.5)
    # a ground-truth box without area cannot be covered (one rule for DTPO's crop_ok and everyone else)
    assert box_coverage((0, 0, 1, 1), (5, 5, 5, 9)) == 0.0
    assert box_coverage((0, 0, 10, 10), (3, 3, 3, 3)) == 0.0
    assert box_coverage((5, 5, 4, 4), (0, 0, 10, 10)) == 0.0  # an inverted crop covers nothing


# ------------------------------------------------------------------------------------------ observation


def test_observation_text_valid():
    obs = CropTool().observation(ToolImage(gradient(28, 28)))
    assert obs.has_image
    assert obs.before_image == "<tool_response>\n"
    assert obs.after_image == "\n" + CROP_INSTRUCTION + "\n</tool_response>"
    assert obs.render("<IMG>") == "<tool_response>\n<IMG>\n" + CROP_INSTRUCTION + "\n</tool_response>"
    assert "<answer></answer>" in CROP_INSTRUCTION


def test_observation_text_error():
    tool = CropTool()
    err = tool.read(call_json([1, 2, 3]))
    obs = tool.error_observation(err)
    assert not obs.has_image and obs.after_image is None and obs.image is None
    assert obs.before_image == (
        "<tool_response>\n" + err.message + "\n" + ERROR_INSTRUCTION + "\n</tool_response>"
    )
    assert obs.render("<IMG>") == obs.before_image


# ------------------------------------------------------------------------------------------ the tool's run


def context_for(original, seen_size, convention="absolute", **kw):
    view = TrajImage("input", seen_size, original.size, 1, -1)
    return ToolContext([original], [view], convention, **kw)


def test_crop_tool_run():
    orig, tool = gradient(448, 336), CropTool()
    ctx = context_for(orig, SEEN, "rel1000", factor=28, min_pixels=28 * 28, max_pixels=1024 * 28 * 28)
    call = tool.read("<think>zoom</think>" + call_json([250, 250, 750, 750]))
    obs = tool.run(call.args, ctx)
    assert obs.record == {"bbox": [250.0, 250.0, 750.0, 750.0], "box_seen": [56.0, 42.0, 168.0, 126.0],
                          "box_original": [112, 84, 336, 252], "area_raw": 0.25}
    assert obs.image.image.size == (224, 168) and obs.image.source == 0 and obs.image.kind == "crop"
    assert obs.image.box_original == [112, 84, 336, 252] and obs.image.box_seen == [56.0, 42.0, 168.0, 126.0]
    bad = tool.run(tool.read(call_json([300, 10, 400, 60])).args, context_for(orig, SEEN))
    assert isinstance(bad, ToolCallError) and bad.kind == "outside" and bad.record == {"bbox": [300.0, 10.0, 400.0, 60.0]}
    assert tool.read(call_json([1, 2])).kind == "wrong_arity"


# ------------------------------------------------------------------------------------------ through an earlier crop


def test_map_box_through_a_region():
    """A box on a crop's seen image maps through that crop's box: hand-computed. The crop shows the
    original region (200, 100, 600, 300) (400x200) at 224x112 seen pixels: x scale 400/224, y 200/112."""
    region = (200, 100, 600, 300)
    m = map_box([56, 28, 112, 84], (224, 112), (1000, 800), "absolute", region=region)
    # x: 56*400/224 = 100, 112*400/224 = 200 -> 300..400; y: 28*200/112 = 50, 84*200/112 = 150 -> 150..250
    assert m.box == (300, 150, 400, 250) and m.seen_box == (56.0, 28.0, 112.0, 84.0)
    assert m.original_size == (1000, 800)
    whole = map_box([0, 0, 1000, 1000], (224, 112), (1000, 800), "rel1000", region=region)
    assert whole.box == region  # the whole crop is its own region
    # without a region, the same as the region of the whole image
    assert map_box([10, 10, 50, 50], (224, 112), (1000, 800)).box == \
        map_box([10, 10, 50, 50], (224, 112), (1000, 800), region=(0, 0, 1000, 800)).box
    # clamping and the 28 px minimum work in the crop's seen pixels: [0,0,14,14] grows to [0,0,28,28] -> 50x50
    assert map_box([0, 0, 14, 14], (224, 112), (1000, 800), region=region).box == (200, 100, 250, 150)
    with pytest.raises(ValueError, match="region"):
        map_box([0, 0, 10, 10], (224, 112), (1000, 800), region=(0, 0, 2000, 10))
