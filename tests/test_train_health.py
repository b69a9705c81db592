"""Degenerate-run warnings (vlmrl/train/health.py) on synthetic metric sequences, and their flags in a run's
metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmrl.config import ConfigError, HealthConfig, load_config
from vlmrl.train.health import FLAGS, HealthMonitor, entropy_collapsed, reward_up_eval_down, zero_std_streak


def test_reward_up_eval_down_values():
    # (training reward, held-out accuracy) at each eval: the first real-data run, 0.42 -> 0.64 vs 39.5 -> 32.0
    evals = [(0.42, 0.395), (0.50, 0.37), (0.64, 0.32)]
    assert reward_up_eval_down(evals, window=3, min_eval_drop=0.02, min_reward_rise=0.02)
    assert not reward_up_eval_down(evals[:2], window=3, min_eval_drop=0.02, min_reward_rise=0.02)  # too few evals
    assert not reward_up_eval_down(evals, window=3, min_eval_drop=0.1, min_reward_rise=0.02)  # dropped 0.075 < 0.1
    assert not reward_up_eval_down(evals, window=3, min_eval_drop=0.02, min_reward_rise=0.3)  # rose 0.22 < 0.3
    assert not reward_up_eval_down([(0.4, 0.3), (0.5, 0.35), (0.6, 0.4)], 3, 0.02, 0.02)  # both rise: healthy
    assert not reward_up_eval_down([(0.6, 0.4), (0.5, 0.35), (0.4, 0.3)], 3, 0.02, 0.02)  # both fall: not this check
    # only the last `window` evals count: an early dip is forgotten
    assert not reward_up_eval_down([(0.1, 0.9), (0.2, 0.3), (0.3, 0.35), (0.4, 0.4)], 3, 0.02, 0.02)
    assert reward_up_eval_down([(0.1, 0.9), (0.2, 0.3), (0.3, 0.35), (0.4, 0.4)], 4, 0.02, 0.02)


def test_zero_std_streak_and_entropy_collapse_values():
    assert zero_std_streak([0.95, 0.2, 0.9, 1.0, 0.95], 0.9) == 3
    assert zero_std_streak([0.95, 0.5], 0.9) == 0
    assert zero_std_streak([1.0, None, 1.0], 0.9) == 1  # a missing value breaks the run
    assert zero_std_streak([], 0.9) == 0
    # start mean (2+2+2)/3 = 2; last three (0.3+0.3+0.3)/3 = 0.3 < 0.2*2 = 0.4: collapsed
    assert entropy_collapsed([2, 2, 2, 1, 0.3, 0.3, 0.3], steps=3, ratio=0.2)
    assert not entropy_collapsed([2, 2, 2, 1, 0.5, 0.5, 0.5], steps=3, ratio=0.2)  # 0.5 >= 0.4
    assert not entropy_collapsed([2, 2, 0.1, 0.1, 0.1], steps=3, ratio=0.2)  # needs 2 x steps values
    assert not entropy_collapsed([0, 0, 0, 0, 0, 0], steps=3, ratio=0.2)  # no positive start
    assert entropy_collapsed([2, None, float("nan"), 2, 2, 0.1, 0.1, 0.1], steps=3, ratio=0.2)  # gaps skipped


def test_monitor_flags_and_warns_once(capsys):
    cfg = HealthConfig(eval_window=2, zero_std_steps=2, entropy_steps=1, entropy_ratio=0.5)
    mon = HealthMonitor(cfg)
    seq = [  # step metrics; eval/accuracy at steps 2 and 4
        {"reward/mean": 0.2, "zero_std_frac": 0.95, "entropy/policy": 1.0},
        {"reward/mean": 0.4, "zero_std_frac": 0.5, "entropy/policy": 0.9, "eval/accuracy": 0.5},
        {"reward/mean": 0.6, "zero_std_frac": 0.95, "entropy/policy": 0.8},
        {"reward/mean": 0.8, "zero_std_frac": 0.95, "entropy/policy": 0.4, "eval/accuracy": 0.4},
        {"reward/mean": 0.9, "zero_std_frac": 0.95, "entropy/policy": 0.3},
        {"reward/mean": 0.9, "zero_std_frac": 0.1, "entropy/policy": 0.6},
    ]
    flags = [mon.update(i + 1, m) for i, m in enumerate(seq)]
    assert all(set(f) == set(FLAGS) for f in flags)
    # rewards since the previous eval: (0.2+0.4)/2 = 0.3 at the first, (0.6+0.8)/2 = 0.7 at the second; acc 0.5 -> 0.4
    assert [f["health/reward_up_eval_down"] for f in flags] == [0, 0, 0, 1, 1, 1]
    assert [f["health/zero_std"] for f in flags] == [0, 0, 0, 1, 1, 0]
    assert [f["health/entropy_collapse"] for f in flags] == [0, 0, 0, 1, 1, 0]  # 0.4 < 0.5 x 1.0; 0.6 is not
    err = capsys.readouterr().err
    assert err.count("warning: step 4:") == 3 and err.count("warning:") == 3  # each once, not again at step 5
    assert "rose (0.300 -> 0.700) while held-out eval/accuracy fell (0.500 -> 0.400)" in err
    assert "zero_std_frac >= 0.9 for 2 steps in a row" in err and "entropy collapsed (1.000" in err
    # off: nothing logged, nothing printed
    assert HealthMonitor(HealthConfig(enabled=False)).update(1, seq[0]) == {}
    quiet = HealthMonitor(cfg, warn=False)
    for i, m in enumerate(seq):
        quiet.update(i + 1, m)
    assert capsys.readouterr().err == ""


def test_health_settings_from_the_recipe():
    cfg = load_config(None, ["train.health.eval_window=4", "train.health.entropy_ratio=0.1"])
    assert cfg.train.health.eval_window == 4 and cfg.train.health.entropy_ratio == 0.1
    assert cfg.train.health.zero_std_frac == 0.9  # default
    with pytest.raises(ConfigError, match="eval_window must be >= 2"):
        load_config(None, ["train.health.eval_window=1"])


@pytest.mark.slow
def test_flags_reach_metrics_jsonl(tiny_dirs, tmp_path, capsys, monkeypatch):
    """Two tiny steps with thresholds every step meets: the flag is in metrics.jsonl and warned once."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.metrics import read_metrics
    from vlmrl.train.run import run_training

    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=2, seed=0)
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "recipes" / "grpo.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", "train.eval_every=0", "train.plot=false", "model.dtype=float32",
        "model.device=cpu", "train.health.zero_std_frac=0.0", "train.health.zero_std_steps=1"])
    out = run_training(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["health/zero_std"] for r in rows] == [1, 1]
    assert [r["health/entropy_collapse"] for r in rows] == [0, 0]
    assert capsys.readouterr().err.count("zero_std_frac >= 0.0 for 1 steps in a row") == 1
