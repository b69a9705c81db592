"""SFT warm start: scripted demonstrations through the rollout engine, loss goes down, format is learned."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vlmrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dirs):
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("sft_assets")
    make_zoom_dataset(root / "data", n=12, n_test=4, seed=0)
    return {"model": tiny_dirs["qwen2_5_vl"], "data": root / "data", "root": root}


def _overrides(assets, out, **sft):
    base = {"steps": 30, "batch_size": 4, "lr": 3e-3, "tool_fraction": 1.0, "tool_fraction_no_zoom": 0.0,
            "box": "tight", "output": "", "warmup_steps": 0, "lr_schedule": "constant", "adam_beta2": 0.999}  # "": <output_dir>/sft_model
    base.update(sft)
    return [f"model.path={assets['model']}", f"data.train={assets['data'] / 'train.jsonl'}",
            f"train.output_dir={out}", "model.dtype=float32", "model.device=cpu", "train.seed=0",
            "rollout.max_new_tokens=40", "rollout.prompt_style=compact"] + [f"sft.{k}={v}" for k, v in base.items()]


def _cfg(assets, out, **sft):
    return load_config(ROOT / "recipes" / "quickstart.yaml", _overrides(assets, out, **sft))


def _rows(assets):
    from vlmrl.data import load_dataset

    ds = load_dataset(assets["data"] / "train.jsonl")
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def trained(assets):
    """One SFT run shared by the tests below (the expensive part)."""
    import os

    os.environ["VLMRL_NO_PROGRESS"] = "1"
    from vlmrl.train.sft import run_sft

    cfg = _cfg(assets, assets["root"] / "run")
    out = run_sft(cfg, verbose=False)
    return cfg, out


def test_demonstrations(assets, tiny_policies):
    from vlmrl.rollout import box_coverage, make_tool
    from vlmrl.train.sft import build_demos

    cfg = _cfg(assets, assets["root"] / "unused")
    pol = tiny_policies["qwen2_5_vl"]
    rows = _rows(assets)
    zoom = [s for s in rows if s.meta["needs_zoom"]][:2]
    plain = [s for s in rows if not s.meta["needs_zoom"]][:2]
    assert zoom and plain
    trajs, skipped = build_demos(pol, zoom + plain, cfg)
    assert not skipped and len(trajs) == 4
    for t, s in zip(trajs[:2], zoom):
        assert len(t.turns) == 2 and t.finish_reason == "answered"
        call = make_tool(cfg.rollout.tool, cfg.rollout.tool_name).read(t.turns[0])
        assert call is not None and call.ok
        rec = t.tool_calls[0]
        assert rec.valid, rec.error
        assert max(box_coverage(rec.box_original, gt) for gt in s.meta["gt_boxes"]) >= 0.5
        assert t.turns[1] == f"<think>Now I can read it.</think><answer>{s.answer}</answer>"
        # the observation (user turn with the crop) is not trained on; both assistant turns are
        obs = [i for i, (m, k) in enumerate(zip(t.response_mask, t.turn_ids)) if k == 0 and m == 0]
        assert obs and all(t.ids[i] is not None for i in obs)
        assert pol.image_token_id in [t.ids[i] for i in obs]
        assert all(t.response_mask[i] == 0 for i in range(t.prompt_len))
        assert sum(t.response_mask) > 0 and len(t.vision) == 2
    for t, s in zip(trajs[2:], plain):
        assert t.turns == [f"<think>I can see it.</think><answer>{s.answer}</answer>"] and not t.tool_calls
    # tool_fraction=0 and direct mode give direct demos only (a direct-mode recipe trains GRPO, not DTPO)
    for c in (_cfg(assets, assets["root"] / "unused", tool_fraction=0.0),
              load_config(ROOT / "recipes" / "quickstart.yaml", _overrides(assets, assets["root"] / "unused")
                          + ["rollout.mode=direct", "algo.name=grpo", "reward.name=accuracy_format"])):
        trajs, _ = build_demos(pol, zoom, c)
        assert all(len(t.turns) == 1 and "<answer>" in t.turns[0] for t in trajs)


def test_demonstrations_with_the_nested_crop_tool(assets, tiny_policies, tmp_path):
    """The demo call is the recipe's tool's (nested_crop: on image 0); a non-crop tool is refused clearly."""
    from vlmrl.train.sft import build_demos

    pol, zoom = tiny_policies["qwen2_5_vl"], [s for s in _rows(assets) if s.meta["needs_zoom"]][:1]
    cfg = load_config(ROOT / "recipes" / "quickstart.yaml",
                      _overrides(assets, assets["root"] / "unused") + ["rollout.tool=nested_crop", "rollout.max_turns=3"])
    (t,), skipped = build_demos(pol, zoom, cfg)
    assert not skipped and t.tool_calls[0].valid and t.tool_calls[0].arguments["image_index"] == 0
    user = tmp_path / "user_tool.py"
    user.write_text("from vlmrl.rollout.tools import Tool\n\nclass Count(Tool):\n    pass\n")
    cfg = load_config(ROOT / "recipes" / "quickstart.yaml",
                      _overrides(assets, assets["root"] / "unused") + [f"rollout.tool={user}:Count"])
    with pytest.raises(ValueError, match="need a crop tool.*Count"):
        build_demos(pol, zoom, cfg)


def test_restate_question_opens_the_first_thought(assets, tiny_policies):
    from vlmrl.train.sft import build_demos

    cfg = load_config(ROOT / "recipes" / "quickstart.yaml",
                      _overrides(assets, assets["root"] / "unused") + ["sft.restate_question=true"])
    pol = tiny_policies["qwen2_5_vl"]
    rows = _rows(assets)
    zoom = [s for s in rows if s.meta["needs_zoom"]][0]
    plain = [s for s in rows if not s.meta["needs_zoom"]][0]
    trajs, _ = build_demos(pol, [zoom, plain], cfg)
    q = zoom.question.strip()
    assert trajs[0].turns[0].startswith(f"<think>{q} The detail is too small to read. I will zoom in.</think><tool_call>")
    assert trajs[0].turns[1] == f"<think>Now I can read it.</think><answer>{zoom.answer}</answer>"  # not restated
    assert trajs[1].turns == [f"<think>{plain.question.strip()} I can see it.</think><answer>{plain.answer}</answer>"]


def test_sft_lowers_loss_and_saves(trained):
    from vlmrl.models.policy import Policy

    cfg, out = trained
    assert out == Path(cfg.train.output_dir) / "sft_model"
    rows = [json.loads(line) for line in open(out.parent / "sft_metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 31))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    print(f"sft loss first-5 {first:.3f} -> last-5 {last:.3f}")
    assert last < 0.7 * first, (first, last)
    pol = Policy.load(out, dtype="float32", device="cpu")
    assert pol.family == "qwen2_5_vl"


def test_sft_learns_the_format(assets, trained, tiny_policies):
    from vlmrl.models.policy import Policy
    from vlmrl.rollout.engine import RolloutEngine

    cfg, out = trained
    rows = [s for s in _rows(assets) if not s.meta["needs_zoom"]][:3]
    rc = replace(cfg.rollout, temperature=0.0, max_new_tokens=24)

    def n_answers(pol):
        trajs = RolloutEngine(pol, rc).rollout(rows, 1, generator=torch.Generator().manual_seed(0))
        return sum("<answer>" in t.final_text for t in trajs)

    before = n_answers(tiny_policies["qwen2_5_vl"])
    after = n_answers(Policy.load(out, dtype="float32", device="cpu"))
    print(f"rows with <answer> before/after SFT: {before}/{after}")
    assert after > before and after >= 2, (before, after)


def test_cli(assets, tmp_path, monkeypatch, capsys):
    from vlmrl.cli import main

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    import shutil

    data = tmp_path / "data"
    shutil.copytree(assets["data"], data)
    (data / "images" / "train-000000.png").write_bytes(b"not a png")  # a bad row is skipped, not fatal
    out = tmp_path / "warm"
    args = _overrides(assets, tmp_path / "run", steps=4, batch_size=12, warmup_steps=2, lr_schedule="cosine",
                      adam_beta2=0.95) + [f"sft.output={out}", f"data.train={data / 'train.jsonl'}"]
    assert main(["sft", str(ROOT / "recipes" / "quickstart.yaml"), *args]) == 0
    assert "1 rows skipped" in capsys.readouterr().out
    assert (out / "config.json").exists() and (tmp_path / "sft_metrics.jsonl").exists()
    # lr 3e-3: linear warm-up over 2 steps (1/2, 2/2), then cosine from 1 to 0 over the last 2 (1, 1/2)
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "sft_metrics.jsonl")]
    assert lrs == pytest.approx([1.5e-3, 3e-3, 3e-3, 1.5e-3])
    for bad in ("sft.lr_schedule=step", "sft.adam_beta2=1.0"):
        assert main(["sft", str(ROOT / "recipes" / "quickstart.yaml"), *args, bad]) != 0
        assert bad.split("=")[0] in capsys.readouterr().err
    assert main(["sft", str(ROOT / "recipes" / "quickstart.yaml"), "sft.stepz=2"]) != 0


def test_make_scheduler_values_and_early_errors():
    from vlmrl.train.schedule import make_scheduler

    def lrs(kind, warmup, total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = make_scheduler(opt, kind, warmup, total), []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    assert lrs("linear", 2, 6) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lrs("cosine", 0, 3) == pytest.approx([1.0, 0.75, 0.25])
    assert lrs("constant", 3, 4) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    # a bad kind is refused at once even with a warm-up (the schedule is not consulted before step `warmup`)
    with pytest.raises(ValueError, match=r"train\.lr_schedule must be one of constant, linear, cosine"):
        make_scheduler(opt, "step", 5, 10)
    with pytest.raises(ValueError, match=r"sft\.warmup_steps >= 0"):
        make_scheduler(opt, "cosine", -1, 10, section="sft")


def test_sft_data_is_the_warm_starts_own_rows(assets, tmp_path):
    """sft.data names the warm start's rows (the digits recipe's sft.jsonl); "" keeps data.train. The rows are
    drawn from that file (an empty one is an error naming it)."""
    from vlmrl.train.sft import _load_samples, sft_data

    train = assets["data"] / "train.jsonl"
    one = assets["data"] / "one.jsonl"  # beside train.jsonl: image paths are relative to the dataset root
    row = json.loads(train.read_text().splitlines()[3])
    one.write_text(json.dumps(row) + "\n")
    cfg = _cfg(assets, tmp_path / "run")
    assert sft_data(cfg) == str(train)
    cfg = replace(cfg, sft=replace(cfg.sft, data=str(one)))
    assert sft_data(cfg) == str(one)
    samples, skipped = _load_samples(cfg, 4, seed=0)
    assert not skipped and {s.question for s in samples} == {row["question"]}
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        _load_samples(replace(cfg, sft=replace(cfg.sft, data=str(tmp_path / "empty.jsonl"))), 4, seed=0)
