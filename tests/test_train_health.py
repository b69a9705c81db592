"""Degenerate-run warnings (vlmrl/train/health.py) on synthetic metric sequences, and their flags in a run's
metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmrl.config import ConfigError, HealthConfig, load_config
from vlmrl.train.health import (FLAGS, HealthMonitor, answer_rows, canonical_answer, collapsed_answers,
                                 entropy_collapsed, reward_up_eval_down, zero_std_streak)


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


def test_collapsed_answers_values():
    # the seed-2 digits run: 66 of 66 greater-than answers "B" while the test split is 39 yes / 27 no
    rows = [("greater", "B", "A")] * 39 + [("greater", "B", "B")] * 27
    rows += [("digit", str(i % 10), str(i % 10)) for i in range(66)]  # a healthy kind next to it
    assert collapsed_answers(rows, share=0.9, min_n=10) == [
        {"kind": "greater", "answer": "B", "share": 1.0, "target_share": 39 / 66, "n": 66}]
    # 59 of 66 = 0.894 "B": under 0.9, over 0.85
    part = [("greater", "B", "A")] * 33 + [("greater", "B", "B")] * 26 + [("greater", "A", "A")] * 7
    assert collapsed_answers(part, 0.9, 10) == []
    assert [x["kind"] for x in collapsed_answers(part, 0.85, 10)] == ["greater"]
    # the targets themselves are that lopsided (>= share): answering the majority is not a collapse
    lopsided = [("k", "no", "no")] * 19 + [("k", "no", "yes")]
    assert collapsed_answers(lopsided, 0.9, 10) == [] and collapsed_answers(lopsided, 0.96, 10) != []
    # missing answers (None) never count as the collapsed answer, but count in n
    assert collapsed_answers([("k", None, "a")] * 18 + [("k", "b", "b")] * 2, 0.9, 10) == []
    assert collapsed_answers([("k", "b", "a")] * 5 + [("k", "b", "b")] * 5, 0.9, 11) == []  # too few rows
    assert len(collapsed_answers([("k", "b", "a")] * 5 + [("k", "b", "b")] * 5, 0.9, 10)) == 1


def test_answer_rows_and_canonical_answers():
    from types import SimpleNamespace as T

    assert canonical_answer("no", "choice", ["yes", "no"]) == canonical_answer("(B)", "choice", ["yes", "no"]) == "B"
    assert canonical_answer("7.0", "number") == "7" and canonical_answer("12 %", "number") == "12%"
    assert canonical_answer("3 or 4", "number") is None and canonical_answer("The Odd.", "word") == "odd"
    assert canonical_answer("", "word") is None and canonical_answer(None, "word") is None
    trajs = [T(final_text="<answer>B</answer>", answer="A", answer_type="choice", choices=["yes", "no"],
               meta={"category": "greater"}),
             T(final_text="it is <answer>Even</answer>", answer=["even"], answer_type="word", choices=None, meta={}),
             T(final_text="no tag", answer="7", answer_type="number", choices=None, meta=None)]
    assert answer_rows(trajs) == [("greater", "B", "A"), ("word", "even", "even"), ("number", None, "7")]


def test_monitor_flags_answer_collapse_from_the_eval_answers(capsys):
    mon = HealthMonitor(HealthConfig(answer_collapse_min_n=4))
    collapsed = [("greater", "B", "A"), ("greater", "B", "B"), ("greater", "B", "A"), ("greater", "B", "B")]
    healthy = [("greater", "A", "A"), ("greater", "B", "B"), ("greater", "B", "A"), ("greater", "B", "B")]
    steps = [(None, 0), (healthy, 0), (None, 0), (collapsed, 1), (None, 1), (collapsed, 1), (healthy, 0)]
    got = [mon.update(i + 1, {"reward/mean": 0.5}, answers=a)["health/answer_collapse"] for i, (a, _) in
           enumerate(steps)]
    assert got == [want for _, want in steps]  # between evals the last eval's state holds
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "warning: step 4: answer collapse" in err
    assert 'question kind "greater": 100% of 4 eval answers are "B" (the most common target answer is 50%)' in err
    with pytest.raises(ConfigError, match="answer_collapse_share must be in"):
        load_config(None, ["train.health.answer_collapse_share=0"])


def test_health_settings_from_the_recipe():
    cfg = load_config(None, ["train.health.eval_window=4", "train.health.entropy_ratio=0.1"])
    assert cfg.train.health.eval_window == 4 and cfg.train.health.entropy_ratio == 0.1
    assert cfg.train.health.zero_std_frac == 0.9  # default
    with pytest.raises(ConfigError, match="eval_window must be >= 2"):
        load_config(None, ["train.health.eval_window=1"])


@pytest.mark.slow
def test_flags_reach_metrics_jsonl(tiny_dirs, tmp_path, capsys, monkeypatch):
    """Two tiny steps with thresholds every step meets: the flag is in metrics.jsonl and warned once; the
    periodic eval's answers (a stand-in eval: all "B") reach the answer-collapse check."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.metrics import read_metrics
    from vlmrl.train.run import run_training

    import vlmrl.train.run as run_mod

    def fake_eval(policy, dataset, cfg, limit, sampler=None, answers=None):  # a collapsed eval, without decoding
        answers.extend([("greater", "B", "A"), ("greater", "B", "B")] * 5)
        return {"eval/accuracy": 0.5}

    monkeypatch.setattr(run_mod, "evaluate", fake_eval)
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=2, seed=0)
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "recipes" / "grpo.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", f"data.eval={tmp_path / 'data' / 'test.jsonl'}", "train.eval_every=2", "train.plot=false", "model.dtype=float32",
        "model.device=cpu", "train.health.zero_std_frac=0.0", "train.health.zero_std_steps=1"])
    out = run_training(cfg)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["health/zero_std"] for r in rows] == [1, 1]
    assert [r["health/entropy_collapse"] for r in rows] == [0, 0]
    assert [r["health/answer_collapse"] for r in rows] == [0, 1]  # the eval at step 2: 10 of 10 "B"
    err = capsys.readouterr().err
    assert err.count("zero_std_frac >= 0.0 for 1 steps in a row") == 1 and err.count("answer collapse") == 1
    # resumed for two more steps: the histories come back from the checkpoint, so nothing is warned again and
    # the answer-collapse flag of the step-2 eval holds until the next eval (step 4)
    cfg2 = load_config(root / "recipes" / "grpo.yaml", [
        f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.steps=4", "train.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=4", f"data.eval={tmp_path / 'data' / 'test.jsonl'}", "train.eval_every=2",
        "train.plot=false", "model.dtype=float32", "model.device=cpu", "train.health.zero_std_frac=0.0",
        "train.health.zero_std_steps=1", "train.resume=auto"])
    run_training(cfg2)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["health/answer_collapse"] for r in rows] == [0, 1, 1, 1]
    err = capsys.readouterr().err
    assert "zero_std_frac >= 0.0" not in err and "answer collapse" not in err


def test_monitor_state_round_trip():
    """state_dict -> JSON -> load_state_dict gives a monitor that flags and warns as the original would."""
    import json

    from vlmrl.config import HealthConfig
    from vlmrl.train.health import HealthMonitor

    a = HealthMonitor(HealthConfig(zero_std_frac=0.5, zero_std_steps=3), warn=False)
    for i, z in enumerate([0.9, 0.9]):
        a.update(i + 1, {"reward/mean": 0.1 * i, "zero_std_frac": z, "entropy/policy": 1.0})
    b = HealthMonitor(HealthConfig(zero_std_frac=0.5, zero_std_steps=3), warn=False)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    third = {"reward/mean": 0.3, "zero_std_frac": 0.9, "entropy/policy": 1.0}
    assert b.update(3, third)["health/zero_std"] == 1 == a.update(3, dict(third))["health/zero_std"]
    c = HealthMonitor(HealthConfig(zero_std_frac=0.5, zero_std_steps=3), warn=False)
    c.load_state_dict(None)  # a checkpoint from before this: a fresh monitor
    assert c.update(1, third)["health/zero_std"] == 0


def test_eval_at_start_logs_the_starting_point(tiny_dirs, tmp_path, monkeypatch):
    """train.eval_at_start: one held-out eval before the first step, logged as step 0 (eval metrics only), so the
    curve beside the reward starts at the warm start's score; off by default; not repeated on resume."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.metrics import read_metrics
    from vlmrl.train.run import run_training

    import vlmrl.train.run as run_mod

    calls = []

    def fake_eval(policy, dataset, cfg, limit, sampler=None, answers=None):
        calls.append(limit)
        return {"eval/accuracy": 0.25 * len(calls)}

    monkeypatch.setattr(run_mod, "evaluate", fake_eval)
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=2, seed=0)
    root = Path(__file__).resolve().parents[1]

    def cfg(out, steps, *extra):
        return load_config(root / "recipes" / "grpo.yaml", [
            f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
            f"train.output_dir={tmp_path / out}", f"train.steps={steps}", "train.prompts_per_step=2",
            "rollout.group_size=2", "rollout.max_new_tokens=4", f"data.eval={tmp_path / 'data' / 'test.jsonl'}",
            "train.eval_every=2", "train.eval_samples=7", "train.plot=false", "model.dtype=float32",
            "model.device=cpu", *extra])

    rows = read_metrics(run_training(cfg("on", 2, "train.eval_at_start=true")) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and calls == [7, 7]
    assert rows[0]["eval/accuracy"] == 0.25 and "reward/mean" not in rows[0] and rows[2]["eval/accuracy"] == 0.5
    run_training(cfg("on", 4, "train.eval_at_start=true", "train.resume=auto"))  # resumed: no second step-0 eval
    assert [r["step"] for r in read_metrics(tmp_path / "on" / "metrics.jsonl")] == [0, 1, 2, 3, 4] and len(calls) == 3
    # a fresh run into the same directory (no checkpoint resumed) starts the file afresh: no old step-0 record
    run_training(cfg("on", 1, "train.eval_at_start=true", "train.resume=none"))
    rows = read_metrics(tmp_path / "on" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and rows[0]["eval/accuracy"] == 1.0 and len(calls) == 4
    calls.clear()
    rows = read_metrics(run_training(cfg("off", 2)) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and calls == [7]
    calls.clear()  # the starting point alone, without periodic evals
    rows = read_metrics(run_training(cfg("start", 2, "train.eval_at_start=true", "train.eval_every=0")) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and calls == [7] and "eval/accuracy" not in rows[2]


def test_start_collapse_warns_at_step_0(tiny_dirs, tmp_path, monkeypatch, capsys):
    """health/start_collapse: the eval before the first step finds a kind the starting model answers with one
    answer (here 10 of 10 "even" for 5 even and 5 odd targets): warned at step 0, flagged in the step-0 record.
    (On the digits task a warm start at 100% "even" stayed there for 125 GRPO steps.) A start with mixed answers
    is not flagged."""
    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.train.metrics import read_metrics
    from vlmrl.train.run import run_training

    import vlmrl.train.run as run_mod

    preds = {}

    def fake_eval(policy, dataset, cfg, limit, sampler=None, answers=None):
        if answers is not None:
            answers.extend(("parity", p, "even" if i % 2 else "odd") for i, p in enumerate(preds["start"]))
        return {"eval/accuracy": 0.5}

    monkeypatch.setattr(run_mod, "evaluate", fake_eval)
    monkeypatch.setenv("VLMRL_NO_PROGRESS", "1")
    make_zoom_dataset(tmp_path / "data", n=4, n_test=2, seed=0)
    root = Path(__file__).resolve().parents[1]

    def run(out, start_answers):
        preds["start"] = start_answers
        cfg = load_config(root / "recipes" / "grpo.yaml", [
            f"model.path={tiny_dirs['qwen2_5_vl']}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
            f"data.eval={tmp_path / 'data' / 'test.jsonl'}", f"train.output_dir={tmp_path / out}", "train.steps=1",
            "train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4", "train.eval_every=0",
            "train.eval_at_start=true", "train.plot=false", "model.dtype=float32", "model.device=cpu"])
        return read_metrics(run_training(cfg) / "metrics.jsonl")

    rows = run("collapsed", ["even"] * 10)
    err = capsys.readouterr().err
    assert rows[0]["step"] == 0 and rows[0]["health/start_collapse"] == 1
    assert 'warning: step 0: the starting model gives one answer whatever the image: question kind "parity": ' \
           '100% of 10 eval answers are "even"' in err and "zero advantages" in err
    rows = run("mixed", ["even", "odd"] * 5)
    assert rows[0]["health/start_collapse"] == 0 and "step 0" not in capsys.readouterr().err
