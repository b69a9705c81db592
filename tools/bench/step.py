"""Training-step benchmark: vlmrl against TRL's GRPOTrainer, PAPO and DTPO overheads, rollout throughput, peak
memory and achieved FLOP/s, in one command and one run (so every ratio compares numbers taken side by side).

Cases, per model size (a random checkpoint from `vlmrl.models.tiny.make_tiny`, qwen2_5_vl, fp32 on CPU), all on
the same prompt with its image (the VLM path), B prompts x G samples, N sampled tokens per turn:

- `vlmrl_grpo`: `vlmrl.train.Trainer.step()` with algo grpo, direct mode, no reference model (beta 0);
- `trl_grpo`: TRL's `GRPOTrainer` doing the same work (tools/bench/trl_side.py);
- `vlmrl_papo`: as vlmrl_grpo plus PAPO (recipes/papo_g.yaml's gamma 0.02, patch 14, p 0.6, clip 0.2/0.3), beta 0;
- `dtpo_one_turn`: algo dtpo in the crop-tool loop (recipes/dtpo.yaml: half-resolution first view, crop pixels
  3136..50176, clip 0.2/0.24, entropy 0.001), the policy answers in one turn of N tokens;
- `dtpo_two_turn`: the same, but turn 0 decodes a fixed valid crop call (the sampler makes each call token
  certain after the LM head, so it costs a decoding step like a sampled one), the crop is observed, turn 1
  samples N tokens.

Every sampled turn runs exactly its budget (EOS and stop strings can never end it), so work is equal across cases.
Torch runs one thread per case by default (`--threads`): with two threads on a 2-core machine shared with other
processes, every op waits for a descheduled partner thread and one step's time varies by 10x or more.
Each case runs in its own worker process (its peak RSS is its own); the driver warms every worker up, then
steps them in turn, round-robin, so that load from other processes falls on all cases alike; medians are
reported. The rollout benchmark (tools/bench/rollout.py, engine vs `model.generate`) runs in one more worker.
The machine's fp32 matmul FLOP/s is measured in the same run (before and after the cases).

The code is split by purpose into the modules beside this file: step_cases.py (what each case runs),
step_workers.py (one process per case, round-robin), step_measure.py (memory, machine, token counts, FLOPs) and
step_report.py (medians, ratios against the targets, markdown); this file is the driver and the worker's entry.

Usage: python tools/bench/step.py [--sizes tiny,30m] [--prompts 1] [--group-size 8] [--new-tokens 64]
       [--steps 5] [--warmup 1] [--lr 1e-4] [--threads 1] [--no-trl] [--no-rollout] [--out DIR]
Writes DIR/step_bench.json and DIR/step_bench.md (default tools/bench/results/) and prints the tables.
See tools/bench/README.md for every column.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the modules beside this one sit in no package (this file runs as a script too)
    sys.path.insert(0, str(HERE))

# Every name the benchmark had in this one file stays importable from it.
from step_cases import (  # noqa: E402, F401
    BENCH_SIZES, CALL_TEXT, CROP_MAX_PIXELS, CROP_MIN_PIXELS, FAMILY, STEP_CASES, Repeat, RolloutCase, VlmrlCase,
    _beside, bench_sampler, build_case, case_overrides, forced_tokens, load_sample, register_bench_sizes,
)
from step_measure import (  # noqa: E402, F401
    FLOPS_FORMULA, machine_info, matmul_flops, model_flops, rss_mb, step_counts, vision_flops_per_patch,
)
from step_report import TARGETS, ratios_and_targets, summarize_case, to_markdown  # noqa: E402, F401
from step_workers import (  # noqa: E402, F401
    MAX_ROUNDS, OFFLINE_ENV, Local, Worker, WorkerError, import_modules, run_cases, worker_main,
)

DEFAULT_OUT = HERE / "results"
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)


# =====================================================================================================================
# The run.
# =====================================================================================================================

def run_step_bench(sizes=("tiny", "30m"), prompts: int = 1, group_size: int = 8, new_tokens: int = 64,
                   steps: int = 5, warmup: int = 1, lr: float = 1e-4, trl: bool = True, rollout: bool = True,
                   rollout_repeats: int = 3, seed: int = 0, out: str | Path | None = DEFAULT_OUT,
                   timeout: float = 600.0, cases: tuple[str, ...] = STEP_CASES, in_process: bool = False,
                   matmul_size: int = 2048, threads: int = 1, min_seconds: float = 0.0) -> dict:
    from vlmrl.data import make_zoom_dataset
    from vlmrl.models.tiny import SIZES, make_tiny

    register_bench_sizes()
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise ValueError(f"unknown size(s) {bad}; choose from {', '.join(SIZES)}")
    bad = [c for c in cases if c not in STEP_CASES]
    if bad:
        raise ValueError(f"unknown case(s) {bad}; choose from {', '.join(STEP_CASES)}")
    have_trl = importlib.util.find_spec("trl") is not None
    if threads:
        import torch

        torch.set_num_threads(threads)
    machine = machine_info()
    machine["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    mm_start = matmul_flops(matmul_size)
    report_sizes: dict = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlmrl-step-bench-") as tmp:
        tmp = Path(tmp)
        log_dir = tmp / "logs"  # a failed case's error carries the tail of its log
        log_dir.mkdir()
        make_zoom_dataset(tmp / "data", n=1, n_test=1, seed=seed)
        for size in sizes:
            model = make_tiny(FAMILY, tmp / f"model-{size}", size=size, seed=seed)
            base = {"size": size, "model": str(model), "data": str(tmp / "data" / "train.jsonl"), "prompts": prompts,
                    "group_size": group_size, "new_tokens": new_tokens, "lr": lr, "seed": seed,
                    "total_steps": warmup + (max(steps, MAX_ROUNDS) if min_seconds else steps),  # TRL's max_steps
                    "threads": threads}
            specs = {}
            for case in cases:
                if case == "trl_grpo" and not (trl and have_trl):
                    continue
                (tmp / f"work-{size}-{case}").mkdir()
                specs[case] = {**base, "case": case, "workdir": str(tmp / f"work-{size}-{case}")}
            raw = run_cases(specs, warmup, steps, log_dir, timeout, in_process, min_seconds)
            params = next((r["setup"]["params"] for r in raw.values() if "setup" in r and "params" in r["setup"]), None)
            n_lang = params["language"] if params else None
            per_patch = params.get("vision_flops_per_patch", 0.0) if params else 0.0
            results = {name: summarize_case(raw[name], n_lang, per_patch) for name in specs}
            if "trl_grpo" in cases and trl and not have_trl:
                results["trl_grpo"] = {"skipped": "trl is not installed (pip install -e '.[bench]')"}
            ro = None
            if rollout:
                (tmp / f"work-{size}-rollout").mkdir()
                spec = {**base, "case": "rollout", "repeats": rollout_repeats,
                        "workdir": str(tmp / f"work-{size}-rollout")}
                res = run_cases({"rollout": spec}, 0, 1, log_dir, timeout, in_process)["rollout"]
                ro = res["steps"][0]["report"] | {"peak_rss_mb": res["peak_rss_mb"]} if "steps" in res else res
            r, targets = ratios_and_targets(size, results, ro)
            report_sizes[size] = {"params": params, "cases": results, "rollout": ro, "ratios": r, "targets": targets}
    mm_end = matmul_flops(matmul_size)
    peak = max(mm_start, mm_end)
    for s in report_sizes.values():  # achieved FLOP/s against the better of the two matmul measurements
        for x in s["cases"].values():
            if "model_flops" in x:
                x["fraction_of_matmul_peak"] = x["flops_per_s"] / peak
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["matmul_fp32_flops"] = {"start": mm_start, "end": mm_end, "peak": peak, "n": matmul_size}
    report = {
        "config": {"family": FAMILY, "sizes": list(sizes), "prompts": prompts, "group_size": group_size,
                   "new_tokens": new_tokens, "steps": steps, "min_seconds": min_seconds, "warmup": warmup, "lr": lr,
                   "seed": seed, "cases": list(cases), "in_process": in_process, "threads": threads, "dtype": "float32",
                   "device": "cpu", "crop_min_pixels": CROP_MIN_PIXELS,
                   "crop_max_pixels": CROP_MAX_PIXELS, "call_text": CALL_TEXT, "rollout_repeats": rollout_repeats,
                   "bench_sizes": BENCH_SIZES,
                   "inputs": "images on both sides (the VLM path): one synthetic-zoom prompt with its 224x224 image "
                             "(64 image tokens in direct mode), repeated, so every step and both frameworks see the "
                             "same prompt; TRL gets vlmrl's image-only processor as processing_class."},
        "machine": machine,
        "flops_formula": FLOPS_FORMULA,
        "sizes": report_sizes,
        "targets": [t for s in report_sizes.values() for t in s["targets"]],
        "wall_s": time.perf_counter() - t_start,
    }
    report["markdown"] = to_markdown(report)
    _beside("rollout").write_report(report, out, "step_bench")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,30m", help="comma-separated model sizes (tiny, small, 30m)")
    p.add_argument("--prompts", type=int, default=1, help="B prompts per step")
    p.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    p.add_argument("--new-tokens", type=int, default=64, help="N sampled tokens per turn")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (the median is reported)")
    p.add_argument("--min-seconds", type=float, default=5.0,
                   help="more timed steps (round-robin, at most %d) until every case has run this long: the tiny "
                        "model's ~0.1 s steps need dozens for a steady median" % MAX_ROUNDS)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per case first")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rollout-repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(STEP_CASES), help="comma-separated step cases to run")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL case")
    p.add_argument("--no-rollout", action="store_true", help="skip the rollout benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a worker may take for one answer")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in every case and the matmul; 0 = torch's own choice (default 1: stable on a "
                        "shared machine, see tools/bench/README.md)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul that measures the peak")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process (starts faster; peak RSS is then not per case)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker_main(json.loads(a.worker))
    if a.steps < 1 or a.warmup < 0 or a.min_seconds < 0:
        p.error("--steps must be >= 1, --warmup and --min-seconds >= 0")
    report = run_step_bench(sizes=tuple(s for s in a.sizes.split(",") if s), prompts=a.prompts,
                            group_size=a.group_size, new_tokens=a.new_tokens, steps=a.steps, warmup=a.warmup, lr=a.lr,
                            min_seconds=a.min_seconds, trl=not a.no_trl, rollout=not a.no_rollout,
                            rollout_repeats=a.rollout_repeats, seed=a.seed,
                            out=a.out, timeout=a.timeout, cases=tuple(c for c in a.cases.split(",") if c),
                            in_process=a.in_process, matmul_size=a.matmul_size, threads=a.threads)
    print(report["markdown"])
    print(f"wrote {Path(a.out) / 'step_bench.json'} and step_bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
