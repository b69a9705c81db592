"""The quickstart's real-image stage: scikit-learn's handwritten digits as VQA, SFT warm start, then RL.

    vlmrl quickstart ...                  (runs it after the zoom stages; --no-digits skips it)

What it does, all from ``recipes/digits.yaml`` with the quickstart's seed and paths:

1. ``vlmrl make-data digits`` -> OUT/digits/data (real 8x8 scans upscaled to 112 px; two question kinds: which
   digit, even or odd; answers balanced per split; train and held-out images disjoint)
2. ``vlmrl sft`` from the quickstart's random model on sft.jsonl (every "which digit" row, one in 50 of the
   even/odd ones) -> OUT/digits/sft_model (a short warm start: it learns to read the digit)
3. ``vlmrl train`` GRPO and PAPO-G from that warm start, same budget -> OUT/digits/{grpo,papo_g} (periodic
   held-out accuracy beside the training reward in plots/reward.png; train.health warns when they part)
4. ``vlmrl eval --task digits --recipe recipes/digits.yaml --perception`` on the held-out split for the warm
   start and both RL models -> OUT/digits/eval/<name>/ (accuracy per question kind, and how much the answers
   depend on the image: the KL between the policy with the image and with 60% of its patches blanked, and the
   share of answers that change)

The claim checked: RL raises held-out greedy accuracy by >= 5 points over the warm start.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from vlmrl.quickstart import ROOT, _cli, pct

DIGITS_RECIPE = ROOT / "recipes" / "digits.yaml"
DIGITS_DATA = {"n": 1500, "n_test": 200}  # every scan not in the held-out 200 is a training image (1597 in all)
KIND_COLUMNS = (("digit", "digit"), ("parity", "even/odd"), ("greater", "greater than K"))  # meta.category, column
RL_RUNS = (("GRPO", "grpo", False), ("PAPO-G", "papo_g", True))


def _eval(model: Path, out: Path, data: Path, recipe: Path, perception: bool) -> dict:
    argv = ["eval", "--task", "digits", "--data", str(data), "--model", str(model), "--recipe", str(recipe),
            "--out", str(out), "--batch-size", "16"]
    if perception:
        argv.append("--perception")
    if not (out / "results.json").is_file():
        with contextlib.redirect_stdout(io.StringIO()):  # the table says it all; results.json keeps it
            _cli(argv)
    return json.loads((out / "results.json").read_text())


def digits_row(name: str, res: dict) -> dict:
    m = res["metrics"]
    r = {"policy": name, "accuracy": m["accuracy"], "n": res["n"]}
    cats = res.get("by", {}).get("category", {})  # accuracy per question kind (results.json by.category)
    r.update({label: cats[kind]["accuracy"] for kind, label in KIND_COLUMNS if kind in cats})
    r["perception_kl"] = m.get("perception/kl_mean")
    r["answer_changed"] = m.get("perception/answer_changed")
    return r


def digits_table(rows: list[dict]) -> str:
    kl = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    kinds = [label for _, label in KIND_COLUMNS if any(label in r for r in rows)]  # the kinds the data asks
    lines = ["| policy | accuracy | " + "".join(f"{k} | " for k in kinds) + "perception KL | answers changed by masking |",
             "|---|---:|" + "---:|" * len(kinds) + "---:|---:|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {pct(r['accuracy'])} | "
                     + "".join(f"{pct(r.get(k))} | " for k in kinds)
                     + f"{kl(r['perception_kl'])} | {pct(r['answer_changed'])} |")
    return "\n".join(lines)


def digits_checks(rows: dict[str, dict]) -> list[tuple[str, bool]]:
    warm, rl = rows["warm start (SFT)"], rows["GRPO"]
    gain = rl["accuracy"] - warm["accuracy"]
    return [(f"RL (GRPO) raises held-out accuracy on real digits by >= 5 points: {100 * gain:+.1f}",
             gain >= 0.05 - 1e-9)]


def run_digits(out: Path, seed: int, model: Path, source: str | None = None, recipe: Path = DIGITS_RECIPE,
               perception: bool = True, overrides: list[str] | None = None) -> dict:
    """The stage above under ``out``/digits; returns {"rows", "checks", "table"}. ``overrides``: dotted recipe
    overrides for the SFT and both RL runs (the quickstart passes its own, e.g. a smoke test's step counts)."""
    d = out / "digits"
    data = d / "data"
    if not (data / "test.jsonl").is_file():
        argv = ["make-data", "digits", "--out", str(data), "--seed", str(seed), "--n", str(DIGITS_DATA["n"]),
                "--n-test", str(DIGITS_DATA["n_test"])]
        if source:
            argv += ["--source", source]
        with contextlib.redirect_stdout(io.StringIO()):
            _cli(argv)
    common = [f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'test.jsonl'}", f"train.seed={seed}",
              *(overrides or [])]
    sft_model = d / "sft_model"
    if not (sft_model / "config.json").is_file():
        _cli(["sft", str(recipe), f"model.path={model}", f"sft.output={sft_model}", f"sft.data={data / 'sft.jsonl'}",
              *common])
    results = {"warm start (SFT)": _eval(sft_model, d / "eval" / "warm_start", data, recipe, perception)}
    for name, run, papo in RL_RUNS:
        run_dir = d / run
        if not (run_dir / "model" / "config.json").is_file():
            _cli(["train", str(recipe), f"model.path={sft_model}", f"train.output_dir={run_dir}",
                  f"algo.papo.enabled={papo}", "train.resume=auto", *common])
        results[name] = _eval(run_dir / "model", d / "eval" / run, data, recipe, perception)
    rows = {name: digits_row(name, res) for name, res in results.items()}
    verdicts = digits_checks(rows)
    return {"rows": list(rows.values()), "checks": [{"claim": c, "holds": ok} for c, ok in verdicts],
            "table": digits_table(list(rows.values()))}
