"""`vlmrl plot RUN_DIR`: training curves from RUN_DIR/metrics.jsonl as PNG files in RUN_DIR/plots/.

One PNG per panel (`reward.png` with per-part rewards, a +-std band and the periodic held-out `eval/accuracy`, `reward_share.png` (each reward part's
share of the advantage variance), `reward_group_std.png`, `accuracy.png` (training and held-out), `tool.png`,
`visual_tokens.png`, `ref_kl.png`, `perception_kl.png`, `entropy.png`, `clip.png`, `advantage.png`,
`loss.png`, `grad_norm.png`, `response_length.png`, `rollout.png` (zero-std groups, truncation, groups with a
gradient), `budget.png` (rollouts per prompt: min, mean +- std, max; Knapsack RL), `lr.png`,
`time.png`) and `overview.png` with every non-empty panel. A panel whose metrics are all missing (absent, null or NaN)
is skipped and named in the output. Steps come from each record's `step` (else its line number); a
step logged twice (a resumed run) keeps its last record.

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
    for k, (xs, ys) in series.items():
        marker = "o" if len(xs) < 30 or k.startswith("eval/") else None  # sparse eval points stay visible
        (line,) = ax.plot(xs, ys, label=k, marker=marker, markersize=3, linewidth=1.4)
        std_key = k[:-5] + "/std" if k.endswith("/mean") else None
        if std_key:
            pts = [(x, y, _num(rows[x].get(std_key))) for x, y in zip(xs, ys)]
            pts = [(x, y, s) for x, y, s in pts if s is not None]
            if pts:
                ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts],
                                color=line.get_color(), alpha=0.18, linewidth=0, label=f"± {std_key}")
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


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
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        _draw(ax, panel, series, rows)
        fig.tight_layout()
        path = out / f"{panel.name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
        drawn.append((panel, series))
    if drawn:
        cols = min(3, len(drawn))
        nrows = math.ceil(len(drawn) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.0 * cols, 3.4 * nrows), dpi=90, squeeze=False)
        for ax, (panel, series) in zip(axes.flat, drawn):
            _draw(ax, panel, series, rows)
        for ax in list(axes.flat)[len(drawn):]:
            ax.set_visible(False)
        fig.suptitle(f"{run_dir.name}: {len(rows)} steps ({min(rows)}–{max(rows)})")
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * nrows)))
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
