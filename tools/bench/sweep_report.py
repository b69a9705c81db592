"""The sweep's report (tools/bench/sweep.py): the ratios of each point's group, the targets judged at the target
point, and the markdown tables."""

from __future__ import annotations

import statistics

# target -> (point group, ratio key, goal, "<=" or ">="), judged at the target point (256 tokens, vocabulary 151936)
TARGETS = {
    "vlmrl_over_trl_step_time": ("vs_trl", "vlmrl_over_trl_step_time", 0.5, "<="),
    "engine_over_shared_prefill_generate_tok_per_s": ("rollout", "engine_over_shared_prefill_generate_tok_per_s",
                                                      1.5, ">="),
    "vlmrl_over_trl_peak_rss": ("vs_trl", "vlmrl_over_trl_peak_rss", 0.6, "<="),
    "vlmrl_counted_fraction_of_matmul_peak": ("vs_trl", "vlmrl_counted_fraction_of_matmul_peak", 0.6, ">="),
}
# what a failing target's profile is: the target point's profiled cases (sweep.py's `profile`)
PROFILED_FOR = {"vlmrl_over_trl_step_time": ("vlmrl_grpo", "trl_grpo"),
                "engine_over_shared_prefill_generate_tok_per_s": ("vlmrl_grpo",),
                "vlmrl_over_trl_peak_rss": ("vlmrl_grpo", "trl_grpo"),
                "vlmrl_counted_fraction_of_matmul_peak": ("vlmrl_grpo",)}


def ratio(r: dict, name: str, cases: dict, num: str, den: str, key: str = "median_s", scale: float = 1.0) -> None:
    """r[name] = cases[num][key] / cases[den][key] / scale; for step times also `_from_min` (fastest steps) and
    `_paired` (the median over rounds of the ratio within a round). Nothing when either case failed."""
    x, y = cases.get(num, {}), cases.get(den, {})
    if key not in x or key not in y or not y[key]:
        return
    r[name] = x[key] / y[key] / scale
    if key == "median_s":
        r[f"{name}_from_min"] = x["min_s"] / y["min_s"] / scale
        if len(x["times_s"]) == len(y["times_s"]):
            r[f"{name}_paired"] = statistics.median(a / b for a, b in zip(x["times_s"], y["times_s"])) / scale


def group_ratios(group: str, cases: dict, rollout: dict | None = None) -> dict:
    r: dict = {}
    if group in ("vs_trl", "allocator_off"):
        ratio(r, "vlmrl_over_trl_step_time", cases, "vlmrl_grpo", "trl_grpo")
        ratio(r, "vlmrl_over_trl_peak_rss", cases, "vlmrl_grpo", "trl_grpo", "peak_rss_mb")
        ratio(r, "vlmrl_over_trl_rss_over_baseline", cases, "vlmrl_grpo", "trl_grpo", "rss_over_baseline_mb")
        ratio(r, "trl_over_vlmrl_counted_flops", cases, "trl_grpo", "vlmrl_grpo", "counted_flops")
        for side in ("vlmrl", "trl"):
            x = cases.get(f"{side}_grpo", {})
            for key, name in (("counted_fraction_of_matmul_peak", f"{side}_counted_fraction_of_matmul_peak"),
                              ("fraction_of_matmul_peak", f"{side}_formula_fraction_of_matmul_peak")):
                if key in x:
                    r[name] = x[key]
        a, b = cases.get("vlmrl_grpo", {}).get("counts"), cases.get("trl_grpo", {}).get("counts")
        if a and b:  # the same inputs on both sides (what step.py's `same_tokens_and_patches_as_trl` checks)
            r["same_tokens_and_patches_as_trl"] = all(
                a[k] == b[k] for k in ("rows", "prompt_tokens", "gen_tokens", "train_tokens", "run_patches"))
    elif group == "ablations":
        ratio(r, "no_share_prompt_over_grpo_step_time", cases, "no_share_prompt", "vlmrl_grpo")
        ratio(r, "no_share_cache_over_grpo_step_time", cases, "no_share_cache", "vlmrl_grpo")
    elif group == "papo":
        ratio(r, "papo_over_grpo_step_time", cases, "papo_kl", "grpo_kl")
        ratio(r, "papo_masked_grad_over_grpo_step_time", cases, "papo_kl_masked_grad", "grpo_kl")
    elif group == "dtpo":
        one = cases.get("dtpo_one_turn", {})
        for crop in ("small", "full"):
            two = cases.get(f"dtpo_two_turn_{crop}_crop", {})
            if "counts" in one and "counts" in two:
                per_token = two["counts"]["gen_tokens"] / one["counts"]["gen_tokens"]
                ratio(r, f"dtpo_two_over_one_turn_time_per_gen_token_{crop}_crop", cases,
                      f"dtpo_two_turn_{crop}_crop", "dtpo_one_turn", scale=per_token)
                r[f"dtpo_{crop}_crop_patches"] = two["counts"]["run_patches"] - one["counts"]["run_patches"]
    elif group == "rollout" and rollout and "ratios" in rollout:
        for k, v in rollout["ratios"].items():
            if k.startswith(("engine_", "shared_")):
                r[k] = v
                r[f"{k}_from_min"] = rollout["ratios_fastest"][k]
    return r


def judge_targets(points: list[dict]) -> list[dict]:
    out = []
    for name, (group, key, goal, op) in TARGETS.items():
        p = next((p for p in points if p["target"] and p["group"] == group), None)
        value = p["ratios"].get(key) if p else None
        out.append({"target": name, "point": p["name"] if p else None, "value": value,
                    "value_paired": p["ratios"].get(f"{key}_paired") if p else None,
                    "goal": f"{op} {goal}",
                    "pass": None if value is None else (value <= goal if op == "<=" else value >= goal)})
    return out


def _x(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def to_markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    mm = m["matmul_fp32_flops"]
    lines = [
        f"# Benchmark sweep ({c['family']} {c['size']}, B={c['prompts']} x G={c['group_size']}, median of "
        f"{c['steps']} timed steps after {c['warmup']} warm-up)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPU cores, {c['threads']} torch thread(s), {m['platform']}; torch "
        f"{m['torch']}, transformers {m['transformers']}, trl {m['trl']}; float32 on CPU. Load average "
        f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end. Measured fp32 matmul peak: "
        f"{mm['peak'] / 1e9:.1f} GFLOP/s. Wall time {report['wall_s'] / 60:.1f} min (estimated "
        f"{c['estimated_s'] / 60:.0f}). Tokenizer: {c['tokenizer']}.",
        "",
        "## Targets (at the target point: "
        f"N={c['target'][0]}, vocabulary {c['target'][1]}, image {c['image_sizes'][0]})",
        "",
        "| target | measured (medians) | paired | goal | met |",
        "|---|---:|---:|---|---|",
    ]
    for t in report["targets"]:
        met = "-" if t["pass"] is None else ("yes" if t["pass"] else "**no**")
        lines.append(f"| {t['target']} | {_x(t['value'])} | {_x(t['value_paired'])} | {t['goal']} | {met} |")
    lines += ["", "## vlmrl against TRL, per point", "",
              "| N | vocab | image | vlmrl s | TRL s | vlmrl / TRL time (paired) | vlmrl / TRL peak RSS "
              "| TRL / vlmrl counted FLOPs | vlmrl GFLOP counted | TRL GFLOP counted | vlmrl % peak | TRL % peak "
              "| same inputs | TRL thread torch threads |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for p in report["points"]:
        if p["group"] != "vs_trl":
            continue
        r, v, t = p["ratios"], p["cases"].get("vlmrl_grpo", {}), p["cases"].get("trl_grpo", {})
        if "error" in v or "error" in t:
            err = (v.get("error") or t.get("error")).strip().splitlines()[-1][:120]
            lines.append(f"| {p['new_tokens']} | {p['vocab']} | {p['image_size']} | failed: {err} |" + " |" * 10)
            continue
        lines.append(
            f"| {p['new_tokens']} | {p['vocab']} | {p['image_size']} | {_x(v.get('median_s'))} | "
            f"{_x(t.get('median_s'))} | {_x(r.get('vlmrl_over_trl_step_time'))} "
            f"({_x(r.get('vlmrl_over_trl_step_time_paired'))}) | {_x(r.get('vlmrl_over_trl_peak_rss'))} | "
            f"{_x(r.get('trl_over_vlmrl_counted_flops'))} | {_x(v.get('counted_flops', 0) / 1e9, 1)} | "
            f"{_x(t.get('counted_flops', 0) / 1e9, 1)} | "
            f"{_x(100 * v['counted_fraction_of_matmul_peak'], 0) if 'counted_fraction_of_matmul_peak' in v else '-'} | "
            f"{_x(100 * t['counted_fraction_of_matmul_peak'], 0) if 'counted_fraction_of_matmul_peak' in t else '-'} | "
            f"{r.get('same_tokens_and_patches_as_trl', '-')} | {t.get('torch_threads_in_trl_thread', '-')} |")
    lines += ["", "## At the target point", "", "| group | ratio | medians | paired | from the fastest |",
              "|---|---|---:|---:|---:|"]
    for p in report["points"]:
        if p["group"] == "vs_trl" or not p["target"]:
            continue
        for k, val in p["ratios"].items():
            if k.endswith(("_from_min", "_paired")) or not isinstance(val, float):
                continue
            lines.append(f"| {p['group']} | {k} | {val:.2f} | {_x(p['ratios'].get(k + '_paired'))} | "
                         f"{_x(p['ratios'].get(k + '_from_min'))} |")
        for k, val in p["ratios"].items():
            if isinstance(val, (bool, int)) and not isinstance(val, float):
                lines.append(f"| {p['group']} | {k} | {val} | | |")
    lines += ["", "## Every case", "", "| point | case | median s | steps s | gen tok | peak RSS MiB "
              "| over baseline MiB | counted GFLOP | counted GFLOP/s | formula GFLOP |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for p in report["points"]:
        for label, x in p["cases"].items():
            if "error" in x:
                lines.append(f"| {p['name']} | {label} | failed: {x['error'].strip().splitlines()[-1][:120]} |"
                             + " |" * 7)
                continue
            lines.append(f"| {p['name']} | {label} | {x['median_s']:.3f} | "
                         f"{', '.join(f'{t:.2f}' for t in x['times_s'])} | {x['counts']['gen_tokens']} | "
                         f"{x['peak_rss_mb']:.0f} | {x['rss_over_baseline_mb']:.0f} | "
                         f"{_x(x.get('counted_flops', 0) / 1e9, 1) if 'counted_flops' in x else '-'} | "
                         f"{_x(x.get('counted_flops_per_s', 0) / 1e9, 1) if 'counted_flops' in x else '-'} | "
                         f"{_x(x.get('model_flops', 0) / 1e9, 1)} |")
        ro = p.get("rollout")
        if ro and "results" in ro:
            for path, x in ro["results"].items():
                lines.append(f"| {p['name']} | rollout: {path} | {x['median_s']:.3f} | "
                             f"{', '.join(f'{t:.2f}' for t in x['times_s'])} | {x['tokens']} | | | | | |")
        elif ro and "error" in ro:
            lines.append(f"| {p['name']} | rollout | failed: {ro['error'].strip().splitlines()[-1][:120]} |" + " |" * 7)
    failing = [t for t in report["targets"] if t["pass"] is False]
    profiled = {label: x for p in report["points"] for label, x in p["cases"].items() if "profile_top" in x}
    if failing and profiled:
        lines += ["", "## Where the time goes (targets not met)", "",
                  "One extra step of each case at the target point under torch.profiler (CPU, in the thread the "
                  "step runs in), ops by "
                  "self CPU time (full tables: " + ", ".join(f"`{x['profile_path']}`" for x in profiled.values())
                  + "). Not met: " + ", ".join(t["target"] for t in failing) + "."]
        for label in sorted({k for t in failing for k in PROFILED_FOR[t["target"]]}):
            x = profiled.get(label)
            if not x:
                continue
            lines += ["", f"{label} (one profiled step):", "", "| op | calls | self CPU s | share |",
                      "|---|---:|---:|---:|"]
            for row in x["profile_top"][:12]:
                lines.append(f"| `{row['op']}` | {row['calls']} | {row['self_cpu_s']:.3f} | "
                             f"{100 * row['share']:.1f}% |")
    lines.append("")
    return "\n".join(lines)
