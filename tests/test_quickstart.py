"""The quickstart's parts: task options (tag_color, corners, symbols), grid crop boxes, the minimal prompt,
forced-prefix baselines through `vlmrl eval`, the per-need breakdown, and `vlmrl quickstart` end to end."""

import json
from dataclasses import replace

import pytest

from vlmrl.cli import main
from vlmrl.data.synthetic import (
    STRIPE_CHANNELS, ZoomConfig, ZoomScene, half_view, make_zoom_dataset, make_zoom_sample, render_scene)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ task options

def test_tag_color_stripes_vanish_at_half_resolution_only():
    cfg = ZoomConfig(categories=("tag_color",), tag_layout="corners")
    _, row = make_zoom_sample(0, 3, "train", cfg)
    assert row["meta"]["category"] == "tag_color" and row["answer"] in STRIPE_CHANNELS
    scene = ZoomScene.from_dict(row["meta"]["scene"])
    full = {render_scene(replace(scene, stripe=c)).tobytes() for c in STRIPE_CHANNELS}
    half = {half_view(render_scene(replace(scene, stripe=c))).tobytes() for c in STRIPE_CHANNELS}
    assert len(full) == len(STRIPE_CHANNELS) and len(half) == 1


def test_corners_layout_puts_the_tag_in_a_corner_window():
    from vlmrl.train.sft import grid_window

    cfg = ZoomConfig(image_size=(224, 224), categories=("tag_color", "big_color"), tag_layout="corners")
    corners = {(0.0, 0.0), (112.0, 0.0), (0.0, 112.0), (112.0, 112.0)}
    for i in range(20):
        _, row = make_zoom_sample(1, i, "train", cfg)
        w = grid_window(row["meta"]["tag_box"], (224, 224))
        assert w is not None and (w[0], w[1]) in corners, (i, row["meta"]["tag_box"], w)


def test_striped_tag_size_erased_at_half_resolution_with_one_phase():
    import numpy as np

    cfg = ZoomConfig(categories=("big_color", "tag_color"), tag_layout="corners", tag_size=40)
    for i in range(12):
        _, row = make_zoom_sample(0, i, "train", cfg)
        scene = ZoomScene.from_dict(row["meta"]["scene"])
        assert scene.tag_size == 40 and scene.stripe in STRIPE_CHANNELS  # every scene has a coloured tag
        x1, y1, x2, y2 = row["meta"]["tag_box"]
        assert (x2 - x1, y2 - y1) == (44, 44)  # 40 px of stripes + the 2-px plate margin
        full = [render_scene(replace(scene, stripe=c)) for c in STRIPE_CHANNELS]
        half = {half_view(im).tobytes() for im in full}
        assert len({im.tobytes() for im in full}) == 4 and len(half) == 1
    # hand-computed row: the kernel (1, -3, 3, -1) * 10 laid every 2 px -> 10, -30, 40, -40, ..., 30, -10,
    # in the red channel only for a red tag, on the 128 plate; odd columns are the + ones
    red = replace(scene, stripe="red")
    a = np.asarray(render_scene(red)).astype(int)
    gx, gy = red.glyph_xy
    assert gx % 2 == 1
    assert list(a[gy + 3, gx:gx + 6, 0] - 128) == [10, -30, 40, -40, 40, -40]
    assert list(a[gy + 3, gx + 34:gx + 40, 0] - 128) == [40, -40, 40, -40, 30, -10]
    assert (a[gy:gy + 40, gx:gx + 40, 1:] == 128).all()
    with pytest.raises(ValueError, match="only tag question is tag_color"):
        ZoomConfig(categories=("tag_digit",), tag_size=40)
    with pytest.raises(ValueError, match="only tag question is tag_color"):
        ZoomConfig(categories=("tag_color", "tag_fill"), tag_size=40)
    with pytest.raises(ValueError, match="tag size must be even"):
        ZoomConfig(categories=("tag_color",), tag_size=41)


def test_tag_fill_is_a_plain_square_in_the_tag_colour():
    import numpy as np

    from vlmrl.data.synthetic import COLORS, DETAIL_STYLES

    cfg = ZoomConfig(categories=("big_color", "tag_fill"), tag_layout="fixed", tag_size=12)
    kinds = set()
    for i in range(12):
        image, row = make_zoom_sample(0, i, "train", cfg)
        scene = ZoomScene.from_dict(row["meta"]["scene"])
        assert scene.solid and scene.tag_size == 12 and scene.stripe in COLORS  # every scene has one
        kinds.add(row["meta"]["category"])
        if row["meta"]["category"] == "tag_fill":
            assert row["answer"] == scene.stripe and row["meta"]["needs_zoom"]
            assert row["question"] == "What color is the small tag?"
        a = np.asarray(image)
        gx, gy = scene.glyph_xy
        assert (a[gy:gy + 12, gx:gx + 12] == COLORS[scene.stripe]).all()
        x1, y1, x2, y2 = row["meta"]["tag_box"]
        assert (x2 - x1, y2 - y1) == (16, 16) and (a[y1, x1:x2] == DETAIL_STYLES["emboss"][2]).all()
        assert render_scene(ZoomScene.from_dict(scene.to_dict())).tobytes() == image.tobytes()
    assert kinds == {"big_color", "tag_fill"}
    with pytest.raises(ValueError, match="tag_fill questions need --tag-size"):
        ZoomConfig(categories=("tag_fill",))


def test_symbols_restrict_the_tag_alphabet(tmp_path):
    info = make_zoom_dataset(tmp_path, n=40, n_test=0, seed=0,
                             config=ZoomConfig(categories=("tag_digit",), symbols=("1", "7")))
    answers = {json.loads(l)["answer"] for l in open(tmp_path / "train.jsonl")}
    assert answers <= {"1", "7"} and info["symbols"] == "17"
    with pytest.raises(ValueError, match="no letter"):
        ZoomConfig(categories=("tag_letter",), symbols=("1",))
    with pytest.raises(ValueError, match="unknown symbols"):
        ZoomConfig(symbols=("?",))
    with pytest.raises(ValueError, match="tag layout"):
        ZoomConfig(tag_layout="middle")


def test_default_dataset_is_unchanged_by_the_new_options():
    # no stripe key in the scene of ordinary rows, so datasets written before stay byte-identical
    _, row = make_zoom_sample(0, 0, "train")
    assert "stripe" not in row["meta"]["scene"] and "tag_size" not in row["meta"]["scene"]


# ------------------------------------------------------------------ SFT boxes

def test_grid_window_hand_computed():
    from vlmrl.train.sft import grid_window, seen_box

    # windows are 112x112 at offsets 0, 56, 112: x 100..120 fits only the windows starting at x=56
    assert grid_window((100, 10, 120, 30), (224, 224)) == (56.0, 0.0, 168.0, 112.0)
    # x 60..80 fits x=0 and x=56; the box centre (70, 20) is nearer (56, 56) than (112, 56)
    assert grid_window((60, 10, 80, 30), (224, 224)) == (0.0, 0.0, 112.0, 112.0)
    assert grid_window((0, 0, 200, 20), (224, 224)) is None  # wider than half the image
    # centre (110, 110): windows (0,0), (56,0), (0,56), (56,56) all hold it; (56,56) has the nearest centre
    assert grid_window((100, 100, 120, 120), (224, 224)) == (56.0, 56.0, 168.0, 168.0)
    # seen coordinates on a 112-pixel first view: halved; the 25% padding keeps the box inside the window
    assert seen_box((100, 10, 120, 30), (224, 224), (112, 112), "absolute", grid=True) == [28, 0, 84, 56]
    assert seen_box((100, 10, 120, 30), (224, 224), (112, 112), "rel1000", grid=True) == [250, 0, 750, 500]
    assert seen_box((100, 10, 120, 30), (224, 224), (112, 112), "absolute") == [48, 2, 62, 18]  # tight
    # snap: padded (160, 161, 224, 224) widened to multiples of 28 original pixels -> (140, 140, 224, 224),
    # an 84x84 crop kept pixel for pixel; halved on the 112-pixel first view
    assert seen_box((171, 172, 215, 216), (224, 224), (112, 112), "absolute", snap=28) == [70, 70, 112, 112]


def test_fixed_layout_keeps_the_tag_in_one_place():
    cfg = ZoomConfig(categories=("big_color", "tag_color"), tag_layout="fixed", tag_size=40)
    boxes = {tuple(make_zoom_sample(2, i, "train", cfg)[1]["meta"]["tag_box"]) for i in range(15)}
    assert boxes == {(171, 172, 215, 216)}  # bottom-right, 8 px from the edges, glyph x odd


# ------------------------------------------------------------------ minimal prompt

def test_minimal_prompt_is_short_and_declares_the_call():
    from vlmrl.data.prompts import direct_messages, tool_messages

    tm = tool_messages(question="What color?", num_images=1, style="minimal", coords="rel1000")
    assert '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>' in tm[0]["content"]
    assert "0-1000" in tm[0]["content"]
    assert tm[1]["content"][-1]["text"] == "What color?"
    dm = direct_messages(question="What color?", choices=["red", "blue"], num_images=1, style="minimal")
    assert [m["role"] for m in dm] == ["user"] and dm[0]["content"][-1]["text"] == "What color?\nA. red\nB. blue"


def test_bare_prompt_is_the_question_alone(tiny_dirs):
    from vlmrl.data.prompts import direct_messages, tool_messages
    from vlmrl.models.policy import Policy

    for msgs in (tool_messages(question="What color?", num_images=1, style="bare"),
                 direct_messages(question="What color?", num_images=1, style="bare")):
        assert msgs[0] == {"role": "system", "content": ""}  # present, so no template default is added
        assert msgs[1]["content"] == [{"type": "image"}, {"type": "text", "text": "What color?"}]
    tok = Policy.load(tiny_dirs["qwen2_5_vl"]).processor.tokenizer
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "helpful" not in text and text.startswith("<|im_start|>system\n<|im_end|>")


# ------------------------------------------------------------------ eval: prefixes and breakdown

@pytest.fixture(scope="module")
def zoom_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qs_data")
    make_zoom_dataset(root, n=0, n_test=6, seed=0, config=ZoomConfig(categories=("big_color", "tag_color")))
    return root


def _eval(tiny_dirs, zoom_data, out, *extra):
    argv = ["eval", "--task", "zoom", "--data", str(zoom_data / "test.jsonl"), "--model", str(tiny_dirs["qwen2_5_vl"]),
            "--out", str(out), "--tool", "--max-new-tokens", "8", "--prompt-style", "minimal", "--no-progress",
            "--crop-min-pixels", "3136", "--crop-max-pixels", "50176", *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text()), [json.loads(l) for l in open(out / "samples.jsonl")]


def test_eval_prefix_forces_the_first_turn_and_breakdown_by_need(tiny_dirs, zoom_data, tmp_path):
    call = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 56, 56]}}</tool_call>'
    res, lines = _eval(tiny_dirs, zoom_data, tmp_path / "always", "--prefix", call)
    assert res["tool_call_rate"] == 1.0
    assert all(l["turns"][0][0] == call for l in lines)  # the prefix is the whole first turn
    # every response saw the 16-token first view (112x112) plus the crop: [0, 0, 56, 56] in first-view
    # pixels is the 112x112 top-left quarter of the 224 image, kept at full resolution (16 tokens)
    assert res["visual_tokens_per_sample"] == 16 + 16
    by = res["by"]["needs_zoom"]
    assert by["true"]["n"] + by["false"]["n"] == 6 and by["true"]["tool_call_rate"] == 1.0
    assert by["false"]["tool_call_rate"] == 1.0

    res, lines = _eval(tiny_dirs, zoom_data, tmp_path / "never", "--prefix", "<answer>")
    assert res["tool_call_rate"] == 0.0 and res["visual_tokens_per_sample"] == 16
    assert all(l["turns"][0][0].startswith("<answer>") for l in lines)
    assert res["by"]["needs_zoom"]["true"]["tool_call_rate"] == 0.0


# ------------------------------------------------------------------ progress

def test_stage_header_elapsed_and_time_left():
    """The time left is the reference seconds of the stages to come (283 s in all on a quiet 2-core machine)
    scaled by this run's pace over the stages that ran; reused stages do not count towards the pace."""
    from vlmrl.quickstart import STAGE_SECONDS, _clock, stage_header

    todo = [k for k in STAGE_SECONDS if k != "digits"]  # the zoom stages (the digits stage: see the end)
    assert sum(STAGE_SECONDS[k] for k in todo) == 283
    assert stage_header("1/6 tiny model", 0.2, {}, todo) == \
        "== 1/6 tiny model (0:00 elapsed, ~4:43 left at a quiet 2-core machine's pace) =="
    # model + data (3 reference seconds) are too short to measure the pace: still the reference pace
    assert stage_header("3/6 SFT", 9.4, {"model": 6.0, "data": 3.4}, todo[2:]) == \
        "== 3/6 SFT (0:09 elapsed, ~4:40 left at a quiet 2-core machine's pace) =="
    # a busy machine: 507 s for 170 reference seconds -> pace 507/170; left 113 * 507/170 = 337.0 s
    assert stage_header("4/6 DTPO", 507.0, {"model": 3.0, "data": 3.0, "sft": 501.0}, todo[3:]) == \
        "== 4/6 DTPO (8:27 elapsed, ~5:37 left) =="
    # a reused SFT (left out of `ran`) and --no-direct: DTPO took 162 s for 81 + 3 -> pace 168/84 = 2;
    # left (16 + 0) * 2 = 32 s; past an hour the clock shows hours
    assert stage_header("5/6 eval", 3725.0, {"model": 3.0, "data": 3.0, "rl": 162.0}, ["eval", "summary"]) == \
        "== 5/6 eval (1:02:05 elapsed, ~0:32 left) =="
    # the real-image stage still to come adds its reference seconds at the same pace
    assert stage_header("5/6 eval", 3725.0, {"model": 3.0, "data": 3.0, "rl": 162.0}, ["eval", "summary", "digits"]) \
        == f"== 5/6 eval (1:02:05 elapsed, ~{_clock(2 * (16 + STAGE_SECONDS['digits']))} left) =="


# ------------------------------------------------------------------ end to end

def test_quickstart_end_to_end_smoke(tmp_path, monkeypatch, capsys):
    """Every stage on the tiny model with a couple of steps: the table, the checks, the files."""
    import gzip

    import vlmrl.quickstart_digits as qd

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    monkeypatch.setattr(qd, "DIGITS_DATA", {"n": 6, "n_test": 6})
    src = tmp_path / "digits.csv.gz"  # a stand-in for scikit-learn's file: a bar of ink, labels 0-9
    bar = [16 if (r == 0 and 2 <= c <= 5) else 0 for r in range(8) for c in range(8)]
    src.write_bytes(gzip.compress("".join(",".join(map(str, bar)) + f",{i % 10}\n" for i in range(12)).encode()))
    out = tmp_path / "qs"
    code = main(["quickstart", "--out", str(out), "--size", "tiny", "--n", "16", "--n-test", "6",
                 "--digits-source", str(src), "sft.steps=2", "sft.batch_size=4", "train.steps=1", "train.prompts_per_step=2",
                 "rollout.group_size=2", "rollout.max_new_tokens=8", "train.eval_every=0", "train.save_every=0"])
    assert code == 0
    headers = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("== ")]
    from vlmrl.quickstart import STAGE_SECONDS, _clock

    assert len(headers) == 8 and headers[0].startswith(
        f"== 1/6 tiny model (offline) (0:00 elapsed, ~{_clock(sum(STAGE_SECONDS.values()))} left")
    assert all(" elapsed, ~" in h and (h.endswith(" left) ==") or h.endswith("pace) ==")) for h in headers)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in summary["rows"]] == ["warm start (SFT)", "RL (DTPO)", "always crop", "never crop"]
    rows = {r["policy"]: r for r in summary["rows"]}
    assert rows["never crop"]["tool_rate_zoom"] == 0.0 and rows["never crop"]["tool_rate_no_zoom"] == 0.0
    assert len(summary["checks"]) == 3 and all(isinstance(c["holds"], bool) for c in summary["checks"])
    assert [r["policy"] for r in summary["direct"]] == ["GRPO", "PAPO-G"]
    md = (out / "summary.md").read_text()
    assert "| RL (DTPO) |" in md and "Wall time" in md
    # the real-image stage: warm start, GRPO and PAPO-G on held-out digits, with the perception probe
    assert [r["policy"] for r in summary["digits"]["rows"]] == ["warm start (SFT)", "GRPO", "PAPO-G"]
    assert all(r["n"] == 6 and r["perception_kl"] >= 0 and 0 <= r["answer_changed"] <= 1
               for r in summary["digits"]["rows"])
    assert [c["claim"].split(":")[0] for c in summary["digits"]["checks"]] == \
        ["RL (GRPO) raises held-out accuracy on real digits by >= 5 points"]
    assert "| PAPO-G |" in md and "perception KL" in md
    # accuracy per question kind, from results.json's by.category (each kind has 2 of the 6 held-out rows)
    assert all(0 <= r[k] <= 1 for r in summary["digits"]["rows"] for k in ("digit", "even/odd"))
    assert "| policy | accuracy | digit | even/odd | perception KL |" in md  # the default kinds
    for f in ("rl/metrics.jsonl", "eval/rl/traces.html", "eval/warm_start/results.json", "direct/papo_g/metrics.jsonl",
              "digits/data/info.json", "digits/papo_g/metrics.jsonl", "digits/eval/grpo/results.json"):
        assert (out / f).is_file(), f
