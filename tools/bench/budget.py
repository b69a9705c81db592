"""Knapsack RL vs uniform budgets at the same total: how many groups (and trajectories) carry a gradient.

For each seed, two training runs from the same warm start, identical but for `algo.budget` (uniform: group_size
rollouts per prompt; knapsack: the same prompts_per_step x group_size shared by success rate, vlmrl/train/budget.py).
Per step and run it records, over all the step's groups: the share of groups whose total reward varies and whose
accuracy varies, and the share of trajectories in such groups (the paper's "effective gradient ratio",
liziniu/KnapsackRL verl/trainer/ppo/metric_utils.py:523-530). Reported: the means over the steps after the first
pass over the data (before it every prompt is unseen and both runs are uniform), per run and per budget, and the
knapsack / uniform ratios. Rollout accuracy is reported too: under knapsack it is weighted towards the prompts
that get more rollouts (the uncertain ones), so it is not a like-for-like accuracy.

Without --model, it builds the measurement's assets in OUT: a tiny Qwen2.5-VL (`make-tiny --size tiny`), the
quickstart's synthetic task with --n train rows, and an SFT warm start of --sft-steps steps (the quickstart
recipe's SFT at lr 2e-3); 300 steps leaves rollout accuracy near 0.35, 1000 memorises 64 rows (~0.93).

Usage: python tools/bench/budget.py [--out runs/bench_budget] [--recipe recipes/quickstart.yaml] [--seeds 0,1]
       [--steps 48] [--n 64] [--sft-steps 300] [--model DIR --data FILE] [key=value ...]   (recipe overrides)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("nz_groups_total", "nz_samples_total", "nz_groups_accuracy", "nz_samples_accuracy", "accuracy")


def _assets(out: Path, n: int, sft_steps: int) -> tuple[Path, Path]:
    from vlmrl.cli import main
    from vlmrl.quickstart import DATA

    def cli(argv):
        code = main(argv)
        if code:
            raise SystemExit(f"`vlmrl {' '.join(argv)}` failed with exit code {code}")

    model, data, sft = out / "model", out / f"data_{n}", out / f"sft_{n}_{sft_steps}"
    if not (model / "config.json").is_file():
        cli(["make-tiny", "--family", "qwen2_5_vl", "--size", "tiny", "--seed", "0", "--out", str(model)])
    if not (data / "train.jsonl").is_file():
        cli(["make-data", "zoom", "--out", str(data), "--n", str(n), "--n-test", "0", "--seed", "0", "--image-size",
             DATA["image_size"], "--categories", DATA["categories"], "--tag-layout", DATA["tag_layout"],
             "--tag-size", str(DATA["tag_size"])])
    if not (sft / "config.json").is_file():
        cli(["sft", str(ROOT / "recipes" / "quickstart.yaml"), f"model.path={model}",
             f"data.train={data / 'train.jsonl'}", "data.eval=", f"sft.steps={sft_steps}", f"sft.output={sft}",
             f"train.output_dir={out / 'sft_run'}", "sft.lr=2e-3"])
    return sft, data / "train.jsonl"


def _varies(groups: dict, key: str, n_traj: int) -> tuple[float, float]:
    mixed = [g for g in groups.values() if max(t.rewards[key] for t in g) - min(t.rewards[key] for t in g) > 1e-9]
    return len(mixed) / len(groups), sum(len(g) for g in mixed) / n_traj


def run(recipe: str, model: Path, data: Path, out: Path, budget: str, seed: int, steps: int,
        overrides: list[str]) -> list[dict]:
    import torch

    from vlmrl.config import load_config
    from vlmrl.train.trainer import Trainer

    cfg = load_config(recipe, [f"model.path={model}", f"data.train={data}", "data.eval=", f"train.seed={seed}",
                               f"train.output_dir={out / f'{budget}-{seed}'}", f"train.steps={steps}",
                               "train.eval_every=0", "model.dtype=float32", "model.device=cpu",
                               f"algo.budget={budget}"] + overrides)
    torch.set_num_threads(1)
    tr = Trainer(cfg)
    rows = []
    for step in range(1, steps + 1):
        m, trajs = tr.step()
        groups = defaultdict(list)
        for t in trajs:
            groups[t.group_id].append(t)
        g_tot, s_tot = _varies(groups, "total", len(trajs))
        g_acc, s_acc = _varies(groups, "accuracy", len(trajs))
        rows.append({"step": step, "accuracy": m["accuracy"], "nz_groups_total": g_tot, "nz_samples_total": s_tot,
                     "nz_groups_accuracy": g_acc, "nz_samples_accuracy": s_acc,
                     "rollouts_min": m["budget/rollouts_min"], "rollouts_max": m["budget/rollouts_max"],
                     "fallback": m["budget/fallback"] or 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_budget")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    p.add_argument("--seeds", type=lambda x: [int(v) for v in x.split(",")], default=[0, 1],
                   help="comma-separated, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--n", type=int, default=64, help="training rows of the synthetic task (built without --data)")
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--model", help="warm-started model (default: built in OUT)")
    p.add_argument("--data", help="training file (default: built in OUT)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. rollout.group_size=8 train.prompts_per_step=4")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if (a.model is None) != (a.data is None):
        p.error("give both --model and --data, or neither")
    model, data = (Path(a.model), Path(a.data)) if a.model else _assets(out, a.n, a.sft_steps)
    from vlmrl.config import load_config

    cfg = load_config(a.recipe, a.overrides)
    n_rows = sum(1 for line in Path(data).read_text().splitlines() if line.strip())
    first_pass = -(-n_rows // cfg.train.prompts_per_step)  # steps before every prompt has been seen once
    if a.steps <= first_pass:
        p.error(f"--steps must exceed the first pass over the data ({first_pass} steps)")
    result = {"settings": vars(a) | {"first_pass_steps": first_pass}, "runs": {}, "mean": {}}
    for budget in ("uniform", "knapsack"):
        per_seed = []
        for seed in a.seeds:
            rows = run(a.recipe, model, data, out, budget, seed, a.steps, a.overrides)
            later = rows[first_pass:]
            summary = {k: statistics.mean(r[k] for r in later) for k in KEYS}
            summary["rollouts_max"] = max(r["rollouts_max"] for r in rows)
            summary["fallback_steps"] = statistics.mean(r["fallback"] for r in later)
            result["runs"][f"{budget}-{seed}"] = {"summary": summary, "steps": rows}
            per_seed.append(summary)
            print(f"{budget:8s} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
        result["mean"][budget] = {k: statistics.mean(s[k] for s in per_seed) for k in KEYS}
    u, k = result["mean"]["uniform"], result["mean"]["knapsack"]
    result["ratio"] = {key: k[key] / u[key] if u[key] else None for key in KEYS}
    print(f"\nsteps {first_pass + 1}-{a.steps}, seeds {a.seeds}: uniform -> knapsack (ratio)")
    for key in KEYS:
        r = result["ratio"][key]
        print(f"  {key:22s} {u[key]:.3f} -> {k[key]:.3f}" + (f"  ({r:.2f}x)" if r is not None else ""))
    (out / "budget.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'budget.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
