"""`vlmrl view`: the HTML trace viewer, checked as text and in a real headless Chromium; the debug tools."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from vlmrl import viewer
from vlmrl.rollout.trajectory import ToolCallRecord, Trajectory, TrajImage, save_traces

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "<script>alert(1)</script>"
HOSTILE2 = '"><img src=x onerror=alert(2)>'
CALL = '<think>look closer</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [%s]}}</tool_call>'


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vlmrl.models.tiny import build_tokenizer

    tok = build_tokenizer(640, seed=0)
    d = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(d)
    return tok, d


def _picture(size=(448, 448), seed=0):
    im = Image.new("RGB", size, (235, 238, 245))
    d = ImageDraw.Draw(im)
    d.rectangle([40 + seed * 10, 60, 200, 220], fill=(220, 60, 60))
    d.ellipse([260, 250, 400, 390], fill=(60, 90, 220))
    d.text((300, 100), "7", fill=(0, 0, 0))
    return im


def _traj(tok, p, g, turns, *, calls=(), finish="answered", rewards=None, correct=None, crop_boxes=()):
    """A trajectory with consistent ids / masks / turn ids, a first view and crops."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    question = f"What digit is in the picture? (prompt {p}) <b>bold?</b>"
    prompt = enc("<|im_start|>user\n<|vision_start|>") + [pad] * 16 + enc(
        f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
    ids, mask, tids, lps = list(prompt), [0] * len(prompt), [-1] * len(prompt), [0.0] * len(prompt)
    first = _picture(seed=p).resize((224, 224))
    images = [TrajImage("input", (224, 224), (448, 448), 16, -1, image=first)]
    for k, text in enumerate(turns):
        t = enc(text) + ([tok.convert_tokens_to_ids("<|im_end|>")] if "tool_call" not in text else [])
        ids += t
        mask += [1] * len(t)
        tids += [k] * len(t)
        lps += [-0.1 - 0.3 * (j % 5) for j in range(len(t))]
        if k < len(turns) - 1:  # observation
            o = enc("<|im_end|>\n<|im_start|>user\n<tool_response>") + (
                [pad] * 4 if k < len(crop_boxes) else enc("error")) + enc("</tool_response><|im_end|>\n<|im_start|>assistant\n")
            ids += o
            mask += [0] * len(o)
            tids += [k] * len(o)
            lps += [0.0] * len(o)
    for k, box in enumerate(crop_boxes):
        orig = [int(v * 2) for v in box]
        images.append(TrajImage("crop", (112, 112), (448, 448), 4, k, list(box), orig,
                                image=_picture(seed=p).crop(orig).resize((112, 112))))
    n = len(ids)
    adv = [(0.8 if correct else -0.6) * m * (1.0 if t == 0 else 0.7) for m, t in zip(mask, tids)]
    return Trajectory(
        prompt_index=p, sample_index=g, sample_id=f"synth-{p}", question=question, answer="7", answer_type="number",
        ids=ids, response_mask=mask, turn_ids=tids, logprobs=lps, prompt_len=len(prompt), turns=list(turns),
        images=images, tool_calls=list(calls), finish_reason=finish, visual_tokens=sum(i.visual_tokens for i in images),
        mode="tool", meta={"gt_boxes": [[260, 250, 400, 390]]}, rewards=rewards or {},
        token_stats={"advantage": adv, "perception_kl": [0.02 * (j % 7) * m for j, m in enumerate(mask)],
                     "entropy": [0.5 + 0.1 * (j % 3) for j in range(n)]})


def crop_call(turn, raw, valid, bbox=None, box_seen=None, box_original=None, error=None):
    """A crop tool call record as the engine writes it (the crop tool's record: bbox, box_seen, box_original)."""
    record = {k: v for k, v in (("bbox", bbox), ("box_seen", box_seen), ("box_original", box_original)) if v is not None}
    return ToolCallRecord(turn, raw, valid, error, "crop", None, record)


def make_group_trajs(tok):
    """Two prompts x 3 samples: valid and invalid tool calls, a direct answer, truncations, a hostile text."""
    ok = crop_call(0, CALL % "130, 125, 200, 195", True, [130, 125, 200, 195], [130, 125, 200, 195], [260, 250, 400, 390])
    bad = crop_call(0, CALL % "90, 10, 20, 50", False, [90, 10, 20, 50], error="x2 <= x1: the box is empty")
    late = crop_call(1, CALL % "1, 2, 3, 4", False, error="not executed: the turn limit was reached")
    r = lambda acc, fmt=1.0: {"total": acc + 0.5 * fmt, "accuracy": acc, "format": fmt}
    return [
        _traj(tok, 0, 0, [CALL % "130, 125, 200, 195", "<think>a seven</think><answer>7</answer>"], calls=[ok],
              rewards=r(1.0), correct=True, crop_boxes=[[130, 125, 200, 195]]),
        _traj(tok, 0, 1, [CALL % "90, 10, 20, 50", f"<think>{HOSTILE}{HOSTILE2}</think><answer>1 & 2</answer>"],
              calls=[bad], rewards=r(0.0), correct=False),
        _traj(tok, 0, 2, ["<think>easy</think><answer>7</answer>"], rewards=r(1.0), correct=True),
        _traj(tok, 1, 0, ["<think>hmm " + "very long " * 10], finish="length", rewards=r(0.0, 0.0), correct=False),
        _traj(tok, 1, 1, [CALL % "10, 10, 90, 90", "<answer>3</answer>"], rewards=r(0.0),
              calls=[crop_call(0, CALL % "10, 10, 90, 90", True, [10, 10, 90, 90], [10, 10, 90, 90], [20, 20, 180, 180])],
              correct=False, crop_boxes=[[10, 10, 90, 90]]),
        _traj(tok, 1, 2, [CALL % "130, 125, 200, 195", CALL % "1, 2, 3, 4"], calls=[ok, late], finish="max_turns",
              rewards=r(0.0, 0.0), correct=False, crop_boxes=[[130, 125, 200, 195]]),
    ]


def expect(trajs):
    n_img = sum(len(t.images) for t in trajs)
    correct = sum(1 for t in trajs if t.rewards.get("accuracy") == 1.0)
    return dict(n=len(trajs), images=n_img, correct=correct, wrong=len(trajs) - correct,
                tool=sum(1 for t in trajs if t.tool_calls), notool=sum(1 for t in trajs if not t.tool_calls),
                toolerr=sum(1 for t in trajs if any(not c.valid for c in t.tool_calls)),
                truncated=sum(1 for t in trajs if t.finish_reason in ("length", "max_turns")),
                boxes=sum(1 for t in trajs for c in t.tool_calls if c.box_seen))


@pytest.fixture(scope="module")
def rollout_trace(tokenizer, tmp_path_factory):
    tok, tok_dir = tokenizer
    d = tmp_path_factory.mktemp("rollout")
    trajs = make_group_trajs(tok)
    path = save_traces(d / "trace.jsonl", trajs)
    return path, trajs, tok_dir


@pytest.fixture(scope="module")
def run_dir(tokenizer, tmp_path_factory):
    """A `vlmrl train`-shaped run: traces for steps 1 and 2, a checkpoint holding the tokenizer."""
    tok, _ = tokenizer
    run = tmp_path_factory.mktemp("run")
    for step in (1, 2):
        save_traces(run / "traces" / f"step-{step:06d}.jsonl", make_group_trajs(tok), step=step)
    tok.save_pretrained(run / "checkpoints" / "step-000002")
    with (run / "metrics.jsonl").open("w") as f:
        for step in (1, 2):
            f.write(json.dumps({"step": step, "reward/mean": 0.5 * step}) + "\n")
    return run


@pytest.fixture(scope="module")
def eval_samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    (d / "samples_images").mkdir()
    _picture().save(d / "samples_images" / "doc0.png")
    lines = [
        {"doc_id": 0, "input": "How many circles?", "target": "1", "resps": [["<answer>1</answer>"]],
         "filtered_resps": ["1"], "exact_match": 1.0, "visual_tokens": 64, "finish_reason": "answered",
         "images": [{"kind": "input", "path": "samples_images/doc0.png", "seen_size": [448, 448],
                     "original_size": [448, 448], "visual_tokens": 64, "turn": -1}], "tool_calls": []},
        {"doc_id": 1, "input": "Colour?", "target": "red", "resps": [[f"<answer>{HOSTILE}</answer>"]],
         "exact_match": 0.0, "tool_calls": [{"turn": 0, "raw": "<tool_call>oops", "valid": False, "error": "bad JSON"}]},
    ]
    path = d / "samples.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# --------------------------------------------------------------------------- HTML as text


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="vlmrl-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_page_content_and_escaping(rollout_trace, tmp_path):
    path, trajs, tok_dir = rollout_trace
    out, report = viewer.build_report(path, out=tmp_path / "r.html", model=tok_dir)
    page = out.read_text()
    assert page.count('<article class="traj"') == len(trajs)
    assert page.count('<section class="group"') == 2
    # no raw hostile markup anywhere: escaped in HTML, \u003c-escaped in the JSON
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page
    assert page.count("<script") == 3  # head guard, JSON data, the viewer's own code
    # every image embedded once per distinct file content, no external URL
    data = _data(page)
    assert data["images"] and all(u.startswith("data:image/png;base64,") for u in data["images"].values())
    assert page.count("<img data-img=") == expect(trajs)["images"]
    assert not re.search(r'(src|href)="(https?:|//)', page)
    # tool errors in plain sight, boxes drawn, rewards and finish shown
    assert "x2 &lt;= x1: the box is empty" in page and page.count('class="call err"') == expect(trajs)["toolerr"]
    assert page.count('<rect class="box"') == expect(trajs)["boxes"]
    assert page.count('<rect class="gt"') == len(trajs)
    assert "max_turns" in page and "length" in page and "accuracy" in page
    # tokens decoded; colour modes are the stats present
    assert set(data["tokens"]) == {f"r{i}" for i in range(len(trajs))}
    assert set(data["scales"]) == {"logprob", "advantage", "perception_kl", "entropy"}
    assert data["scales"]["advantage"]["kind"] == "div"
    for mode in ("mask", "turn", "logprob", "advantage", "perception_kl", "entropy"):
        assert f'<option value="{mode}">' in page
    t0 = trajs[1]
    tk = data["tokens"]["r1"]
    text = "".join(tk["over"].get(str(i), data["vocab"][str(x)]) for i, x in enumerate(tk["ids"]))
    assert HOSTILE in text and t0.turns[1] in text  # the JSON round-trips to the exact text


def test_no_tokenizer_falls_back_with_note(rollout_trace, tmp_path, capsys):
    path, trajs, _ = rollout_trace
    from vlmrl.cli import main

    assert main(["view", str(path), "--out", str(tmp_path / "x.html")]) == 0
    out = capsys.readouterr().out
    assert "no tokenizer found" in out and "wrote" in out
    page = (tmp_path / "x.html").read_text()
    assert 'id="colour"' not in page and page.count("no tokenizer found") >= len(trajs)
    assert "&lt;script&gt;alert(1)" in page


def test_run_dir_steps_limit_and_tokenizer_discovery(run_dir, tmp_path, capsys):
    out, report = viewer.build_report(run_dir)
    assert out == run_dir / "traces.html" and report.tokenizer.endswith("step-000002")
    page = out.read_text()
    assert page.count('<article class="traj"') == 12
    assert '<select id="f-step">' in page and '<option value="2">2</option>' in page
    # cap: note printed, latest step kept
    from vlmrl.cli import main

    assert main(["view", str(run_dir), "--limit", "6", "--out", str(tmp_path / "c.html")]) == 0
    printed = capsys.readouterr().out
    assert "capped: showing 6 of 12" in printed
    assert (tmp_path / "c.html").read_text().count('data-step="2"') >= 6
    _, rep = viewer.build_report(run_dir, out=tmp_path / "s.html", steps=[1])
    assert {r["step"] for r in rep.records} == {1}


def test_eval_samples_text_view(eval_samples, tmp_path):
    out, report = viewer.build_report(eval_samples, out=tmp_path / "e.html")
    page = out.read_text()
    assert page.count('<article class="traj"') == 2 and "text view only" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bad JSON" in page and page.count("<img data-img=") == 1
    assert [r["correct"] for r in report.records] == [True, False]


def test_bad_input_errors(tmp_path):
    from vlmrl.cli import main

    with pytest.raises(FileNotFoundError, match="no such file"):
        viewer.build_report(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ids": [1, 2], "response_mask": [0], "turn_ids": [-1, 0]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: field 'response_mask' has 1 entries"):
        viewer.build_report(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        viewer.build_report(bad)
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty")]) == 1


def test_format_trajectory(rollout_trace):
    _, trajs, _ = rollout_trace
    s = viewer.format_trajectory(trajs[1])
    assert "INVALID" in s and "x2 <= x1" in s and "assistant turn 1" in s and "accuracy=0" in s


# --------------------------------------------------------------------------- real browser


@pytest.fixture(scope="session")
def chromium():
    import browser_check

    path, why = browser_check.ensure_chromium()
    if path is None:
        print(f"\nSKIP browser test: {why}")
        pytest.skip(why)
    return path


def test_browser_renders_filters_and_screenshot(chromium, rollout_trace, run_dir, tmp_path):
    import browser_check

    path, trajs, tok_dir = rollout_trace
    out, _ = viewer.build_report(path, out=tmp_path / "report.html", model=tok_dir)
    r = browser_check.selftest(out, chromium)
    e = expect(trajs)
    assert r["errors"] == [] and r["alerts"] == []
    assert r["trajectories"] == e["n"] == r["visible"] == r["visible_after"]
    assert r["images"] == r["images_loaded"] == e["images"]
    assert r["boxes"] == e["boxes"] and r["tool_errors_shown"] == e["toolerr"]
    assert r["filters"] == {"correct": e["correct"], "wrong": e["wrong"], "tool": e["tool"], "notool": e["notool"],
                            "toolerr": e["toolerr"], "truncated": e["truncated"]}
    assert r["filters"]["wrong"] < e["n"]
    assert r["colour_modes"] == ["none", "mask", "turn", "logprob", "advantage", "entropy", "perception_kl"]
    assert r["coloured"]["none"] == 0 and all(r["coloured"][m] > 0 for m in r["colour_modes"][1:])
    assert r["token_spans"] > 100 and r["token_titles"] == r["token_spans"]
    assert r["hostile_text_shown"] and r["injected_elements"] == 0
    shot_dir = Path(os.environ.get("VLMRL_TEST_ARTIFACTS") or tmp_path)
    shot = browser_check.screenshot(out, shot_dir / "viewer.png", hash="colour=advantage", chromium=chromium)
    print(f"\nscreenshot: {shot}")
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        assert len(im.convert("RGB").resize((64, 100)).getcolors(10_000)) > 20  # not a blank page
    # run dir with a step selector; eval-style page loads without errors too
    run_page, _ = viewer.build_report(run_dir, out=tmp_path / "run.html")
    r2 = browser_check.selftest(run_page, chromium)
    assert r2["errors"] == [] and r2["trajectories"] == 12 and r2["step_options"] == 2
    assert r2["images_loaded"] == r2["images"] == 2 * e["images"]


def test_browser_eval_page(chromium, eval_samples, tmp_path):
    import browser_check

    out, _ = viewer.build_report(eval_samples, out=tmp_path / "e.html")
    r = browser_check.selftest(out, chromium)
    assert r["errors"] == [] and r["alerts"] == [] and r["trajectories"] == 2 and r["images_loaded"] == 1
    assert r["filters"]["correct"] == 1 and r["filters"]["toolerr"] == 1 and r["hostile_text_shown"]


# --------------------------------------------------------------------------- tools/


def test_diff_traces(rollout_trace, tmp_path):
    path, trajs, _ = rollout_trace
    a = save_traces(tmp_path / "a.jsonl", [trajs[0]])
    b_t = Trajectory.from_json(trajs[0].to_json())
    b_t.ids = list(b_t.ids)
    k = b_t.prompt_len + 3
    b_t.ids[k] = b_t.ids[k] + 1
    b_t.turns = [b_t.turns[0], b_t.turns[1].replace("seven", "one")]
    b_t.tool_calls[0].record["box_seen"] = [1, 2, 3, 4]
    b_t.rewards = {**b_t.rewards, "accuracy": 0.0}
    b = save_traces(tmp_path / "b.jsonl", [b_t])
    tool = [sys.executable, str(ROOT / "tools" / "diff_traces.py")]
    p = subprocess.run(tool + [str(a), str(b)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert f"first differing token: position {k}" in p.stdout
    assert "turn 1 differs" in p.stdout and "box_seen" in p.stdout and "accuracy" in p.stdout
    same = subprocess.run(tool + [str(a), str(a)], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "identical" in same.stdout
    missing = subprocess.run(tool + [str(a), str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_replay_is_reproducible_and_diffs_clean(tiny_dirs, tmp_path, capsys):
    """tools/replay.py on a tiny checkpoint: same seed -> identical traces; the trace opens in the viewer."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import diff_traces
        import replay
    finally:
        sys.path.remove(str(ROOT / "tools"))
    _picture().save(tmp_path / "img0.png")
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"id": "a", "image": "img0.png", "question": "What digit?", "answer": "7"}) + "\n"
        + json.dumps({"id": "b", "image": "img0.png", "question": "How many circles?", "answer": "1",
                      "meta": {"gt_boxes": [[260, 250, 400, 390]]}}) + "\n")
    model = tiny_dirs["qwen2_5_vl"]

    def args(out, seed=3, row=1):
        return ["--model", str(model), "--data", str(tmp_path / "data.jsonl"), "--row", str(row), "--seed", str(seed),
                "--group-size", "2", "--max-new-tokens", "12", "--out", str(tmp_path / out)]

    assert replay.main(args("a.jsonl")) == 0
    assert replay.main(args("b.jsonl")) == 0
    printed = capsys.readouterr().out
    assert "Q: How many circles?" in printed and "saved 2 trajectories" in printed
    assert diff_traces.main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
    assert "all identical" in capsys.readouterr().out
    assert replay.main(args("c.jsonl", seed=4)) == 0
    assert diff_traces.main([str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl")]) == 1
    out, rep = viewer.build_report(tmp_path / "a.jsonl", model=model)
    assert len(rep.records) == 2 and rep.tokenizer == str(model)
    assert replay.main(args("d.jsonl", row=5)) == 2
    assert "row 5 out of range" in capsys.readouterr().err
