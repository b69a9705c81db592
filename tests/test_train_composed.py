"""Composed rewards in training: recipes/composed.yaml (a user reward file) for one step on a tiny model, and
normalize_then_sum under every algorithm, with unequal groups, checked against vlmrl.algos.compose."""

import json
from pathlib import Path

import pytest
import torch

from vlmrl.algos import composed_advantages, expand_group_keep, signal_group_std
from vlmrl.config import load_config
from vlmrl.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

VARY = ("def by_length(response, sample):\n"
        "    return {'reward': len(response) % 7 / 6.0, 'chars': float(len(response))}\n"
        "def by_parity(response, sample):\n"
        "    return 100.0 * (len(response) % 2)\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vlmrl.data.synthetic import make_zoom_dataset

    root = tmp_path_factory.mktemp("composed_data")
    make_zoom_dataset(root, n=8, n_test=2, seed=0)
    return root / "train.jsonl"


def _base(tiny_dirs, data, out):
    return [f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={data}", "data.eval=", f"train.output_dir={out}",
            "train.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=8", "model.dtype=float32",
            "model.device=cpu", "train.lr=1e-3", "train.plot=false", "train.eval_every=0", "train.trace_samples=8"]


def test_composed_recipe_trains_a_step_with_its_user_reward_file(tiny_dirs, data, tmp_path, monkeypatch):
    """recipes/composed.yaml as a user runs it from the repository root: its reward file is loaded, every part is
    logged (mean/std, group std, share of the advantage variance) and plotted."""
    from vlmrl.plots import PANELS, panel_series, read_metrics as plot_metrics
    from vlmrl.train.run import run_training

    monkeypatch.chdir(ROOT)
    # the recipe as shipped, but a length limit an untrained model's 8-token answers cross (so the step has a signal)
    text = (ROOT / "recipes" / "composed.yaml").read_text()
    assert "max_words: 24" in text
    recipe = tmp_path / "composed.yaml"
    recipe.write_text(text.replace("max_words: 24", "max_words: 1"))
    cfg = load_config(recipe, _base(tiny_dirs, data, tmp_path / "run") + ["train.steps=1"])
    assert [p.name.rsplit(":", 1)[-1] for p in cfg.reward.parts] == ["accuracy", "format", "length_penalty"]
    out = run_training(cfg)
    (row,) = read_metrics(out / "metrics.jsonl")
    for label in ("accuracy", "format", "length_penalty"):
        assert f"reward/{label}/mean" in row and f"reward_group_std/{label}" in row and f"adv_share/{label}" in row
    assert row["reward/words/mean"] > 0 and row["reward/reward_errors/mean"] == 0.0
    assert row["reward_group_std/length_penalty"] > 0 and row["adv_share/length_penalty"] == pytest.approx(1.0)
    traced = [json.loads(x) for x in (out / "traces" / "step-000001.jsonl").read_text().splitlines()]
    assert all("length_penalty" in t["rewards"] and "words" in t["rewards"] for t in traced)
    rows, _ = plot_metrics(out / "metrics.jsonl")  # what the plot panels draw (tests/test_plots.py draws them)
    panels = {p.name: p for p in PANELS}
    assert set(panel_series(panels["reward_share"], rows)) == {f"adv_share/{k}" for k in
                                                               ("accuracy", "format", "length_penalty")}
    assert len(panel_series(panels["reward_group_std"], rows)) == 3


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "papo", "dtpo"])
def test_normalize_then_sum_under_every_algorithm(algo, tiny_dirs, data, tmp_path, monkeypatch):
    """One step with groups of 2, 3 and 4 (the samples_per_prompt seam), two parts on very different scales
    (by_length in [0, 1], by_parity in {0, 100}): the trainer's per-sequence advantages are exactly
    composed_advantages of the logged parts (DTPO: A_oc + 0.3 A_tool on the first turn, each from its role's
    parts), and the per-part shares are logged."""
    from vlmrl.train.trainer import Trainer

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    user = tmp_path / "r.py"
    user.write_text(VARY)
    parts = f"[{{name: '{user}:by_length'}}, {{name: '{user}:by_parity', weight: 0.5}}]"
    extra = {"grpo": [], "dr_grpo": ["algo.name=dr_grpo"],
             "dapo": ["algo.name=dapo", "algo.dynamic_sampling=true", "algo.filter_metric=total"],
             "gspo": ["algo.name=gspo"], "papo": ["algo.papo.enabled=true"],
             "dtpo": ["algo.name=dtpo", "rollout.mode=tool", "rollout.max_turns=2"]}[algo]
    if algo == "dtpo":
        parts = (f"[{{name: dtpo_accuracy}}, {{name: '{user}:by_length'}}, "
                 f"{{name: '{user}:by_parity', weight: 0.5, role: tool}}]")
    cfg = load_config(None, _base(tiny_dirs, data, tmp_path / "run") + extra + [
        f"reward.parts={parts}", "reward.aggregation=normalize_then_sum", "train.prompts_per_step=3"])
    sizes = [2, 3, 4]

    class Unequal(Trainer):
        def samples_per_prompt(self, samples):
            return sizes[:len(samples)]

    tr = Unequal(cfg)
    metrics, trajs = tr.step()
    ids = torch.tensor([t.group_id for t in trajs])
    first = torch.tensor([t.token_stats["advantage"][t.response_mask.index(1)] for t in trajs])

    def col(label):
        return [t.rewards[label] for t in trajs]

    rows = torch.ones(len(trajs), dtype=torch.bool)
    if algo == "dapo":  # dropped groups (no part varies) do not train and are not in the batch statistics
        std = signal_group_std(torch.tensor([col("by_length"), col("by_parity")]).T, [1.0, 0.5], ids,
                               "normalize_then_sum")
        kept = expand_group_keep(std >= 1e-4, ids)
        rows = kept if kept.any() else rows

    scale = "none" if algo == "dr_grpo" else "group"
    if algo == "dtpo":
        a_oc = composed_advantages(torch.tensor([col("dtpo_accuracy"), col("by_length")]).T, [1.0, 1.0], ids,
                                   "normalize_then_sum", rows=rows)
        a_tool = composed_advantages(torch.tensor([col("by_parity")]).T, [0.5], ids, "normalize_then_sum", rows=rows)
        expected = a_oc + 0.3 * a_tool
        labels = ["dtpo_accuracy", "by_length", "by_parity"]
    else:
        expected = composed_advantages(torch.tensor([col("by_length"), col("by_parity")]).T, [1.0, 0.5], ids,
                                       "normalize_then_sum", scale=scale, rows=rows)
        labels = ["by_length", "by_parity"]
    assert first.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert first.abs().sum() > 0, "the parts should vary within some group"
    assert len(trajs) == 9 or algo == "dapo"
    shares = [metrics[f"adv_share/{k}"] for k in labels]
    assert all(s is not None for s in shares) and sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert all(metrics[f"reward_group_std/{k}"] is not None for k in labels)
