"""Fuzzing (hypothesis) of every place where outside input enters vlmrl.

Each property: only the documented outcome or error type, never another exception, never an invalid box,
never a reward or score outside its range, never a silently lost row. The tool-call parser, map_box and the
benchmark scorers have their own property tests (tests/test_tools_props.py, tests/test_scorers_property.py);
this file adds the crop tool end to end, answer extraction, the training rewards, recipes, dataset files and
image bytes. FUZZ_EXAMPLES=2000 for a longer run.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmrl.config import Config, ConfigError, load_config, save_config, to_dict
from vlmrl.data import DataError, Sample, decode_image, load_dataset
from vlmrl.data.sample import ANSWER_TYPES
from vlmrl.rewards.accuracy import accuracy_reward
from vlmrl.rewards.dtpo import dtpo_group_rewards
from vlmrl.rewards.extract import extract_answer, extract_boxed
from vlmrl.rewards.format import format_reward
from vlmrl.rollout import CONVENTIONS, CropTool, Observation, ToolCallError, ToolContext, first_view
from vlmrl.rollout.trajectory import TrajImage

N = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    return settings(max_examples=N or examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


numbers = st.one_of(st.integers(-2000, 3000), st.floats(-2000, 3000), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=4), st.none(), st.booleans())
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=32),
                      st.text(max_size=12))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                        max_leaves=12)


# ------------------------------------------------------------------------------------ crop tool, end to end


@st.composite
def tool_texts(draw):
    box = draw(st.one_of(st.lists(numbers, min_size=4, max_size=4), st.lists(numbers, max_size=6), json_any))
    name = draw(st.sampled_from(["crop", "crop", "zoom", ""]))
    body = json.dumps({"name": name, "arguments": {"bbox_2d": box}})
    body = draw(st.sampled_from([body, body[: len(body) // 2], body + "}", body.replace('"', "'")]))
    before = draw(st.sampled_from(["", "<think>look</think>", "<answer>3</answer>"]))
    after = draw(st.sampled_from(["</tool_call>", "", "</tool_call><tool_call>{}</tool_call>"]))
    return before + "<tool_call>" + body + after


@fuzz(80)
@given(text=st.one_of(tool_texts(), st.text(max_size=40)), W=st.integers(1, 600), H=st.integers(1, 600),
       convention=st.sampled_from(CONVENTIONS), factor=st.sampled_from([28, 32]), scale=st.sampled_from([0.5, 1.0]))
def test_crop_tool_end_to_end_gives_a_valid_crop_or_an_error(text, W, H, convention, factor, scale):
    """Reliability[fuzz]: any model output in the crop tool (parse + map + crop) | None (an answer), a ToolCallError the model sees, or a crop: box inside the image with positive size, crop sides multiples of the factor within the pixel budget"""
    assume(max(W, H) <= 50 * min(W, H))
    original = Image.new("RGB", (W, H), (30, 60, 90))
    seen = first_view(original, scale, factor, 4 * factor * factor, 256 * factor * factor).size
    lo, hi = 16 * factor * factor, 64 * factor * factor
    tool = CropTool()
    out = tool.read(text)
    if out is not None and out.ok:
        context = ToolContext([original], [TrajImage("input", seen, (W, H), 1, -1)], convention, factor, lo, hi)
        out = tool.run(out.args, context)
    assert out is None or isinstance(out, (ToolCallError, Observation))
    if isinstance(out, ToolCallError):
        assert out.message.startswith("Error: ")
    if isinstance(out, Observation):
        x1, y1, x2, y2 = out.image.box_original
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        cw, ch = out.image.image.size
        assert out.image.image.mode == "RGB" and cw % factor == 0 and ch % factor == 0
        assert lo <= cw * ch <= hi


# ------------------------------------------------------------------------------------ answer extraction + rewards

pieces = st.sampled_from(["<answer>", "</answer>", "\\boxed{", "{", "}", "<think>", "</think>", " ", "\n", "A", "42",
                          "x^2", "\\frac{1}{2}", "yes", "."])
responses = st.one_of(st.text(max_size=40), st.lists(st.one_of(pieces, st.text(max_size=3)), max_size=20).map("".join))


@fuzz(300)
@given(text=responses, inner=st.text(max_size=20))
def test_answer_extraction_is_total(text, inner):
    """Reliability[fuzz]: any response text in answer extraction | None or a substring of the response; never an exception"""
    for fn in (extract_answer, extract_boxed):
        out = fn(text)
        assert out is None or (isinstance(out, str) and out in text)
    if "<answer>" not in text and not any(t in inner for t in ("<answer>", "</answer>", "\\boxed")):
        assert extract_answer(text + "<answer>" + inner + "</answer>") == inner.strip()


samples = st.fixed_dictionaries({
    "answer": st.one_of(st.text(max_size=8), st.sampled_from(["A", "3", "3.5", "1/2", "yes"])),
    "answer_type": st.sampled_from(ANSWER_TYPES),
    "choices": st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=5)),
    "turns": st.lists(responses, max_size=3),
    "tool_calls": st.integers(0, 2),
    "meta": st.one_of(st.just({}), st.fixed_dictionaries({"gt_boxes": st.just([[0, 0, 10, 10]])})),
})


@fuzz(200)
@given(response=responses, sample=samples)
def test_training_rewards_are_total_and_in_range(response, sample):
    """Reliability[fuzz]: any response in the accuracy and format rewards | every part is a finite number in [0, 1]"""
    for fn in (accuracy_reward, format_reward):
        out = fn(response, sample)
        assert out and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values()), (fn.__name__, out)


boxes = st.lists(st.floats(0, 100), min_size=4, max_size=4).map(lambda b: [min(b[0], b[2]), min(b[1], b[3]),
                                                                          max(b[0], b[2]), max(b[1], b[3])])


@fuzz(100)
@given(data=st.data(), group=st.integers(1, 4), n_groups=st.integers(1, 3))
def test_dtpo_rewards_stay_in_range(data, group, n_groups):
    """Reliability[fuzz]: any DTPO group (responses, crops, ground-truth boxes) | R_oc in [0, 1 + w_fmt], R_tool in [-w_area, w_crop], all finite"""
    items = []
    for _ in range(group * n_groups):
        sample = data.draw(samples)
        sample["meta"] = {"gt_boxes": data.draw(st.lists(boxes, max_size=2))}
        crops = data.draw(st.lists(boxes, max_size=2))
        items.append({"response": data.draw(responses), "sample": sample, "crops": crops, "image_size": (100, 100)})
    out = dtpo_group_rewards(items, group)
    assert all(math.isfinite(v) for vs in out.values() for v in vs)
    assert all(0.0 <= v <= 1.5 for v in out["outcome"]) and all(-0.2 - 1e-9 <= v <= 0.1 for v in out["tool"])


# ------------------------------------------------------------------------------------ recipes

SECTIONS = {f.name: list(to_dict(getattr(Config(), f.name))) for f in dataclasses.fields(Config)}
keys = st.integers(0, 9).flatmap(lambda k: st.sampled_from(sorted(SECTIONS)) if k else
                                 st.one_of(st.text(max_size=8), st.integers(), st.none()))
values = st.one_of(json_leaf, st.floats(allow_nan=True, allow_infinity=True), st.lists(json_leaf, max_size=3),
                   st.dates(), st.text(alphabet="0123456789.e-+", max_size=6))


def _typed(value):
    """Values of a field's own type (floats include NaN and inf), or anything."""
    kind = type(value)
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(-10, 10**6)
    if kind is float:
        return st.one_of(st.floats(-1e3, 1e3), st.sampled_from([math.nan, math.inf, -math.inf]))
    if kind is str:
        return st.text(max_size=8)
    return st.one_of(st.none(), st.lists(st.floats(allow_nan=True), max_size=3))


@st.composite
def recipes(draw):
    """Mostly well-formed recipes (each field a value of its type), with some wrong keys and values."""
    out = {}
    for section in draw(st.lists(keys, max_size=4)):
        if isinstance(section, str) and section in SECTIONS and draw(st.integers(0, 4)):
            defaults = to_dict(getattr(Config(), section))
            chosen = draw(st.lists(st.sampled_from(sorted(defaults)), max_size=3))
            out[section] = {k: draw(_typed(defaults[k]) if draw(st.integers(0, 5)) else st.one_of(values, json_any))
                            for k in chosen}
            if not draw(st.integers(0, 5)):
                out[section][draw(st.text(max_size=8))] = draw(values)
        else:
            out[section] = draw(st.one_of(values, json_any))
    return out


@st.composite
def typed_override(draw):
    section = draw(st.sampled_from(sorted(SECTIONS)))
    defaults = to_dict(getattr(Config(), section))
    key = draw(st.sampled_from(sorted(defaults)))
    value = yaml.safe_dump(draw(_typed(defaults[key])), default_flow_style=True).strip().removesuffix("...").strip()
    return f"{section}.{key}={value}"


overrides = st.lists(st.one_of(
    typed_override(), typed_override(),
    st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(sorted(SECTIONS)), st.text(max_size=10),
              st.text(max_size=8)),
    st.builds(lambda s, v: f"{s}={v}", st.text(max_size=12), st.text(max_size=8)),
    st.text(max_size=15)), max_size=3)


def _finite_floats(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite_floats(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite_floats(v) for v in obj)
    return True


@fuzz(200)
@given(recipe=st.one_of(recipes(), recipes(), json_any), extra=overrides, raw=st.integers(0, 9),
       text=st.text(max_size=40))
def test_recipe_loader_only_raises_config_error(recipe, extra, raw, text):
    """Reliability[fuzz]: any recipe YAML and key=value overrides (unknown keys, wrong types, NaN, dates, not a mapping) | a Config with finite numbers that round-trips through config.yaml, or a ConfigError with a message; never another exception"""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text if raw == 0 else yaml.safe_dump(recipe, allow_unicode=True))
        try:
            cfg = load_config(path, extra)
        except ConfigError as e:
            assert str(e)
            return
        assert isinstance(cfg, Config) and _finite_floats(to_dict(cfg))
        save_config(cfg, Path(d) / "again.yaml")
        assert to_dict(load_config(Path(d) / "again.yaml")) == to_dict(cfg)


# ------------------------------------------------------------------------------------ dataset files


def _png(size=(4, 3), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def data_root():
    """A dataset folder: good and bad image files, a symlink out of the folder."""
    base = Path(tempfile.mkdtemp(prefix="vlmrl-fuzz-data-"))
    root = base / "ds"
    (root / "img").mkdir(parents=True)
    (root / "img" / "ok.png").write_bytes(_png())
    (root / "img" / "bad.png").write_bytes(_png()[:30])
    (root / "img" / "text.jpg").write_bytes(b"not an image at all")
    (root / "img" / "empty.png").write_bytes(b"")
    (root / "img" / "thin.png").write_bytes(_png((1, 300)))
    (base / "outside.png").write_bytes(_png())
    os.symlink(base / "outside.png", root / "img" / "link.png")
    return root


image_refs = st.one_of(
    st.sampled_from(["img/ok.png", "img/bad.png", "img/text.jpg", "img/empty.png", "img/thin.png", "img/link.png",
                     "img/missing.png", "../outside.png", "/etc/passwd", "img/../img/ok.png", "", "http://x/a.png",
                     "img/\x00.png", "x" * 300 + ".png", "img/" * 1100 + "a.png", "img", "file://img/ok.png",
                     base64.b64encode(_png()).decode(), "data:image/png;base64," + base64.b64encode(_png()).decode(),
                     "data:text/plain,hello"]),
    st.fixed_dictionaries({"bytes": st.one_of(st.none(), st.just(base64.b64encode(_png()).decode()), st.text(max_size=5)),
                           "path": st.one_of(st.none(), st.just("img/ok.png"), st.text(max_size=5))}),
    json_leaf)
FIELDS = ["id", "question", "problem", "prompt", "answer", "solution", "images", "image", "choices", "meta",
          "answer_type"]
field_values = {
    "question": st.one_of(st.text(max_size=12), st.sampled_from(["<image> what?", "<image><image>"]), json_leaf),
    "images": st.one_of(st.lists(image_refs, max_size=2), image_refs),
    "image": image_refs,
    "prompt": st.one_of(st.text(max_size=10), st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", 3]),
         "content": st.one_of(st.text(max_size=8), st.lists(st.one_of(
             st.just({"type": "image"}), st.fixed_dictionaries({"type": st.just("text"), "text": json_leaf}),
             json_any), max_size=3))}), max_size=3), json_any),
    "choices": st.one_of(st.lists(json_leaf, max_size=4), json_leaf),
    "meta": st.one_of(st.dictionaries(st.sampled_from(["gt_boxes", "category", "x"]), st.one_of(
        st.lists(st.one_of(st.lists(numbers, max_size=5), json_leaf), max_size=2), json_leaf), max_size=2), json_any),
    "answer_type": st.one_of(st.sampled_from(ANSWER_TYPES), json_leaf),
}
good_refs = st.sampled_from(["img/ok.png", "img/../img/ok.png", base64.b64encode(_png()).decode()])


@st.composite
def rows(draw):
    """A well-formed row of one of the three formats, then up to two fields replaced by junk or dropped."""
    fmt = draw(st.sampled_from(["vlmrl", "easyr1", "trl"]))
    images = draw(st.lists(st.one_of(good_refs, good_refs, good_refs, image_refs), max_size=2))
    answer = draw(st.one_of(st.sampled_from(["A", "3", "red"]), st.integers(0, 9)))
    if fmt == "vlmrl":
        row = {"question": "What?" + ("<image>" * len(images) if draw(st.booleans()) else ""), "images": images}
    elif fmt == "easyr1":
        row = {"problem": "<image>" * len(images) + "What?", "images": images}
    else:
        parts = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What?"}]
        row = {"prompt": [{"role": "user", "content": parts}], "images": images}
    row["solution" if fmt == "trl" else "answer"] = answer
    if draw(st.booleans()):
        row["meta"] = {"gt_boxes": draw(st.lists(boxes.map(lambda b: [b[0], b[1], b[2] + 1, b[3] + 1]), max_size=2))}
    if draw(st.booleans()):
        row["choices"], row["answer"] = ["x", "y", "z"], "B"
    for key in draw(st.lists(st.sampled_from(FIELDS + ["solution", "zzz"]), max_size=2)):
        if draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = draw(field_values.get(key, json_any))
    return row


def _check_error(e: Exception, path: Path) -> None:
    assert isinstance(e, (DataError, FileNotFoundError)), repr(e)
    assert str(path) in str(e), str(e)  # names the file


def _valid_box(b) -> bool:
    return len(b) == 4 and all(math.isfinite(v) for v in b) and b[0] < b[2] and b[1] < b[3]


@fuzz(150)
@given(records=st.lists(st.integers(0, 9).flatmap(lambda k: rows() if k else json_any), min_size=1, max_size=5),
       junk=st.sampled_from(["", "", "", "", "\n\n", "{not json\n", "[1, 2]\n"]))
def test_jsonl_loader_never_loses_a_row_silently(data_root, records, junk):
    """Reliability[fuzz]: any JSONL rows (missing fields, wrong types, bad image refs, placeholders, boxes) | load_dataset raises DataError/FileNotFoundError naming the file, or every row is either a Sample (RGB images, valid boxes) or an error naming file and row; on_error=skip keeps count of every row it drops, lines that are not JSON objects included"""
    path = data_root / f"{uuid.uuid4().hex}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + junk)
    try:
        for on_error in ("raise", "skip"):
            try:
                ds = load_dataset(path, on_error=on_error)
            except Exception as e:  # noqa: BLE001 - the property is about which exceptions
                _check_error(e, path)
                continue
            if on_error == "skip":  # the junk line (not JSON, or not an object) is a skipped row too
                assert len(ds) + len(ds.skipped) == len(records) + bool(junk.strip())
            for i in range(len(ds)):
                try:
                    s = ds[i]
                except Exception as e:  # noqa: BLE001
                    _check_error(e, path)
                    assert f"row {ds.rows[i].row}" in str(e)
                    continue
                assert isinstance(s, Sample) and all(im.mode == "RGB" and min(im.size) >= 1 for im in s.images)
                assert all(_valid_box(b) for b in s.gt_boxes)
                assert s.answer_type in ANSWER_TYPES and isinstance(s.question, str) and isinstance(s.answer, str)
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------ image bytes


def _encoded(fmt: str) -> bytes:
    im = Image.effect_noise((24, 16), 50).convert("RGB")
    buf = io.BytesIO()
    if fmt == "GIF":
        im.save(buf, format="GIF", save_all=True, append_images=[im.rotate(90)])
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@pytest.mark.filterwarnings("ignore:Truncated File Read")
@fuzz(300)
@given(fmt=st.sampled_from(sorted(SEEDS)), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4), tail=st.binary(max_size=8))
def test_mangled_image_bytes_decode_or_give_data_error(fmt, cut, flips, tail):
    """Reliability[fuzz]: truncated or corrupted PNG/JPEG/GIF/BMP/TIFF/WEBP bytes | an RGB image of positive size, or a DataError naming where it came from"""
    data = bytearray(SEEDS[fmt])
    for pos, value in flips:
        data[min(len(data) - 1, int(pos * len(data)))] = value
    data = bytes(data[: int(cut * len(data))]) + tail
    try:
        im = decode_image(data, max_pixels=1_000_000, where="fuzz.jsonl")
    except DataError as e:
        assert str(e).startswith("fuzz.jsonl: ")
        return
    assert im.mode == "RGB" and im.width >= 1 and im.height >= 1
