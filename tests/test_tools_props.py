"""Property tests for reading calls and mapping boxes with the crop tool (hypothesis). TOOL_PROP_EXAMPLES=5000
for a longer run."""

from __future__ import annotations

import json
import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl.data.vision import smart_resize
from vlmrl.rollout import CONVENTIONS, CropTool, MappedBox, ToolCall, ToolCallError, map_box

read = CropTool().read  # the generic parser, then the crop tool's bbox_2d checks

SETTINGS = settings(max_examples=int(os.environ.get("TOOL_PROP_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.sampled_from(["name", "arguments", "bbox_2d", "x"]) | st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=20,
)
bbox_like = st.one_of(
    st.lists(json_scalars, min_size=0, max_size=6),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
    json_values,
)
call_like = st.one_of(
    json_values,
    st.builds(lambda name, b: {"name": name, "arguments": {"bbox_2d": b}}, st.sampled_from(["crop", "zoom"]) | json_scalars, bbox_like),
    st.builds(lambda args: {"name": "crop", "arguments": args}, json_values),
)
tag_pieces = st.sampled_from(["<tool_call>", "</tool_call>", "<think>", "</think>", "{", "}", "[", "]", '"', "\n", " "])


def check_result(out):
    assert out is None or isinstance(out, (ToolCall, ToolCallError))
    if isinstance(out, ToolCallError):
        assert out.message.startswith("Error: ")
    if isinstance(out, ToolCall):
        assert len(out.args) == 4 and all(type(v) is float and math.isfinite(v) for v in out.args)


@SETTINGS
@given(st.text())
def test_parse_never_raises_on_text(text):
    check_result(read(text))
    check_result(read("<tool_call>" + text + "</tool_call>"))
    check_result(read("<tool_call>" + text))


@SETTINGS
@given(st.lists(st.one_of(tag_pieces, st.text(max_size=5)), max_size=30))
def test_parse_never_raises_on_tag_soup(pieces):
    check_result(read("".join(pieces)))


@SETTINGS
@given(call_like, st.text(max_size=20), st.sampled_from(["", " ", "\n", "\n  "]))
def test_parse_never_raises_on_jsonish(obj, prefix, ws):
    body = json.dumps(obj)  # NaN / Infinity appear as bare tokens
    text = prefix.replace("<tool_call>", "") + "<tool_call>" + ws + body + ws + "</tool_call>"
    out = read(text)
    check_result(out)
    if isinstance(out, ToolCall):  # accepted only if it really is a crop call with 4 finite non-bool numbers
        bbox = obj["arguments"]["bbox_2d"]
        assert obj["name"] == "crop" and len(bbox) == 4
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    # truncations and concatenations of valid JSON
    check_result(read("<tool_call>" + body[: len(body) // 2] + "</tool_call>"))
    check_result(read("<tool_call>" + body + body + "</tool_call>"))


RANGE = {"absolute": None, "rel1000": 1000.0, "rel1": 1.0}


@st.composite
def sizes(draw):
    W = draw(st.integers(1, 4000))
    H = draw(st.integers(max(1, math.ceil(W / 50)), min(4000, W * 50)))
    scale = draw(st.floats(0.05, 2.0))
    h, w = smart_resize(max(1, round(H * scale)), max(1, round(W * scale)), 28, 4 * 28 * 28, 1024 * 28 * 28)
    return (w, h), (W, H)


@SETTINGS
@given(sizes(), st.sampled_from(CONVENTIONS), st.lists(st.floats(-0.5, 1.5), min_size=4, max_size=4))
def test_accepted_box_maps_inside_original(size_pair, convention, rel):
    (w, h), (W, H) = size_pair
    rng = RANGE[convention]
    sx, sy = (w, h) if rng is None else (rng, rng)
    bbox = [rel[0] * sx, rel[1] * sy, rel[2] * sx, rel[3] * sy]
    m = map_box(bbox, (w, h), (W, H), convention)
    assert isinstance(m, (MappedBox, ToolCallError))
    if isinstance(m, MappedBox):
        x1, y1, x2, y2 = m.box
        assert all(type(v) is int for v in m.box)
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        sx1, sy1, sx2, sy2 = m.seen_box
        assert 0 <= sx1 < sx2 <= w and 0 <= sy1 < sy2 <= h
        assert sx2 - sx1 >= min(28, w) - 1e-9 and sy2 - sy1 >= min(28, h) - 1e-9
        assert 0 < m.seen_area_fraction <= 1
    else:
        assert m.kind in {"empty_box", "outside", "aspect"}


@SETTINGS
@given(sizes())
def test_full_seen_box_maps_to_full_original(size_pair):
    (w, h), (W, H) = size_pair
    for convention, full in [("absolute", [0, 0, w, h]), ("rel1000", [0, 0, 1000, 1000]), ("rel1", [0, 0, 1, 1])]:
        m = map_box(full, (w, h), (W, H), convention)
        assert isinstance(m, MappedBox), m
        assert m.box == (0, 0, W, H)
        assert not m.clamped


@SETTINGS
@given(sizes(), st.lists(st.floats(0, 1), min_size=4, max_size=4), st.lists(st.floats(-0.5, 1.5), min_size=4, max_size=4))
def test_box_on_a_crop_maps_inside_that_crop(size_pair, corners, rel):
    """Through an earlier crop's box (the nested crop tool), an accepted box stays inside that box."""
    (w, h), (W, H) = size_pair
    x1, x2 = sorted((round(corners[0] * W), round(corners[2] * W)))
    y1, y2 = sorted((round(corners[1] * H), round(corners[3] * H)))
    if x2 <= x1 or y2 <= y1 or max(x2 - x1, y2 - y1) > 200 * min(x2 - x1, y2 - y1):
        return  # crops are boxes of aspect ratio <= 200
    m = map_box([rel[0] * w, rel[1] * h, rel[2] * w, rel[3] * h], (w, h), (W, H), "absolute", region=(x1, y1, x2, y2))
    if isinstance(m, MappedBox):
        assert x1 <= m.box[0] < m.box[2] <= x2 and y1 <= m.box[1] < m.box[3] <= y2
        full = map_box([0, 0, w, h], (w, h), (W, H), "absolute", region=(x1, y1, x2, y2))
        assert full.box == (x1, y1, x2, y2)
    else:
        assert m.kind in {"empty_box", "outside", "aspect"}
