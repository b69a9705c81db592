"""Benchmark sweep (issue 23): vlmrl against TRL over completion length, vocabulary size and image size, with
ablations, PAPO, DTPO and the rollout baselines at the target point, every ratio from one run.

Each point runs a group of step.py's cases side by side (its workers, round-robin, medians) on a random 30M
checkpoint (`--size`), B prompts x G samples:

- grid: completion lengths (`--lengths`, 64,256,512) x vocabularies (`--vocabs`, 4096 and Qwen2.5-VL's 151936),
  `vlmrl_grpo` against `trl_grpo`; plus a second image size (`--image-sizes`) at the first length, real vocabulary;
- at the target point (256 tokens, vocabulary 151936): vlmrl's prompt sharing off (`train.share_prompt=false`)
  and prompt-cache sharing off (`hf_sampler.share_prompt_cache=false`) beside vlmrl_grpo; both frameworks with
  glibc's allocator left as it is (`keep_freed_memory` off on both sides; everywhere else it is on on both);
  PAPO as recipes/papo_g.yaml (k3 reference KL 0.01, dual clip 3) with `masked_grad` false and true beside GRPO
  with the same KL; DTPO one turn against two turns with a small and a full-view crop, crop pixels from
  recipes/dtpo.yaml; and the rollout benchmark (engine against stock `generate` and against `generate` with
  the prompt prefilled once per group under inference_mode);
- a profile (torch.profiler, one extra untimed step) of vlmrl_grpo and trl_grpo at the target point.

Every step case's first (warm-up) step runs under torch's FLOP counter: the FLOPs each framework really ran
(TRL's G prompt copies and full-vocabulary logits included), beside step.py's formula.

Usage: python tools/bench/sweep.py [--quick] [--steps 3] [--out DIR]
Writes DIR/sweep.json, DIR/sweep.md and DIR/profile_*.txt (default tools/bench/results/). See
tools/bench/README.md, section "Sweep".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from step_cases import BENCH_SIZES, FAMILY, make_bench_data, make_bench_model, register_bench_sizes  # noqa: E402
from step_measure import machine_info, matmul_flops  # noqa: E402
from step_report import summarize_case  # noqa: E402
from step_workers import OFFLINE_ENV, run_cases  # noqa: E402
from sweep_report import group_ratios, judge_targets, to_markdown  # noqa: E402

DEFAULT_OUT = HERE / "results"
QWEN_VOCAB = 151936  # Qwen2.5-VL's config.vocab_size
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

# label -> step.py case + what the label changes
PAPO_KL = ["algo.kl_coef=0.01", "algo.kl_kind=k3", "algo.dual_clip=3.0"]  # recipes/papo_g.yaml
GROUPS = {
    "vs_trl": {"vlmrl_grpo": {"case": "vlmrl_grpo"}, "trl_grpo": {"case": "trl_grpo"}},
    "ablations": {"vlmrl_grpo": {"case": "vlmrl_grpo"},
                  "no_share_prompt": {"case": "vlmrl_grpo", "overrides": ["train.share_prompt=false"]},
                  "no_share_cache": {"case": "vlmrl_grpo", "overrides": ["hf_sampler.share_prompt_cache=false"]}},
    "allocator_off": {"vlmrl_grpo": {"case": "vlmrl_grpo", "keep_freed_memory": False},
                      "trl_grpo": {"case": "trl_grpo", "keep_freed_memory": False}},
    "papo": {"grpo_kl": {"case": "vlmrl_grpo", "overrides": PAPO_KL},
             "papo_kl": {"case": "vlmrl_papo", "overrides": PAPO_KL + ["algo.papo.mask_order=raw",
                                                                       "algo.papo.masked_grad=false"]},
             "papo_kl_masked_grad": {"case": "vlmrl_papo", "overrides": PAPO_KL + ["algo.papo.mask_order=raw",
                                                                                   "algo.papo.masked_grad=true"]}},
    # crops: boxes on the half-resolution first view; the recipe's pixel budget keeps their native resolution
    "dtpo": {"dtpo_one_turn": {"case": "dtpo_one_turn"},
             "dtpo_two_turn_small_crop": {"case": "dtpo_two_turn", "crop_box": "small"},
             "dtpo_two_turn_full_crop": {"case": "dtpo_two_turn", "crop_box": "full"}},
}
COUNT_FLOPS = ("vlmrl_grpo", "trl_grpo")
# --quick: the tiny model, its own vocabulary and one padded to 32768 rows (151936 makes TRL's tiny steps ~13 s)
QUICK = dict(size="tiny", lengths=[4, 8], vocabs=[0, 32768], image_sizes=[224, 112], target=(8, 32768), steps=1,
             warmup=1, in_process=True)  # step cases whose warm-up step runs under the FLOP counter


ALL_GROUPS = ("vs_trl", "ablations", "allocator_off", "papo", "dtpo", "rollout")


def plan(lengths: list[int], vocabs: list[int], image_sizes: list[int], target: tuple[int, int],
         rollout: bool = True, groups: tuple[str, ...] = ALL_GROUPS) -> list[dict]:
    """The points of the sweep, in the order they run: (group, new_tokens, vocab, image size); `groups` keeps
    those groups only (the grid is group vs_trl)."""
    points = [{"group": "vs_trl", "new_tokens": n, "vocab": v, "image_size": image_sizes[0]}
              for v in vocabs for n in lengths]
    points += [{"group": "vs_trl", "new_tokens": lengths[0], "vocab": vocabs[-1], "image_size": s}
               for s in image_sizes[1:]]
    n, v = target
    points += [{"group": g, "new_tokens": n, "vocab": v, "image_size": image_sizes[0]}
               for g in ("ablations", "allocator_off", "papo", "dtpo")]
    if rollout:
        points.append({"group": "rollout", "new_tokens": n, "vocab": v, "image_size": image_sizes[0]})
    points = [p for p in points if p["group"] in groups]
    for p in points:
        p["name"] = f"{p['group']} N={p['new_tokens']} V={p['vocab']} img={p['image_size']}"
        p["target"] = (p["new_tokens"], p["vocab"], p["image_size"]) == (n, v, image_sizes[0])
    return points


def language_params(size: str, vocab: int) -> int:
    """Language-model parameters of a bench size with `vocab` rows (tied embedding counted once), from its dims."""
    from vlmrl.models.tiny import SIZES

    register_bench_sizes()
    d = SIZES[size]
    h, kv = d["hidden"], d["kv_heads"] * d["hidden"] // d["heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * d["mlp"]
    return d["layers"] * layer + vocab * h


VOCAB_ELEMENT_S = 4.5e-8  # s per logit (row x vocabulary entry) of a log-prob pass's elementwise work, measured below
# TRL's steps ran at ~40% of the rate its FLOPs alone predict: 75.6 s measured against ~33 s (30m, N=64,
# vocabulary 151936, one thread, AMD EPYC 2 cores under load); vlmrl's came out at 12.0 s against ~14.5 s
TRL_SLOWDOWN = 2.3


def estimate_s(point: dict, size: str, B: int, G: int, steps: int, warmup: int, rate: float) -> float:
    """Rough seconds a point takes: the FLOPs its steps do at `rate` FLOP/s (~half the matmul peak: what both
    frameworks reached in step.py's runs), plus the elementwise work over the logits (TRL's chunked log-prob
    pass over every prompt and completion token; `VOCAB_ELEMENT_S` is from a profile of its tiny-model step with
    151936 rows: ~6 s of mul/sub/exp over 896 rows), plus ~20 s of worker start-up. TRL runs the prompt per row."""
    n_l = language_params(size, point["vocab"])
    V = point["vocab"] or 4096
    N, P = point["new_tokens"], 40 + (point["image_size"] // 28) ** 2
    vlmrl = 8 * n_l * B * (P + G * N) + rate * VOCAB_ELEMENT_S * B * G * N * V  # as FLOPs at `rate`
    trl = TRL_SLOWDOWN * (8 * n_l * B * G * (P + N) + rate * VOCAB_ELEMENT_S * B * G * (P + N) * V)
    per_round = {"vs_trl": vlmrl + trl, "allocator_off": vlmrl + trl, "ablations": vlmrl * (1 + 1.5 + 1.2),
                 "papo": vlmrl * (1.25 + 1.6 + 2.1), "dtpo": vlmrl * (1 + 1.6 + 2.0),
                 "rollout": 2 * n_l * B * G * (P + N) * 4}[point["group"]]
    rounds = 1 if point["group"] == "rollout" else warmup + steps + (1 if point["target"] else 0)
    return 20 + per_round * (rounds + (2 if point["group"] == "rollout" else 0) * steps) / rate


def run_sweep(size: str = "30m", lengths=(64, 256, 512), vocabs=(4096, QWEN_VOCAB), image_sizes=(224, 448),
              target=(256, QWEN_VOCAB), prompts: int = 1, group_size: int = 8, steps: int = 3, warmup: int = 1,
              lr: float = 1e-4, seed: int = 0, threads: int = 1, matmul_size: int = 2048, timeout: float = 1800.0,
              in_process: bool = False, rollout: bool = True, out: str | Path | None = DEFAULT_OUT,
              groups: tuple[str, ...] = ALL_GROUPS, log=print) -> dict:
    import torch

    register_bench_sizes()
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("the sweep compares against TRL: pip install -e '.[bench]' (check that torch stays as it is)")
    if tuple(target) not in {(n, v) for n in lengths for v in vocabs}:
        raise ValueError(f"the target point {target} must be on the grid of --lengths x --vocabs")
    if threads:
        torch.set_num_threads(threads)
    machine = machine_info()
    machine["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    mm_start = matmul_flops(matmul_size)
    bad = [g for g in groups if g not in ALL_GROUPS]
    if bad:
        raise ValueError(f"unknown group(s) {bad}; choose from {', '.join(ALL_GROUPS)}")
    points = plan(list(lengths), list(vocabs), list(image_sizes), tuple(target), rollout, tuple(groups))
    est = [estimate_s(p, size, prompts, group_size, steps, warmup, 0.5 * mm_start) for p in points]
    log(f"sweep: {len(points)} points, size {size}, B={prompts} x G={group_size}, {warmup} warm-up + {steps} timed "
        f"steps; estimated {sum(est) / 60:.0f} min at {mm_start / 2e9:.0f} GFLOP/s (half the measured matmul peak)")
    out_dir = Path(out) if out is not None else None
    t_start = time.perf_counter()
    done: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vlmrl-sweep-") as tmp:
        tmp = Path(tmp)
        (tmp / "logs").mkdir()
        models: dict = {}
        data: dict = {}
        for i, point in enumerate(points):
            t0 = time.perf_counter()
            V, img, N = point["vocab"], point["image_size"], point["new_tokens"]
            if V not in models:
                models[V] = make_bench_model(size, tmp / f"model-{V}", seed=seed, vocab=V)
            if img not in data:
                data[img] = make_bench_data(tmp / f"data-{img}", seed=seed, image_size=img)
            base = {"size": size, "model": str(models[V]), "data": str(data[img]), "prompts": prompts,
                    "group_size": group_size, "new_tokens": N, "lr": lr, "seed": seed,
                    "total_steps": warmup + steps + 2, "threads": threads, "rollout_data": True}
            if point["group"] == "rollout":
                work = tmp / f"work-{i}-rollout"
                work.mkdir()
                spec = {**base, "case": "rollout", "repeats": steps, "workdir": str(work)}
                res = run_cases({"rollout": spec}, 0, 1, tmp / "logs", timeout, in_process)["rollout"]
                point["rollout"] = (res["steps"][0]["report"] | {"peak_rss_mb": res["peak_rss_mb"]}
                                    if "steps" in res else res)
                point["cases"] = {}
            else:
                specs = {}
                for label, extra in GROUPS[point["group"]].items():
                    work = tmp / f"work-{i}-{label}"
                    work.mkdir()
                    specs[label] = {**base, **extra, "workdir": str(work), "count_flops": label in COUNT_FLOPS}
                    if extra.get("crop_box"):
                        specs[label].update(crop_box=crop_box(extra["crop_box"], img), crop_pixels=recipe_crops())
                    elif extra["case"].startswith("dtpo"):
                        specs[label]["crop_pixels"] = recipe_crops()
                profile = ({k: str(out_dir / f"profile_{k}.txt") for k in ("vlmrl_grpo", "trl_grpo")}
                           if point["target"] and point["group"] == "vs_trl" and out_dir is not None else None)
                if profile:
                    out_dir.mkdir(parents=True, exist_ok=True)
                raw = run_cases(specs, warmup, steps, tmp / "logs", timeout, in_process, profile=profile)
                params = next((r["setup"]["params"] for r in raw.values() if "params" in r.get("setup", {})), None)
                point["params"] = params
                point["cases"] = {}
                for label, r in raw.items():
                    x = summarize_case(r, params["language"] if params else None,
                                       params.get("vision_flops_per_patch", 0.0) if params else 0.0)
                    if "profile" in r:
                        x["profile_top"] = r["profile"]["profile_top"]
                        x["profile_path"] = r["profile"]["profile_path"]
                    point["cases"][label] = x
            point["ratios"] = group_ratios(point["group"], point["cases"], point.get("rollout"))
            point["wall_s"] = time.perf_counter() - t0
            done.append(point)
            elapsed = time.perf_counter() - t_start
            scale = elapsed / sum(est[: i + 1])  # the estimate corrected by how it did so far
            failed = [k for k, x in point["cases"].items() if "error" in x] + (
                ["rollout"] if "error" in (point.get("rollout") or {}) else [])
            log(f"[{i + 1}/{len(points)}] {point['name']}: {point['wall_s']:.0f} s (estimated {est[i]:.0f}); "
                + ", ".join(f"{k} {v:.2f}" for k, v in point["ratios"].items() if isinstance(v, float)
                            and not k.endswith(("_from_min", "_paired")))
                + (f"; FAILED: {', '.join(failed)}" if failed else "")
                + f"; about {scale * sum(est[i + 1:]) / 60:.1f} min left")
    mm_end = matmul_flops(matmul_size)
    peak = max(mm_start, mm_end)
    for p in done:
        for x in p["cases"].values():
            for key, frac in (("flops_per_s", "fraction_of_matmul_peak"),
                              ("counted_flops_per_s", "counted_fraction_of_matmul_peak")):
                if key in x:
                    x[frac] = x[key] / peak
        p["ratios"] = group_ratios(p["group"], p["cases"], p.get("rollout"))  # again, with the fractions
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["matmul_fp32_flops"] = {"start": mm_start, "end": mm_end, "peak": peak, "n": matmul_size}
    report = {
        "config": {"family": FAMILY, "size": size, "bench_size": BENCH_SIZES.get(size), "lengths": list(lengths),
                   "vocabs": list(vocabs), "image_sizes": list(image_sizes), "target": list(target),
                   "prompts": prompts, "group_size": group_size, "steps": steps, "warmup": warmup, "lr": lr,
                   "seed": seed, "threads": threads, "dtype": "float32", "device": "cpu",
                   "tokenizer": "vlmrl's tiny BPE tokenizer (a few thousand tokens), embedding padded to the "
                                "vocabulary size; not Qwen's real tokenizer",
                   "groups": list(groups), "estimated_s": sum(est)},
        "machine": machine,
        "points": done,
        "wall_s": time.perf_counter() - t_start,
    }
    report["targets"] = judge_targets(done)
    report["markdown"] = to_markdown(report)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "sweep.md").write_text(report["markdown"])
    return report


def crop_box(kind: str, image_size: int) -> list[int]:
    """A crop box on the half-resolution first view: "small" (the step benchmark's 50x50 box) or "full" (the
    whole view: the largest crop, the full image at its native resolution)."""
    view = image_size // 2
    return [10, 10, 60, 60] if kind == "small" else [0, 0, view, view]


def recipe_crops() -> tuple[int, int]:
    from rollout import recipe_crop_pixels  # recipes/dtpo.yaml's rollout.crop_min_pixels / crop_max_pixels

    return recipe_crop_pixels()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: tiny model, lengths 4,8, its own vocabulary and 32768, images 224 and 112, "
                        "1 timed step, cases in this process (~1-2 min)")
    p.add_argument("--size", default="30m")
    p.add_argument("--lengths", default="64,256,512", help="completion lengths N")
    p.add_argument("--vocabs", default=f"4096,{QWEN_VOCAB}", help="vocabulary sizes (0: the tokenizer's)")
    p.add_argument("--image-sizes", default="224,448", help="square image sizes; the first is used everywhere")
    p.add_argument("--target", default=f"256,{QWEN_VOCAB}", help="N,vocab of the target point")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (medians); rollout repeats")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per case first (the first is FLOP-counted)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-process", action="store_true", help="cases in this process (peak RSS then not per case)")
    p.add_argument("--no-rollout", action="store_true")
    p.add_argument("--groups", default=",".join(ALL_GROUPS),
                   help="point groups to run (vs_trl is the grid; the others run at the target point)")
    p.add_argument("--estimate", action="store_true", help="print the plan and its estimated time, run nothing")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a worker may take for one answer")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    kw = dict(size=a.size, lengths=ints(a.lengths), vocabs=ints(a.vocabs), image_sizes=ints(a.image_sizes),
              target=tuple(ints(a.target)), steps=a.steps, warmup=a.warmup, in_process=a.in_process,
              groups=tuple(g for g in a.groups.split(",") if g))
    if a.quick:
        kw.update(QUICK)
    if kw["warmup"] < 1 or kw["steps"] < 1:
        p.error("--warmup and --steps must be >= 1 (the warm-up step is the FLOP-counted one)")
    if a.estimate:
        from step_measure import matmul_flops

        rate = 0.5 * matmul_flops(512 if a.quick else 2048)
        points = plan(kw["lengths"], kw["vocabs"], kw["image_sizes"], kw["target"], not a.no_rollout, kw["groups"])
        est = [estimate_s(q, kw["size"], a.prompts, a.group_size, kw["steps"], kw["warmup"], rate) for q in points]
        for q, e in zip(points, est):
            print(f"{q['name']}: ~{e / 60:.1f} min")
        print(f"total ~{sum(est) / 60:.0f} min at {rate / 1e9:.0f} GFLOP/s (half the measured matmul peak)")
        return 0
    report = run_sweep(**kw, prompts=a.prompts, group_size=a.group_size, threads=a.threads,
                       rollout=not a.no_rollout, timeout=a.timeout, out=a.out,
                       matmul_size=512 if a.quick else 2048)
    print(report["markdown"])
    print(f"wrote {Path(a.out) / 'sweep.json'} and sweep.md ({report['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
