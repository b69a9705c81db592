"""`vlmrl plot`: PNG training curves from metrics.jsonl, skipping panels with no data."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from vlmrl.cli import main
from vlmrl.plots import PANELS, make_plots, plot_run

ALL = {p.name for p in PANELS}


def _write(run, rows, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _rows(n=12, papo=False):
    out = []
    for s in range(1, n + 1):
        r = {"step": s, "reward/mean": 0.3 + 0.04 * s, "reward/std": 0.2, "accuracy": 0.2 + 0.05 * s,
             "tool/call_rate": 0.5, "tool/failure_rate": 0.1 / s, "visual_tokens_per_sample": 300 - 5 * s,
             "ref_kl": None, "entropy/policy": 1.2 - 0.02 * s, "clip/low": 0.01, "clip/high": 0.02,
             "loss/total": 0.1 * math.sin(s), "grad_norm": 1.0 / s, "response_length": 40 + s}
        if papo:
            r["perception_kl"] = 0.01 * s
            r["entropy/masked"] = 1.5
            r["ref_kl"] = 0.001 * s
            r.update({"adv/mean": 0.0, "adv/std": 1.0, "adv/min": -1.5, "adv/max": 1.5, "zero_std_frac": 0.25,
                      "lr": 1e-6, "time/step": 2.0, "reward/format/mean": 0.9, "reward/format/std": 0.1,
                      "adv_share/accuracy": 0.8, "adv_share/format": 0.2, "reward_group_std/format": 0.3,
                      "nonfinite": ["grad_norm"], "budget/mean": 4.0, "budget/std": 1.5 + 0.1 * s,
                      "budget/rollouts_min": 2, "budget/rollouts_max": 8 + s, "groups/nonzero_std": 0.5})
        if s == 5:
            r["accuracy"] = float("nan")  # json writes NaN: must not break the plot
        out.append(r)
    return out


def _check_png(path):
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 500
        assert len(im.convert("RGB").resize((64, 40)).getcolors(10_000)) > 5  # something was drawn


def test_plot_run_panels_and_skips(tmp_path, capsys):
    run = tmp_path / "run"
    _write(run, _rows())
    paths = plot_run(run)
    names = [p.stem for p in paths]
    assert names == ["reward", "accuracy", "tool", "visual_tokens", "entropy", "clip", "loss", "grad_norm",
                     "response_length", "overview"]
    assert all(p.parent == run / "plots" for p in paths)
    for p in paths:
        _check_png(p)
    res = make_plots(run, tmp_path / "other")
    assert set(res.skipped) == {"reward_share", "reward_group_std", "ref_kl", "perception_kl", "advantage", "rollout",
                                "budget", "lr", "time"} and res.notes == []
    # the CLI says what it skipped
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert ("skipped (metrics all missing): reward_share, reward_group_std, ref_kl, perception_kl, advantage, "
            "rollout, budget, lr, time") in out
    assert "overview.png" in out


def test_papo_run_has_all_panels_and_tolerates_resume_and_cut_line(tmp_path):
    run = tmp_path / "papo"
    rows = _rows(8, papo=True)
    _write(run, rows + rows[-2:], tail='{"step": 9, "rew')  # resumed (steps 7, 8 again) + a cut last line
    res = make_plots(run)
    assert {p.stem for p in res.paths} == ALL | {"overview"} and res.skipped == []
    assert any("logged again" in n for n in res.notes) and any("incomplete last line" in n for n in res.notes)


def test_plot_bad_input(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        plot_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 1
    assert "metrics.jsonl" in capsys.readouterr().err
    _write(tmp_path / "bad", [{"step": 1}], tail="{oops\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        plot_run(tmp_path / "bad")
    _write(tmp_path / "nothing", [{"step": 1, "foo": 1}])
    res = make_plots(tmp_path / "nothing")
    assert res.paths == [] and set(res.skipped) == ALL and "nothing plotted" in res.notes[-1]


def test_budget_panel_draws_rollouts_per_prompt():
    """Knapsack RL budgets: min, mean (with its std band) and max rollouts per prompt in one panel; the share of
    groups with a gradient joins the rollout panel."""
    from vlmrl.plots import panel_series

    rows = {r["step"]: r for r in _rows(6, papo=True)}
    by_name = {p.name: p for p in PANELS}
    budget = panel_series(by_name["budget"], rows)
    assert set(budget) == {"budget/mean", "budget/rollouts_min", "budget/rollouts_max"}
    assert budget["budget/rollouts_max"] == ([1, 2, 3, 4, 5, 6], [9.0, 10.0, 11.0, 12.0, 13.0, 14.0])
    assert "groups/nonzero_std" in panel_series(by_name["rollout"], rows)
    # (budget.png itself is drawn in test_papo_run_has_all_panels_and_tolerates_resume_and_cut_line)


def test_heldout_accuracy_next_to_the_reward(tmp_path):
    """The periodic eval's `eval/accuracy` (vlmrl/train/run.py: evaluate) is drawn in the reward panel and
    in the accuracy panel, at the steps it was measured, so a rising reward with a falling score shows."""
    from vlmrl.plots import panel_series

    rows = {r["step"]: r for r in _rows(6)}
    for s in (2, 4, 6):
        rows[s].update({"eval/accuracy": 0.5 - 0.05 * s, "eval/accuracy_zoom": 0.4, "eval/tool_call_rate": 0.3})
    by_name = {p.name: p for p in PANELS}
    reward = panel_series(by_name["reward"], rows)
    assert set(reward) == {"reward/mean", "eval/accuracy"}
    assert reward["eval/accuracy"] == ([2, 4, 6], [pytest.approx(0.4), pytest.approx(0.3), pytest.approx(0.2)])
    acc = panel_series(by_name["accuracy"], rows)
    assert set(acc) == {"accuracy", "eval/accuracy", "eval/accuracy_zoom"}  # not eval/tool_call_rate
    run = tmp_path / "run"
    _write(run, list(rows.values()))
    paths = {p.stem: p for p in plot_run(run)}
    _check_png(paths["reward"])


def _quickstart_like_rows(n=10, clip=0.0):
    """A DTPO run's metrics as the quickstart logs them: many reward parts (a tall legend) and, with one PPO
    epoch over one mini-batch, clip fractions that are exactly 0."""
    out = []
    for s in range(1, n + 1):
        r = {"step": s, "reward/mean": 0.5 + 0.02 * s, "reward/std": 0.4, "accuracy": 0.4 + 0.03 * s,
             "clip/low": clip, "clip/high": 0.0, "clip/dual": 0.0, "grad_norm": 1.0 / s, "lr": 7e-5,
             "entropy/policy": 0.1, "loss/total": 0.01 * s, "response_length": 20 + s, "time/step": 1.5}
        for i in range(12):
            r[f"reward/part{i}/mean"], r[f"reward/part{i}/std"] = 0.05 * i, 0.1
        out.append(r)
    return out


def test_all_zero_clip_panel_left_out_with_a_note(tmp_path):
    """ppo_epochs 1 and one mini-batch: the ratio is exactly 1, clip/* are all 0, so the panel would be a flat
    line; it is left out and the notes say why. Any nonzero clip value keeps it."""
    run = tmp_path / "run"
    _write(run, _quickstart_like_rows())
    res = make_plots(run)
    assert "clip" not in {p.stem for p in res.paths} and "clip" not in res.skipped
    assert not (run / "plots" / "clip.png").exists()
    assert [n for n in res.notes if n.startswith("clip fractions are 0 at every step")] == [res.notes[0]]
    assert "ratio is exactly 1" in res.notes[0] and len(res.notes) == 1  # `vlmrl plot` prints notes
    rows = _quickstart_like_rows()
    rows[3]["clip/low"] = 0.01
    _write(tmp_path / "clipped", rows)
    res = make_plots(tmp_path / "clipped")
    assert "clip" in {p.stem for p in res.paths} and res.notes == []


def test_overview_has_no_empty_band_between_rows(tmp_path):
    """A tall legend (12 reward parts) made tight_layout squeeze its panel's row and open empty bands around it
    (the quickstart's overview.png): every panel keeps most of its row's height, no legend overlaps a title,
    and the PNG has no long run of blank pixel rows."""
    import matplotlib.pyplot as plt
    import numpy as np

    from vlmrl.plots import overview_figure, panel_series

    rows = {r["step"]: r for r in _quickstart_like_rows()}
    drawn = [(p, panel_series(p, rows)) for p in PANELS]
    drawn = [(p, s) for p, s in drawn if s]
    assert len(drawn) == 9  # 3 rows of 3
    fig = overview_figure("run", drawn, rows)
    try:
        fig.canvas.draw()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 9
        for ax in axes:
            assert ax.get_position().height * 3 > 0.6, (ax.get_title(), ax.get_position())
        legends = [ax.get_legend().get_window_extent() for ax in axes]
        for ax in axes:
            title = ax.title.get_window_extent()
            assert not any(title.overlaps(lg) for lg in legends), ax.get_title()
    finally:
        plt.close(fig)
    run = tmp_path / "run"
    _write(run, list(rows.values()))
    overview = make_plots(run).paths[-1]
    with Image.open(overview) as im:
        a = np.asarray(im.convert("L"))
    assert overview.name == "overview.png" and a.shape[0] <= 90 * 3.0 * 3  # dpi 90, at most 3 in per row
    longest = run_len = 0
    for blank in (a > 250).all(axis=1):
        run_len = run_len + 1 if blank else 0
        longest = max(longest, run_len)
    assert longest < 0.03 * a.shape[0], (longest, a.shape)
