"""Unequal groups end to end: one training step whose three prompts get 2, 5 and 8 samples (the
`Trainer.samples_per_prompt` seam), with advantages, micro-batches and PAPO's masked images taken per group id."""

import math
import statistics
from collections import Counter
from pathlib import Path

import pytest

from vlmrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _z(values):
    """GRPO's per-group z-score (unbiased std, eps 1e-6); 0 for a group whose values are all equal."""
    if max(values) == min(values):
        return [0.0] * len(values)
    mean, std = statistics.mean(values), statistics.stdev(values)
    return [(v - mean) / (std + 1e-6) for v in values]


@pytest.mark.parametrize("recipe", ["grpo", "quickstart"])
def test_one_step_with_groups_of_two_five_and_eight(recipe, tiny_dirs, tmp_path, monkeypatch):
    """GRPO (with PAPO's masked pass) and DTPO (tool mode, per-token advantages from two rewards)."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.trainer import Trainer

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=8, n_test=2, seed=0)
    extra = ["algo.papo.enabled=true"]
    if recipe == "grpo":  # a reward that varies with the response, so groups have non-zero advantages
        reward = tmp_path / "r.py"
        reward.write_text("def by_length(response, sample):\n    return len(response) % 5 / 4.0\n")
        extra.append(f"reward.name={reward}:by_length")
    cfg = load_config(ROOT / "recipes" / f"{recipe}.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.prompts_per_step=3", "rollout.max_new_tokens=6",
        "train.micro_batch_size=4", "model.dtype=float32", "model.device=cpu", "train.lr=1e-3"] + extra)
    sizes = [2, 5, 8]

    class Unequal(Trainer):
        def samples_per_prompt(self, samples):
            return sizes[:len(samples)]

    tr = Unequal(cfg)
    seen = {"batch": None, "rows": []}
    update, micro_loss = tr.update, tr._micro_loss

    def spy_update(batch):
        seen["batch"] = batch
        return update(batch)

    def spy_micro_loss(batch, rows, *a):
        seen["rows"].append(list(rows))
        return micro_loss(batch, rows, *a)

    tr.update, tr._micro_loss = spy_update, spy_micro_loss
    if recipe == "quickstart":  # an untrained model earns equal DTPO rewards: vary them by row
        score = tr._score

        def varied_score(trajs, groups):
            total, parts = score(trajs, groups)
            parts["outcome"] = [o + 0.1 * (i % 3) for i, o in enumerate(parts["outcome"])]
            parts["tool"] = [x + 0.05 * (i % 2) for i, x in enumerate(parts["tool"])]
            return [o + x for o, x in zip(parts["outcome"], parts["tool"])], parts

        tr._score = varied_score
    metrics, trajs = tr.step()

    # the loss sees three groups of 2, 5 and 8 rows
    batch = seen["batch"]
    assert Counter(batch.group_ids.tolist()) == {0: 2, 1: 5, 2: 8}
    assert [t.group_id for t in trajs] == [0] * 2 + [1] * 5 + [2] * 8 and metrics["num_trajectories"] == 15
    assert len({t.sample_id for t in trajs}) == 3
    # per group: a row's first response token (turn 0) gets z(total) (GRPO) or z(outcome) + 0.3 z(tool) (DTPO)
    for g in range(3):
        members = [t for t in trajs if t.group_id == g]
        if recipe == "grpo":
            want = _z([t.rewards["total"] for t in members])
        else:
            want = [o + 0.3 * a for o, a in zip(_z([t.rewards["outcome"] for t in members]),
                                                 _z([t.rewards["tool"] for t in members]))]
        first = [t.token_stats["advantage"][t.prompt_len] for t in members]
        assert first == pytest.approx(want, abs=1e-5)
        assert math.fsum(first) == pytest.approx(0.0, abs=1e-5)
        if recipe == "grpo":  # one advantage per sequence, on every response token
            assert all(len({a for a, m in zip(t.token_stats["advantage"], t.response_mask) if m}) == 1 for t in members)
    assert any(t.token_stats["advantage"][t.prompt_len] != 0 for t in trajs)  # the rewards did vary
    # micro-batches of at most 4 rows keep each group's rows together (ordered by group id), all 15 rows once
    order = [batch.group_ids[i].item() for rows in seen["rows"] for i in rows]
    assert all(len(rows) <= 4 for rows in seen["rows"]) and order == sorted(order) and len(order) == 15
    assert sorted(i for rows in seen["rows"] for i in rows) == list(range(15))
    # PAPO: one masked copy of a prompt's image per group, shared by its rows
    first = [v[0] for v in batch.masked_vision]
    for g in range(3):
        rows = [i for i, t in enumerate(trajs) if t.group_id == g]
        assert all(first[i] is first[rows[0]] for i in rows)
    assert len({id(first[i]) for i in (0, 2, 7)}) == 3
    assert metrics["perception_kl"] is not None and math.isfinite(metrics["loss/total"])
