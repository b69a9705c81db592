"""`vlmrl quickstart`: the main job on the embedded default, end to end, with a summary table.

    vlmrl quickstart [--out runs/quickstart] [--seed 0] [--recipe recipes/quickstart.yaml] [--no-direct]
                     [--size small] [--n 1024] [--n-test 128] [key=value ...]   (recipe overrides)

Stages (each prints a header with the time elapsed and an estimate of the time left, see `stage_header`, and
has its own progress bar; the summary ends with each stage's wall time):

1. `make-tiny --size small` (a random Qwen2.5-VL-shaped model built offline) -> OUT/model
2. `make-data zoom` (train and held-out splits; the quickstart's categories and symbols below) -> OUT/data
3. `vlmrl sft RECIPE` warm start on scripted demonstrations (direct answers and crop calls) -> OUT/sft_model
4. `vlmrl train RECIPE` DTPO in the crop-tool loop from the warm start -> OUT/rl (metrics, plots, traces)
5. `vlmrl eval --task zoom --tool` on the held-out split for the warm start, the RL model, and two fixed
   baselines: the RL model forced to always crop (its first turn starts with its own call-opening text)
   and never crop (its first turn starts with its answer-opening text) -> OUT/eval/<name>/
6. the summary table (accuracy, tool-call rate on questions that need zoom vs not, visual tokens per
   sample) -> printed, OUT/summary.md, OUT/summary.json; the trace viewer -> OUT/eval/rl/traces.html
7. (unless --no-direct) GRPO vs PAPO-G on the direct (no-tool) task from the same warm start, with the same
   budget -> OUT/direct/{grpo,papo_g}, a second table.
8. (unless --no-digits) real images: scikit-learn's handwritten digits as VQA, an SFT warm start, then GRPO and
   PAPO-G, evaluated on held-out scans (vlmrl/quickstart_digits.py) -> OUT/digits/, a third table and its claim.

Everything is a pure function of --seed (model init, data, demonstrations, sampling), so seeds are
independent repetitions. Stages whose output exists are reused (delete OUT to start over).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "recipes" / "quickstart.yaml"
DIRECT_RECIPE = ROOT / "recipes" / "quickstart_direct.yaml"
# The quickstart's synthetic task: the colour of the large shape (readable from the low-resolution first
# view) or the colour of a 12-px tag (a few pixels of one vision patch in the first view: a crop shows it
# over whole patches, where reading it is the same skill as reading the large shape). The tag is always in
# the bottom-right corner, so the box to crop never changes: what has to be learned is *when* to crop.
DATA = {"n": 1024, "n_test": 128, "image_size": "224", "categories": "big_color,tag_fill", "tag_layout": "fixed",
        "tag_size": 12}


# Seconds per stage of seed 0's run on a quiet 2-core machine (README: 283 s; the digits stage's 570 is estimated from
# its parts' timings, not yet measured end to end on a quiet machine). Each stage header estimates the
# time left from these, rescaled by how fast the stages that ran so far went against them (a busy machine is
# 2-3x slower: torch uses both cores).
STAGE_SECONDS = {"model": 2, "data": 1, "sft": 167, "rl": 81, "eval": 16, "summary": 0, "direct": 16, "digits": 500}


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def stage_header(title: str, elapsed: float, ran: dict[str, float], todo: list[str]) -> str:
    """`== title (0:12 elapsed, ~4:31 left) ==`. `ran`: seconds of the stages that ran so far (not reused);
    `todo`: the stages still to come, this one included. The time left is STAGE_SECONDS of `todo` scaled by
    this run's pace (seconds taken / reference seconds of the stages that ran), once those stages make up at
    least 10 reference seconds; before that, the quiet 2-core machine's pace, and the header says so."""
    ref_ran = sum(STAGE_SECONDS[k] for k in ran)
    calibrated = ref_ran >= 10
    pace = sum(ran.values()) / ref_ran if calibrated else 1.0
    left = pace * sum(STAGE_SECONDS[k] for k in todo)
    how = "" if calibrated else " at a quiet 2-core machine's pace"
    return f"== {title} ({_clock(elapsed)} elapsed, ~{_clock(left)} left{how}) =="


def _stage(title: str, t_start: float, times: dict[str, float], reused: set, todo: list[str]) -> float:
    ran = {k: v for k, v in times.items() if k not in reused}
    print("\n" + stage_header(title, time.time() - t_start, ran, todo), flush=True)
    return time.time()


def _cli(argv: list[str]) -> None:
    from vlmrl.cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"`vlmrl {' '.join(argv)}` failed with exit code {code}")


def _eval(name: str, model: Path, out: Path, data: Path, cfg, prefix: str = "", tool: bool = True,
          image_max_pixels: int | None = None) -> dict:
    r = cfg.rollout
    argv = ["eval", "--task", "zoom", "--data", str(data / "test.jsonl"), "--model", str(model),
            "--out", str(out / name), "--max-new-tokens", str(r.max_new_tokens), "--prompt-style", r.prompt_style,
            "--batch-size", "16"]
    if tool:
        argv += ["--tool", "--max-turns", str(r.max_turns), "--crop-min-pixels", str(r.crop_min_pixels),
                 "--crop-max-pixels", str(r.crop_max_pixels)]
    if image_max_pixels:
        argv += ["--image-max-pixels", str(image_max_pixels)]
    if prefix:
        argv += ["--prefix", prefix]
    with contextlib.redirect_stdout(io.StringIO()):  # the table below says it all; results.json keeps it
        _cli(argv)
    return json.loads((out / name / "results.json").read_text())


def row(name: str, res: dict) -> dict:
    """One line of the summary: accuracy, tool-call rates by need, visual tokens per sample."""
    by = res.get("by", {}).get("needs_zoom", {})
    z, nz = by.get("true", {}), by.get("false", {})
    return {"policy": name, "accuracy": res["metrics"]["accuracy"],
            "accuracy_zoom": z.get("score"), "accuracy_no_zoom": nz.get("score"),
            "tool_rate_zoom": z.get("tool_call_rate"), "tool_rate_no_zoom": nz.get("tool_call_rate"),
            "visual_tokens": res["visual_tokens_per_sample"], "n": res["n"]}


def checks(rows: dict[str, dict]) -> list[tuple[str, bool]]:
    """The three claims of the quickstart, evaluated on the summary rows."""
    warm, rl, always = rows["warm start (SFT)"], rows["RL (DTPO)"], rows["always crop"]
    gap = rl["tool_rate_zoom"] - rl["tool_rate_no_zoom"]
    return [
        (f"RL improves held-out accuracy by >= 10 points: {100 * (rl['accuracy'] - warm['accuracy']):+.1f}",
         rl["accuracy"] - warm["accuracy"] >= 0.10 - 1e-9),
        (f"RL calls the tool >= 30 points more on zoom questions: {100 * gap:+.1f}", gap >= 0.30 - 1e-9),
        (f"RL accuracy >= always-crop ({100 * rl['accuracy']:.1f} vs {100 * always['accuracy']:.1f}) with fewer "
         f"visual tokens ({rl['visual_tokens']:.1f} vs {always['visual_tokens']:.1f})",
         rl["accuracy"] >= always["accuracy"] - 1e-9 and rl["visual_tokens"] < always["visual_tokens"]),
    ]


def pct(v: float | None) -> str:
    """A table cell: a fraction as a percentage with one decimal, "-" when there is none."""
    return "-" if v is None else f"{100 * v:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| policy | accuracy | acc. zoom / no-zoom | tool calls zoom / no-zoom | visual tokens / sample |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {pct(r['accuracy'])} | {pct(r['accuracy_zoom'])} / {pct(r['accuracy_no_zoom'])}"
                     f" | {pct(r['tool_rate_zoom'])} / {pct(r['tool_rate_no_zoom'])} | {r['visual_tokens']:.1f} |")
    return "\n".join(lines)


def run_quickstart(out: Path, seed: int = 0, recipe: Path = DEFAULT_RECIPE, direct: bool = True,
                   size: str = "small", data_args: dict | None = None, overrides: list[str] | None = None,
                   digits: bool = True, digits_source: str | None = None) -> dict:
    from vlmrl.config import load_config
    from vlmrl.train.sft import CROP_THINK, DIRECT, restate

    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    model, data, sft_model, rl = out / "model", out / "data", out / "sft_model", out / "rl"
    common = [f"model.path={model}", f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'test.jsonl'}",
              f"sft.output={sft_model}", f"train.output_dir={rl}", f"train.seed={seed}", *(overrides or [])]
    cfg = load_config(recipe, common)
    d = {**DATA, **(data_args or {})}
    times, reused = {}, set()  # seconds per stage; stages whose output was reused (not part of the pace)
    todo = [k for k in STAGE_SECONDS if (direct or k != "direct") and (digits or k != "digits")]
    stage = lambda title: _stage(title, t_start, times, reused, todo[len(times):])  # noqa: E731

    t = stage("1/6 tiny model (offline)")
    if not (model / "config.json").is_file():
        _cli(["make-tiny", "--family", "qwen2_5_vl", "--size", size, "--seed", str(seed), "--out", str(model)])
    times["model"] = time.time() - t

    t = stage("2/6 synthetic zoom data (train + held-out)")
    if not (data / "test.jsonl").is_file():
        _cli(["make-data", "zoom", "--out", str(data), "--n", str(d["n"]), "--n-test", str(d["n_test"]),
              "--seed", str(seed), "--image-size", str(d["image_size"]), "--categories", d["categories"],
              "--tag-layout", d["tag_layout"], "--tag-size", str(d["tag_size"])])
    times["data"] = time.time() - t

    t = stage("3/6 SFT warm start on scripted demonstrations")
    if not (sft_model / "config.json").is_file():
        _cli(["sft", str(recipe), *common])
    else:
        reused.add("sft")
    times["sft"] = time.time() - t

    t = stage("4/6 DTPO in the crop-tool loop from the warm start")
    if not (rl / "model" / "config.json").is_file():
        _cli(["train", str(recipe), *common, f"model.path={sft_model}", "train.resume=auto"])
    else:
        reused.add("rl")
    times["rl"] = time.time() - t

    t = stage("5/6 held-out evaluation (vlmrl eval --task zoom --tool)")
    ev = out / "eval"
    # the warm start's own first-turn texts ("{question}" is filled in per sample when its thought restates it)
    crop_prefix = restate(CROP_THINK, "{question}", cfg) + "<tool_call>"
    direct_prefix = restate(DIRECT, "{question}", cfg).split("{answer}")[0]
    results = {
        "warm start (SFT)": _eval("warm_start", sft_model, ev, data, cfg),
        "RL (DTPO)": _eval("rl", rl / "model", ev, data, cfg),
        "always crop": _eval("always_crop", rl / "model", ev, data, cfg, prefix=crop_prefix),
        "never crop": _eval("never_crop", rl / "model", ev, data, cfg, prefix=direct_prefix),
    }
    times["eval"] = time.time() - t

    t = stage("6/6 summary")
    rows = {name: row(name, res) for name, res in results.items()}
    verdicts = checks(rows)
    from vlmrl.viewer import build_report

    build_report(str(ev / "rl" / "traces.jsonl"), out=str(ev / "rl" / "traces.html"), model=str(rl / "model"))
    text = table(list(rows.values()))
    summary = {"seed": seed, "rows": list(rows.values()),
               "checks": [{"claim": c, "holds": ok} for c, ok in verdicts]}

    times["summary"] = time.time() - t
    if direct:
        t = stage("extra: GRPO vs PAPO-G on the direct (no-tool) task, same budget")
        summary["direct"] = run_direct(out, cfg, seed, sft_model, data, overrides or [])
        times["direct"] = time.time() - t
    if digits:
        from vlmrl.quickstart_digits import run_digits

        t = stage("extra: real images (handwritten digits): SFT warm start, then GRPO and PAPO-G")
        summary["digits"] = run_digits(out, seed, model, source=digits_source, overrides=overrides)
        times["digits"] = time.time() - t
    times["total"] = time.time() - t_start
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    write_summary(out, summary, text, verdicts)
    return summary


def run_direct(out: Path, cfg, seed: int, sft_model: Path, data: Path, overrides: list[str]) -> list[dict]:
    """GRPO and PAPO-G from the warm start on the direct task (no tool; the image at the tool loop's first-view
    resolution, the only whole-image view the warm start has seen)."""
    from vlmrl.config import load_config

    pixels = load_config(DIRECT_RECIPE).rollout.image_max_pixels
    rows = []
    for algo in ("grpo", "papo_g"):
        run_dir = out / "direct" / algo
        if not (run_dir / "model" / "config.json").is_file():
            _cli(["train", str(DIRECT_RECIPE), f"model.path={sft_model}", f"data.train={data / 'train.jsonl'}",
                  f"data.eval={data / 'test.jsonl'}", f"train.output_dir={run_dir}", f"train.seed={seed}",
                  f"algo.papo.enabled={algo == 'papo_g'}", "train.resume=auto",
                  *[o for o in overrides if o.startswith("train.steps=")]])
        res = _eval(f"direct_{algo}", run_dir / "model", out / "eval", data, cfg, tool=False,
                    image_max_pixels=pixels)
        rows.append(row(algo.upper().replace("_", "-"), res))
    return rows


def write_summary(out: Path, summary: dict, text: str, verdicts) -> None:
    lines = [f"# vlmrl quickstart, seed {summary['seed']}", "",
             "Held-out split of the synthetic zoom task, greedy, tool mode (low-resolution first view + crop tool).",
             "", text, ""]
    lines += [f"- {'[met]' if ok else '[NOT MET]'} {c}" for c, ok in verdicts]
    if "direct" in summary:
        lines += ["", "Direct task (no tool, the image at the first view's resolution), same budget, from the "
                      "same warm start:", "",
                  table(summary["direct"])]
    if "digits" in summary:
        lines += ["", "Real images (scikit-learn's handwritten digits, held-out scans, greedy), SFT warm start then "
                      "RL with the same budget; perception: KL between the answers with the image and with 60% of "
                      "its patches blanked, and the share of answers that change (`vlmrl eval --perception`):", "",
                  summary["digits"]["table"], ""]
        lines += [f"- {'[met]' if c['holds'] else '[NOT MET]'} {c['claim']}" for c in summary["digits"]["checks"]]
    secs = summary["seconds"]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())]
    md = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(md, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(md)
    print(f"run directory: {out} (summary.md, summary.json, rl/metrics.jsonl, rl/plots/, eval/rl/traces.html)")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, data, demonstrations and sampling")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe of the SFT and DTPO stages")
    p.add_argument("--no-direct", action="store_true", help="skip the GRPO vs PAPO-G direct-task stage")
    p.add_argument("--no-digits", action="store_true", help="skip the real-image stage (handwritten digits)")
    p.add_argument("--digits-source", default=None,
                   help="scikit-learn's digits.csv.gz or a scikit_learn-*.whl (default: the installed scikit-learn)")
    p.add_argument("--size", default="small", choices=("tiny", "small"), help="make-tiny size (default small; tiny for a smoke test)")
    p.add_argument("--n", type=int, default=DATA["n"], help=f"train samples (default {DATA['n']})")
    p.add_argument("--n-test", type=int, default=DATA["n_test"], help=f"held-out samples (default {DATA['n_test']})")
    p.add_argument("overrides", nargs="*", help="dotted recipe overrides for the SFT and DTPO stages, e.g. sft.steps=100")


def run(args: argparse.Namespace) -> int:
    run_quickstart(Path(args.out), seed=args.seed, recipe=Path(args.recipe), direct=not args.no_direct,
                   size=args.size, data_args={"n": args.n, "n_test": args.n_test}, overrides=args.overrides,
                   digits=not args.no_digits, digits_source=args.digits_source)
    return 0


