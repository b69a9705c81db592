"""`vlmrl plot RUN_DIR`: training curves from RUN_DIR/metrics.jsonl as PNG files in RUN_DIR/plots/.

One PNG per panel (`reward.png` with per-part rewards, a +-std band and the periodic held-out `eval/accuracy`, `reward_share.png` (each reward part's
share of the advantage variance), `reward_group_std.png`, `accuracy.png` (training and held-out), `tool.png`,
`visual_tokens.png`, `ref_kl.png`, `perception_kl.png`, `entropy.png`, `clip.png`, `advantage.png`,
`loss.png`, `grad_norm.png`, `response_length.png`, `rollout.png` (zero-std groups, truncation, groups with a
gradient), `budget.png` (rollouts per prompt: min, mean +- std, max; Knapsack RL), `lr.png`,
`time.png`) and `overview.png` with every non-empty panel. A panel whose metrics are all missing (absent, null or NaN)
is skipped and named in the output; so is `clip.png` when every clip fraction is 0 (one PPO epoch over one
mini-batch: the ratio is exactly 1), with a note saying so. Legends sit right of their panel. Steps come
from each record's `step` (else its line number); a step logged twice (a resumed run) keeps its last record.

`plot_run(run_dir, out_dir=None) -> list[Path]` is what the trainer calls at the end of training;
`make_plots` also returns the skipped panels and notes.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Panel:
    name: str  # file stem
    title: str
    keys: tuple[str, ...]  # exact metric names
    prefixes: tuple[str, ...] = ()  # plus every metric starting with one of these
    ylabel: str = ""


# `X/mean` with a matching `X/std` is drawn with a +-1 std band (reward/mean, reward/<part>/mean, adv/mean).
PANELS = (
    # the periodic held-out eval (train.eval_every) sits next to the training reward, so a rising reward
    # with a falling held-out score shows at once
    Panel("reward", "reward and held-out accuracy", ("reward/mean", "eval/accuracy"), ("reward/",)),
    # composed rewards (vlmrl/rewards/compose.py): each part's share of the advantage variance, its group std
    Panel("reward_share", "share of the advantage variance by reward part", (), ("adv_share/",), ylabel="fraction"),
    Panel("reward_group_std", "within-group std by reward part", (), ("reward_group_std/",)),
    Panel("accuracy", "accuracy: training rollouts and held-out eval", ("accuracy", "eval/accuracy"),
          ("accuracy/", "eval/accuracy_"), ylabel="fraction"),
    Panel("tool", "tool calls", ("tool/call_rate", "tool/failure_rate"), ("tool/",), ylabel="fraction"),
    Panel("visual_tokens", "visual tokens per sample", ("visual_tokens_per_sample",), ("visual_tokens/",)),
    Panel("ref_kl", "reference KL", ("ref_kl",), ("ref_kl/", "kl/")),
    Panel("perception_kl", "perception KL (PAPO)", ("perception_kl",), ("perception_kl/",)),
    Panel("entropy", "entropy", ("entropy",), ("entropy/",)),
    Panel("clip", "clip fractions", (), ("clip/",), ylabel="fraction"),
    Panel("advantage", "advantages", (), ("adv/",)),
    Panel("loss", "loss", ("loss",), ("loss/",)),
    Panel("grad_norm", "gradient norm", ("grad_norm",)),
    Panel("response_length", "response length", ("response_length",), ("response_length/",), ylabel="tokens"),
    Panel("rollout", "groups and truncation", ("zero_std_frac", "truncation_rate"), ("groups/",), ylabel="fraction"),
    Panel("budget", "rollouts per prompt (algo.budget)", (), ("budget/rollouts_", "budget/mean"), ylabel="rollouts"),
    Panel("lr", "learning rate", ("lr",)),
    Panel("time", "seconds per step", (), ("time/",), ylabel="s"),
)


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def read_metrics(path: str | Path) -> tuple[dict[int, dict], list[str]]:
    """{step: record} and notes. Bad JSON mid-file is an error naming the line; a cut last line is skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (expected RUN_DIR/metrics.jsonl written by vlmrl train)")
    lines = path.read_text().splitlines()
    rows: dict[int, dict] = {}
    notes: list[str] = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                notes.append(f"{path}, line {i + 1}: incomplete last line skipped (run still writing?)")
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}, line {i + 1}: expected a JSON object, got {type(d).__name__}")
        step = d.get("step", i + 1)
        if _num(step) is None:
            raise ValueError(f"{path}, line {i + 1}: field 'step' must be a number, got {step!r}")
        step = int(step)
        if step in rows:
            notes.append(f"{path}, line {i + 1}: step {step} logged again (resumed run?): the later record is used")
        rows[step] = d
    if not rows:
        raise ValueError(f"{path}: no metrics records")
    return dict(sorted(rows.items())), notes


def panel_series(panel: Panel, rows: dict[int, dict]) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) for the panel's metrics that have at least one finite value."""
    names = list(panel.keys)
    for d in rows.values():
        for k in d:
            if k not in names and any(k.startswith(p) for p in panel.prefixes):
                names.append(k)
    out = {}
    for k in names:
        if k.endswith("/std") and k[:-4] + "/mean" in names:
            continue
        xs, ys = [], []
        for step, d in rows.items():
            v = _num(d.get(k))
            if v is not None:
                xs.append(step)
                ys.append(v)
        if xs:
            out[k] = (xs, ys)
    return out


def _draw(ax, panel: Panel, series: dict, rows: dict[int, dict]) -> None:
    banded = False
    for k, (xs, ys) in series.items():
        marker = "o" if len(xs) < 30 or k.startswith("eval/") else None  # sparse eval points stay visible
        (line,) = ax.plot(xs, ys, label=k, marker=marker, markersize=3, linewidth=1.4)
        std_key = k[:-5] + "/std" if k.endswith("/mean") else None
        if std_key:
            pts = [(x, y, _num(rows[x].get(std_key))) for x, y in zip(xs, ys)]
            pts = [(x, y, s) for x, y, s in pts if s is not None]
            if pts:
                ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts],
                                color=line.get_color(), alpha=0.18, linewidth=0)
                banded = True
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    # outside the axes on the right (never over the title or the curves), in columns of at most 8 entries so
    # a panel with many reward parts stays within its row's height; one line says what the bands are
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
              ncol=math.ceil(len(series) / 8), title="bands: ± 1 std" if banded else None, title_fontsize=6)


def overview_figure(title: str, drawn: list[tuple[Panel, dict]], rows: dict[int, dict]):
    """Every drawn panel in a grid of 3 columns. Constrained layout sizes each row to its content (legends
    sit right of their panel), so no empty bands open between rows the way tight_layout did around a tall
    legend."""
    import matplotlib.pyplot as plt

    cols = min(3, len(drawn))
    nrows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.0 * cols, 2.8 * nrows), dpi=90, squeeze=False,
                             layout="constrained")
    for ax, (panel, series) in zip(axes.flat, drawn):
        _draw(ax, panel, series, rows)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


@dataclass
class PlotResult:
    paths: list[Path]  # PNG files written (panels, then overview.png)
    skipped: list[str]  # panels whose metrics were all missing
    notes: list[str]  # e.g. a cut last line, repeated steps


def make_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> PlotResult:
    """Write one PNG per non-empty panel plus overview.png."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    rows, notes = read_metrics(run_dir / "metrics.jsonl")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written, drawn, skipped = [], [], []
    for panel in PANELS:
        series = panel_series(panel, rows)
        if not series:
            skipped.append(panel.name)
            continue
        if panel.name == "clip" and all(v == 0 for _, ys in series.values() for v in ys):
            notes.append("clip fractions are 0 at every step: panel left out (expected with one PPO epoch over one "
                         "mini-batch, where the policy ratio is exactly 1 so nothing can clip)")
            continue
        fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=100, layout="constrained")  # room for the legend
        _draw(ax, panel, series, rows)
        path = out / f"{panel.name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
        drawn.append((panel, series))
    if drawn:
        fig = overview_figure(f"{run_dir.name}: {len(rows)} steps ({min(rows)}–{max(rows)})", drawn, rows)
        path = out / "overview.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    else:
        notes.append("no panel has any value: nothing plotted")
    return PlotResult(written, skipped, notes)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, verbose: bool = False) -> list[Path]:
    """`make_plots` returning just the paths; `verbose` prints notes and the skipped panels."""
    res = make_plots(run_dir, out_dir)
    if verbose:
        for n in res.notes:
            print(f"note: {n}")
        if res.skipped:
            print("skipped (metrics all missing): " + ", ".join(res.skipped))
    return res.paths


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a vlmrl train run directory (holds metrics.jsonl)")
    p.add_argument("--out", help="folder for the PNG files (default RUN_DIR/plots)")


def run(args: argparse.Namespace) -> int:
    paths = plot_run(args.run_dir, args.out, verbose=True)
    for p in paths:
        print(f"wrote {p}")
    return 0
