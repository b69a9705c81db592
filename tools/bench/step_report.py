"""The step benchmark's report (tools/bench/step.py): per-case medians and FLOP/s, the ratios judged against the
targets (`TARGETS`), and the markdown tables."""

from __future__ import annotations

import statistics

from step_measure import model_flops

# target name -> (goal, "<=" or ">=")
TARGETS = {
    "vlmrl_over_trl_step_time": (0.5, "<="),
    "engine_over_generate_tok_per_s": (2.0, ">="),
    "papo_over_grpo_step_time": (1.4, "<="),
    "dtpo_two_over_one_turn_time_per_gen_token": (1.3, "<="),
}


def summarize_case(raw: dict, n_language: int | None, vision_per_patch: float = 0.0) -> dict:
    if "error" in raw:
        return {"error": raw["error"]}
    times = [s["time_s"] for s in raw["steps"]]
    med = statistics.median(times)
    counts = raw["steps"][len(raw["steps"]) // 2]["counts"]
    setup = raw["setup"]
    out = {"times_s": [round(t, 4) for t in times], "median_s": med, "min_s": min(times), "counts": counts,
           "s_per_gen_token": med / counts["gen_tokens"], "peak_rss_mb": raw["peak_rss_mb"],
           "rss_baseline_mb": setup["rss_baseline_mb"],
           "rss_over_baseline_mb": raw["peak_rss_mb"] - setup["rss_baseline_mb"],
           "setup_s": setup["setup_s"]}
    if n_language:
        f = model_flops(counts, n_language, vision_per_patch)
        out.update(model_flops=f, flops_per_s=f / med)
    counted = [s["counts"]["counted_flops"] for s in raw.get("warmup", []) + raw["steps"]
               if "counted_flops" in s.get("counts", {})]
    if counted:  # torch's FLOP counter over one (warm-up) step: the work the step really ran
        out.update(counted_flops=counted[0], counted_flops_per_s=counted[0] / med)
    threads = [s["torch_threads_in_trl_thread"] for s in raw["steps"] if "torch_threads_in_trl_thread" in s]
    if threads:
        out["torch_threads_in_trl_thread"] = sorted(set(threads))
    return out


def _steps_cell(times: list[float]) -> str:
    """Every step time, or for many steps (the tiny model with --min-seconds) their count and range."""
    if len(times) <= 15:
        return ", ".join(f"{t:.2f}" for t in times)
    return f"{len(times)} steps, {min(times):.2f}-{max(times):.2f}"


def ratios_and_targets(size: str, cases: dict, rollout: dict | None) -> tuple[dict, list]:
    """Ratios from the medians (what the targets are judged on); as `<name>_from_min`, from the fastest step of
    each case: other processes only ever add time, so the minimum is the less disturbed estimate on a shared
    machine; and as `<name>_paired`, the median over rounds of the ratio within a round (the two cases' steps
    of one round run back to back, so a slow phase of the machine tends to hit both)."""
    ok = {k: v for k, v in cases.items() if "median_s" in v}
    r: dict = {}

    def both(name, num, den, scale=1.0):
        x, y = ok[num], ok[den]
        r[name] = x["median_s"] / y["median_s"] / scale
        r[f"{name}_from_min"] = x["min_s"] / y["min_s"] / scale
        if len(x["times_s"]) == len(y["times_s"]):  # the same rounds
            r[f"{name}_paired"] = statistics.median([a / b for a, b in zip(x["times_s"], y["times_s"])]) / scale

    if "vlmrl_grpo" in ok and "trl_grpo" in ok:
        both("vlmrl_over_trl_step_time", "vlmrl_grpo", "trl_grpo")
        a, b = ok["vlmrl_grpo"]["counts"], ok["trl_grpo"]["counts"]
        r["same_tokens_and_patches_as_trl"] = all(a[k] == b[k] for k in ("rows", "prompt_tokens", "gen_tokens", "train_tokens",
                                                           "run_patches"))
    if "vlmrl_papo" in ok and "vlmrl_grpo" in ok:
        both("papo_over_grpo_step_time", "vlmrl_papo", "vlmrl_grpo")
    if "dtpo_one_turn" in ok and "dtpo_two_turn" in ok:
        one, two = ok["dtpo_one_turn"], ok["dtpo_two_turn"]
        per_token = two["counts"]["gen_tokens"] / one["counts"]["gen_tokens"]
        both("dtpo_two_over_one_turn_time_per_gen_token", "dtpo_two_turn", "dtpo_one_turn", per_token)
        both("dtpo_two_over_one_turn_step_time", "dtpo_two_turn", "dtpo_one_turn")
        # reported, not a target: per token the gradient pass runs (each prompt once, then every row's own part)
        per_run = two["counts"]["train_run_tokens"] / one["counts"]["train_run_tokens"]
        both("dtpo_two_over_one_turn_time_per_run_token", "dtpo_two_turn", "dtpo_one_turn", per_run)
        if "model_flops" in one and "model_flops" in two:  # the time ratio the two steps would have at equal FLOP/s
            r["dtpo_two_over_one_turn_flops_per_gen_token"] = two["model_flops"] / one["model_flops"] / per_token
    if rollout and "results" in rollout:
        e, h = rollout["results"]["engine_direct"], rollout["results"]["hf_generate"]
        r["engine_over_generate_tok_per_s"] = rollout["ratios"]["engine_over_generate_tok_per_s"]
        r["engine_over_generate_tok_per_s_from_min"] = ((e["tokens"] / min(e["times_s"]))
                                                        / (h["tokens"] / min(h["times_s"])))
    targets = []
    for name, (goal, op) in TARGETS.items():
        if name in r:
            value = r[name]
            targets.append({"target": name, "size": size, "value": value, "value_from_min": r[f"{name}_from_min"],
                            "value_paired": r.get(f"{name}_paired"), "goal": f"{op} {goal}",
                            "pass": value <= goal if op == "<=" else value >= goal})
    return r, targets


def to_markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    mm = m["matmul_fp32_flops"]
    lines = [
        f"# Step benchmark ({c['family']}, B={c['prompts']} prompt(s) x G={c['group_size']}, N={c['new_tokens']} "
        f"tokens per sampled turn, median of {c['steps']} warm steps)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), {m['platform']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; float32 on CPU. Load average "
        f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end. Measured fp32 matmul peak "
        f"({mm['n']}^3, best of 5): {mm['peak'] / 1e9:.1f} GFLOP/s (start {mm['start'] / 1e9:.1f}, "
        f"end {mm['end'] / 1e9:.1f}).",
        "",
        f"Inputs: {c['inputs']}",
        "",
        "## Targets",
        "",
        "| target | size | measured (medians) | from the fastest steps | paired (median over rounds) | goal "
        "| pass (medians) |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for t in report["targets"]:
        paired = f"{t['value_paired']:.2f}x" if t.get("value_paired") is not None else "-"
        lines.append(f"| {t['target']} | {t['size']} | {t['value']:.2f}x | {t['value_from_min']:.2f}x | {paired} | "
                     f"{t['goal']} | {'PASS' if t['pass'] else 'FAIL'} |")
    for key, what in (("dtpo_two_over_one_turn_time_per_run_token",
                       "step time per token the gradient pass runs (each prompt once, then every row's call, tool "
                       "observation and answer)"),
                      ("dtpo_two_over_one_turn_flops_per_gen_token",
                       "model FLOPs per generated token, i.e. the per-token time ratio if both steps ran at the same "
                       "FLOP/s (the two-turn step also trains the tool observation and encodes the crops)")):
        values = [f"{size} {s['ratios'][key]:.2f}x" for size, s in report["sizes"].items() if key in s["ratios"]]
        if values:
            lines += ["", f"Not a target: DTPO two-turn / one-turn {what}: " + ", ".join(values) + "."]
    lines += [
        "",
        "## Step time, FLOP/s and memory",
        "",
        "| size | case | median s | min s | steps s | gen tok | trained tok | ms / gen tok | GFLOP / step | GFLOP/s "
        "| % of matmul peak | peak RSS MiB | over baseline MiB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, s in report["sizes"].items():
        for name, x in s["cases"].items():
            if "error" in x:
                lines.append(f"| {size} | {name} | failed: {x['error'].strip().splitlines()[-1][:120]} |"
                             + " |" * 11)
                continue
            if "skipped" in x:
                lines.append(f"| {size} | {name} | skipped: {x['skipped']} |" + " |" * 11)
                continue
            k = x["counts"]
            lines.append(
                f"| {size} | {name} | {x['median_s']:.3f} | {x['min_s']:.3f} | "
                f"{_steps_cell(x['times_s'])} | "
                f"{k['gen_tokens']} | {k['train_tokens']} | {1000 * x['s_per_gen_token']:.2f} | "
                f"{x.get('model_flops', 0) / 1e9:.2f} | {x.get('flops_per_s', 0) / 1e9:.2f} | "
                f"{100 * x.get('fraction_of_matmul_peak', 0):.1f} | {x['peak_rss_mb']:.0f} | "
                f"{x['rss_over_baseline_mb']:.0f} |")
    lines += ["", "## Rollout throughput (tools/bench/rollout.py: engine direct mode vs `model.generate`)", "",
              "| size | B x G x N | engine tok/s | generate tok/s | engine / generate | from the fastest repeats "
              "| rollout.py's other ratios |", "|---|---|---:|---:|---:|---:|---|"]
    for size, s in report["sizes"].items():
        ro = s.get("rollout")
        if not ro:
            continue
        if "error" in ro:
            lines.append(f"| {size} | failed: {ro['error'].strip().splitlines()[-1][:120]} | | | | | |")
            continue
        rc, rr, q = ro["config"], ro["results"], ro["ratios"]
        other = "; ".join(f"{k} {v:.2f}x" for k, v in q.items() if k != "engine_over_generate_tok_per_s")
        lines.append(f"| {size} | {rc['prompts']} x {rc['group_size']} x {rc['new_tokens']} | "
                     f"{rr['engine_direct']['tok_per_s']:.0f} | {rr['hf_generate']['tok_per_s']:.0f} | "
                     f"{q['engine_over_generate_tok_per_s']:.2f}x | "
                     f"{s['ratios']['engine_over_generate_tok_per_s_from_min']:.2f}x | {other} |")
    lines += ["", "Model sizes (parameters): " + "; ".join(
        f"{size}: {p['total'] / 1e6:.2f}M total, {p['language'] / 1e6:.2f}M language model, "
        f"{p['vision'] / 1e6:.2f}M vision" for size, s in report["sizes"].items() if (p := s.get("params"))) + ".",
        "", f"FLOPs: {report['flops_formula']}", ""]
    return "\n".join(lines)
