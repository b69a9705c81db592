"""Training under bad input and faults, end to end on the tiny model: bad images are skipped and counted in
metrics.jsonl, broken reward functions are counted, NaN/inf stop the run only after
train.max_nonfinite_steps, a full disk or a SIGKILL during a checkpoint save keeps the previous checkpoint
and the run resumes from it as if never stopped."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from procs import kill_when
import torch
from PIL import Image

from vlmrl.config import load_config
from vlmrl.train.checkpoint import CheckpointError, latest_checkpoint
from vlmrl.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _png(size=(56, 56), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# rows in file order (the tests train with data.shuffle=false): G = a good image, the rest are bad
BAD_IMAGES = {
    "truncated.png": _png()[:60],
    "empty.png": b"",
    "text.jpg": b"this is not a JPEG\n" * 4,
    "bomb.png": _png((200, 200)),  # 40000 pixels, over the cap of data.max_image_pixels=10000 below
    "thin.png": _png((1, 300)),
}
ORDER = ["G", "truncated.png", "G", "empty.png", "text.jpg", "G", "bomb.png", "G", "thin.png", "G", "G", "G"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_data")
    (root / "good.png").write_bytes(_png())
    for name, blob in BAD_IMAGES.items():
        (root / name).write_bytes(blob)
    rows = [{"id": f"r{i}", "question": "What colour is the image?", "answer": "red", "answer_type": "word",
             "images": ["good.png" if name == "G" else name]} for i, name in enumerate(ORDER)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    good = [r for r, name in zip(rows, ORDER) if name == "G"]
    (root / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    return root


def overrides(model, data_file, out, steps=2, **extra):
    base = {"model.path": model, "data.train": data_file, "data.eval": "", "data.shuffle": "false",
            "data.max_image_pixels": 10000, "train.output_dir": out, "train.steps": steps, "train.seed": 1,
            "train.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 6, "train.eval_every": 0,
            "train.save_every": 0, "model.dtype": "float32", "model.device": "cpu", "train.plot": "false",
            "train.lr": "1e-3"}
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def expected_skips(steps: int, per_step: int = 2) -> list[int]:
    """Cumulative bad rows the prompt stream passes over, step by step (file order, no shuffle)."""
    out, pos, bad = [], 0, 0
    for _ in range(steps):
        good = 0
        while good < per_step:
            if ORDER[pos % len(ORDER)] == "G":
                good += 1
            else:
                bad += 1
            pos += 1
        out.append(bad)
    return out


def _train(args, monkeypatch):
    from vlmrl.train.run import run_training

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    return run_training(load_config(ROOT / "recipes" / "grpo.yaml", args))


def test_bad_images_are_skipped_and_counted_in_metrics(tiny_dirs, data, tmp_path, monkeypatch, capsys):
    """Reliability[train]: bad images in a training set (truncated PNG, 0-byte file, text named .jpg, over data.max_image_pixels, aspect ratio 300) | each row is skipped when reached, its error (file, row, field) printed to stderr, and the running count is metrics.jsonl's skipped_samples; the count survives a resume"""
    model = tiny_dirs["qwen2_5_vl"]
    out = tmp_path / "run"
    _train(overrides(model, data / "train.jsonl", out, steps=2, train__save_every=1), monkeypatch)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["skipped_samples"] for r in rows] == expected_skips(2) == [1, 4]
    err = capsys.readouterr().err
    for i, name in enumerate(ORDER[:7]):
        if name != "G":
            assert f"train.jsonl, row {i} (line {i + 1}), field 'images[0]'" in err, (name, err)
    assert "decompression-bomb guard" in err and "over the cap of 10000" in err
    # resumed for one more step: the count goes on from the checkpoint (the 1x300 image is row 8)
    _train(overrides(model, data / "train.jsonl", out, steps=3), monkeypatch)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["skipped_samples"] for r in rows] == expected_skips(3) == [1, 4, 5]
    assert "aspect ratio 300" in capsys.readouterr().err


def test_bad_images_in_the_eval_split_are_counted(tiny_dirs, data, tmp_path, monkeypatch):
    """Reliability[train]: bad images in the periodic-eval split (data.eval) | skipped, counted as eval/skipped_samples; training goes on"""
    out = tmp_path / "run"
    _train(overrides(tiny_dirs["qwen2_5_vl"], data / "good.jsonl", out, steps=1, data__eval=data / "train.jsonl",
                     train__eval_every=1, train__eval_samples=9), monkeypatch)
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["eval/skipped_samples"] == sum(name != "G" for name in ORDER[:9]) == 5
    assert row["eval/accuracy"] is not None


REWARD = """
import math
def flaky(response, sample):
    k = len(response) % 4
    if k == 0:
        raise RuntimeError("reward fn failed")
    if k == 1:
        return float("nan")
    if k == 2:
        return {"reward": math.inf}
    return 0.5
"""


def test_reward_fn_that_raises_or_returns_nan_is_counted(tiny_dirs, data, tmp_path, monkeypatch):
    """Reliability[faults]: a user reward file (reward.name: file.py:fn) whose function raises, returns NaN or returns inf | that trajectory's reward is 0 and counted in reward_errors (per trajectory in the traces, as a mean in metrics.jsonl); training goes on"""
    fn = tmp_path / "flaky.py"
    fn.write_text(REWARD)
    out = tmp_path / "run"
    _train(overrides(tiny_dirs["qwen2_5_vl"], data / "good.jsonl", out, steps=2, reward__name=f"{fn}:flaky",
                     rollout__max_new_tokens=12), monkeypatch)
    rows = read_metrics(out / "metrics.jsonl")
    n_err = 0
    for r in rows:
        trajs = [json.loads(x) for x in (out / "traces" / f"step-{r['step']:06d}.jsonl").read_text().splitlines()]
        assert len(trajs) == 4  # every trajectory of the step is traced
        errors = [float(len(t["turns"][-1]) % 4 != 3) for t in trajs]
        assert [t["rewards"]["reward_errors"] for t in trajs] == errors
        assert [t["rewards"]["total"] for t in trajs] == [0.0 if e else 0.5 for e in errors]
        assert r["reward/reward_errors/mean"] == pytest.approx(sum(errors) / len(errors))
        assert r["loss/total"] is not None and "nonfinite" not in r
        n_err += sum(errors)
    assert 0 < n_err < 8, "the responses should exercise both paths"


def test_reward_overflow_trips_the_nonfinite_guard(tiny_dirs, data, tmp_path, monkeypatch):
    """Reliability[faults]: a user reward file returning values that overflow float32 (1e39) next to normal ones, so advantages and the loss become NaN | each such update is skipped (weights unchanged) and counted in nonfinite_steps; train.max_nonfinite_steps in a row stop the run with FloatingPointError"""
    fn = tmp_path / "huge.py"
    fn.write_text("calls = [0]\n"
                  "def huge(response, sample):  # 1e39, 0, 1e39, 0, ...: every group of 2 mixes inf and 0\n"
                  "    calls[0] += 1\n"
                  "    return 1e39 if calls[0] % 2 else 0.0\n")
    out = tmp_path / "run"
    args = overrides(tiny_dirs["qwen2_5_vl"], data / "good.jsonl", out, steps=5, reward__name=f"{fn}:huge",
                     train__max_nonfinite_steps=2)
    from vlmrl.train import trainer as trainer_mod

    seen = {}
    orig_init = trainer_mod.Trainer.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        seen["trainer"] = self
        seen["before"] = {n: p.detach().clone() for n, p in self.policy.model.named_parameters()}

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", init)
    with pytest.raises(FloatingPointError, match=r"2 steps in a row had a NaN/inf loss.*max_nonfinite_steps=2"):
        _train(args, monkeypatch)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["nonfinite_steps"] == 1 and rows[0]["grad_norm"] is None
    after = dict(seen["trainer"].policy.model.named_parameters())
    assert all(torch.equal(seen["before"][n], after[n].detach()) for n in seen["before"])


def _enospc_on(step_dir: str):
    real = torch.save

    def save(obj, f, *a, **k):
        if step_dir in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    return save


def test_full_disk_during_a_training_checkpoint(tiny_dirs, data, tmp_path, monkeypatch):
    """Reliability[faults]: the disk fills up (ENOSPC) while vlmrl train writes a checkpoint | the run stops with CheckpointError naming the step, the reason and the intact previous checkpoint; no partial checkpoint is left; resuming continues from the previous one"""
    import vlmrl.train.checkpoint as ckpt_mod

    out = tmp_path / "run"
    args = overrides(tiny_dirs["qwen2_5_vl"], data / "good.jsonl", out, steps=3, train__save_every=1)
    real_save = ckpt_mod.torch.save
    monkeypatch.setattr(ckpt_mod.torch, "save", _enospc_on(".tmp-step-000002-"))
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left on device; the previous checkpoint "
                                              r"step-000001 is intact"):
        _train(args, monkeypatch)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]  # step 2 ran; its save failed
    _train(args, monkeypatch)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]  # step 2 redone, not doubled
    assert latest_checkpoint(out).name == "step-000003"


_KILL_DURING_SAVE = textwrap.dedent("""
    import sys, time, torch
    import vlmrl.train.checkpoint as ckpt
    marker = sys.argv[1]
    real = torch.save
    def slow(obj, f, *a, **k):
        real(obj, f, *a, **k)
        if ".tmp-step-000002-" in str(f) and str(f).endswith("optimizer.pt"):
            open(marker, "w").write("saving")
            time.sleep(300)
    ckpt.torch.save = slow
    from vlmrl.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_sigkill_during_a_training_checkpoint_then_resume(tiny_dirs, data, tmp_path, monkeypatch):
    """Reliability[faults]: SIGKILL while vlmrl train writes a checkpoint | the half-written .tmp-* directory is ignored and removed; resume=auto picks the previous complete checkpoint and the run ends with the same metrics and weights as an uninterrupted one"""
    model = tiny_dirs["qwen2_5_vl"]
    full = tmp_path / "full"
    _train(overrides(model, data / "good.jsonl", full, steps=3, train__save_every=1), monkeypatch)
    part, marker = tmp_path / "part", tmp_path / "saving"
    args = overrides(model, data / "good.jsonl", part, steps=3, train__save_every=1)
    env = dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_DURING_SAVE, str(marker), "train",
                             str(ROOT / "recipes" / "grpo.yaml"), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    kill_when(proc, marker.exists, "the step-2 save")
    ckpts = part / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".tmp-")) == ["step-000001"]
    assert any(p.name.startswith(".tmp-step-000002-") for p in ckpts.iterdir())
    assert latest_checkpoint(part).name == "step-000001"
    _train(args, monkeypatch)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000003"]  # keep_last=2, leftover gone
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k.startswith("time/"):
                continue
            assert rb[k] == (pytest.approx(v, rel=1e-4, abs=1e-6) if isinstance(v, float) else v), (ra["step"], k)
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "model" / "model.safetensors")), load_file(str(part / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
