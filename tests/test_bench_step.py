"""tools/bench/step.py: the step benchmark runs end to end at its smallest setting (no timing assertions).

One step per case, 4 tokens, G=2, tiny model, cases in this process (`--in-process`) so the test starts fast;
one more test drives a case through a worker process (the default mode of the full benchmark)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ["--sizes", "tiny", "--steps", "1", "--warmup", "0", "--new-tokens", "4", "--group-size", "2",
            "--prompts", "1", "--rollout-repeats", "1", "--matmul-size", "256", "--min-seconds", "0"]
CASE_KEYS = ("times_s", "median_s", "min_s", "counts", "s_per_gen_token", "peak_rss_mb", "rss_baseline_mb",
             "rss_over_baseline_mb", "model_flops", "flops_per_s", "fraction_of_matmul_peak")


def _load():
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "tools" / "bench" / "step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args, out):
    assert _load().main(SMALLEST + args + ["--out", str(out)]) == 0
    report = json.loads((out / "step_bench.json").read_text())
    assert (out / "step_bench.md").read_text().startswith("# Step benchmark")
    return report


def _check_case(name, x, gen_tokens):
    assert "error" not in x, x.get("error")
    for key in CASE_KEYS:
        assert key in x, (name, key)
    assert len(x["times_s"]) == 1 and x["median_s"] > 0
    assert 0 < x["fraction_of_matmul_peak"] < 1, name  # a step cannot beat the measured matmul peak
    assert x["peak_rss_mb"] >= x["rss_baseline_mb"] > 0
    c = x["counts"]
    assert c["rows"] == 2 and c["gen_tokens"] == gen_tokens, (name, c)
    assert c["completion_tokens_min"] == c["completion_tokens_max"]  # every row runs its full budget


@pytest.mark.timeout(120)
def test_short_steps_run_until_each_case_has_min_seconds(tmp_path):
    """More rounds than --steps, for every case (TRL's too, where installed: its max_steps must allow them)."""
    cases = "dtpo_one_turn,vlmrl_grpo" + (",trl_grpo" if importlib.util.find_spec("trl") else "")
    report = _run(["--no-rollout", "--in-process", "--cases", cases, "--min-seconds", "0.4", "--timeout", "60"],
                  tmp_path)
    assert len(report["sizes"]["tiny"]["cases"]) == cases.count(",") + 1
    assert report["config"]["min_seconds"] == 0.4
    for name, x in report["sizes"]["tiny"]["cases"].items():
        assert len(x["times_s"]) > 1 and sum(x["times_s"]) >= 0.4, (name, x["times_s"])
        assert len(x["times_s"]) < 200


@pytest.mark.timeout(120)
def test_step_bench_vlmrl_side(tmp_path, capsys):
    report = _run(["--no-trl", "--in-process"], tmp_path)
    assert "## Targets" in capsys.readouterr().out
    tiny = report["sizes"]["tiny"]
    assert set(tiny["cases"]) == {"vlmrl_grpo", "vlmrl_papo", "dtpo_one_turn", "dtpo_two_turn"}
    assert tiny["params"]["language"] > 0 and tiny["params"]["vision"] > 0
    call = tiny["cases"]["dtpo_two_turn"]["counts"]["gen_tokens"] // 2 - 4  # forced call + 4 sampled per row
    for name, x in tiny["cases"].items():
        _check_case(name, x, 2 * 4 + (2 * call if name == "dtpo_two_turn" else 0))
    assert call > 10 and tiny["cases"]["dtpo_two_turn"]["counts"]["turns"] == 2
    assert tiny["cases"]["dtpo_two_turn"]["counts"]["valid_tool_calls"] == 2
    papo = tiny["cases"]["vlmrl_papo"]["counts"]
    assert papo["score_tokens"] == papo["train_tokens"]  # the masked-image pass scores every sequence again
    assert tiny["rollout"]["results"]["engine_direct"]["tok_per_s"] > 0
    one, two = tiny["cases"]["dtpo_one_turn"], tiny["cases"]["dtpo_two_turn"]
    run_one, run_two = one["counts"]["train_run_tokens"], two["counts"]["train_run_tokens"]
    assert run_two > run_one  # the call and the observation are trained too
    assert tiny["ratios"]["dtpo_two_over_one_turn_time_per_run_token"] == pytest.approx(
        (two["median_s"] / run_two) / (one["median_s"] / run_one))
    gen_one, gen_two = one["counts"]["gen_tokens"], two["counts"]["gen_tokens"]
    assert tiny["ratios"]["dtpo_two_over_one_turn_time_per_gen_token_paired"] == pytest.approx(
        two["times_s"][0] / one["times_s"][0] * gen_one / gen_two)  # one round: its own ratio
    assert "per token the gradient pass runs" in (tmp_path / "step_bench.md").read_text()
    # patches the vision tower encodes: the 224x224 image at full resolution (16x16 patches) in direct mode, the
    # half-resolution first view (8x8) in tool mode, once per group; each row's 112x112 crop (8x8); PAPO's masked
    # pass again
    patches = {name: (x["counts"]["run_patches"], x["counts"]["score_run_patches"])
               for name, x in tiny["cases"].items()}
    assert patches == {"vlmrl_grpo": (256, 0), "vlmrl_papo": (256, 256), "dtpo_one_turn": (64, 0),
                       "dtpo_two_turn": (64 + 2 * 64, 0)}
    per_patch, n_lang = tiny["params"]["vision_flops_per_patch"], tiny["params"]["language"]
    c = two["counts"]
    assert two["model_flops"] == pytest.approx(6 * n_lang * c["train_run_tokens"] + 2 * n_lang * (
        c["prefill_tokens"] + c["gen_tokens"]) + 4 * per_patch * 192)
    assert tiny["ratios"]["dtpo_two_over_one_turn_flops_per_gen_token"] == pytest.approx(
        (two["model_flops"] / two["counts"]["gen_tokens"]) / (one["model_flops"] / one["counts"]["gen_tokens"]))
    assert "model FLOPs per generated token" in (tmp_path / "step_bench.md").read_text()
    names = {t["target"] for t in report["targets"]}
    assert names == {"engine_over_generate_tok_per_s", "papo_over_grpo_step_time",
                     "dtpo_two_over_one_turn_time_per_gen_token"}
    assert all(t["value"] > 0 and t["value_from_min"] > 0 and isinstance(t["pass"], bool) for t in report["targets"])
    m = report["machine"]
    assert m["cpu_count"] >= 1 and m["matmul_fp32_flops"]["peak"] > 0


def test_ratios_from_medians_fastest_steps_and_rounds():
    """Hand-made step times of two cases over three rounds: the paired ratio is the median of the per-round ratios
    (2.0, 1.5, 2.6), not the ratio of the medians (2.6 / 1.0); a case with fewer rounds gets no paired ratio."""
    counts = {"gen_tokens": 512, "train_run_tokens": 800}

    def case(times, gen):
        return {"times_s": times, "median_s": sorted(times)[1], "min_s": min(times),
                "counts": {**counts, "gen_tokens": gen}}

    cases = {"dtpo_one_turn": case([1.0, 2.0, 1.0], 512), "dtpo_two_turn": case([2.0, 3.0, 2.6], 768)}
    r, targets = _load().ratios_and_targets("tiny", cases, None)
    name = "dtpo_two_over_one_turn_time_per_gen_token"
    assert r[name] == pytest.approx(2.6 / 1.0 / 1.5)
    assert r[f"{name}_from_min"] == pytest.approx(2.0 / 1.0 / 1.5)
    assert r[f"{name}_paired"] == pytest.approx(2.0 / 1.5)
    assert targets == [{"target": name, "size": "tiny", "value": r[name], "value_from_min": r[f"{name}_from_min"],
                        "value_paired": r[f"{name}_paired"], "goal": "<= 1.3", "pass": False}]
    cases["dtpo_two_turn"] = case([2.0, 3.0], 768) | {"median_s": 2.5}
    r, targets = _load().ratios_and_targets("tiny", cases, None)
    assert f"{name}_paired" not in r and targets[0]["value_paired"] is None


def test_vision_flops_per_patch_by_hand(tmp_path):
    """The tiny qwen2_5_vl vision tower (hidden 32, 2 blocks, MLP 128, merger to the LM's 64 over 2x2 patches)."""
    from vlmrl.models.policy import Policy
    from vlmrl.models.tiny import make_tiny

    core = Policy.load(make_tiny("qwen2_5_vl", tmp_path / "m"), dtype="float32", device="cpu").core
    embed = 32 * 3 * 2 * 14 * 14  # the patch embedding: 3 channels x 2 frames x 14 x 14 pixels -> 32
    block = 32 * 96 + 32 * 32 + 3 * 32 * 128  # qkv, proj, gate/up/down
    merger = (128 * 128 + 128 * 64) / 4  # 4 patches (128 = 4 x 32) -> 128 -> 64, once per visual token
    assert _load().vision_flops_per_patch(core) == 2 * (embed + 2 * block + merger) == 153088


@pytest.mark.timeout(120)
def test_step_bench_trl_side(tmp_path):
    pytest.importorskip("trl")
    report = _run(["--in-process", "--no-rollout", "--cases", "vlmrl_grpo,trl_grpo"], tmp_path)
    tiny = report["sizes"]["tiny"]
    for name in ("vlmrl_grpo", "trl_grpo"):
        _check_case(name, tiny["cases"][name], 2 * 4)
    assert tiny["ratios"]["same_tokens_and_patches_as_trl"] is True  # same prompt tokens, completions, trained tokens, patches
    assert tiny["cases"]["trl_grpo"]["counts"]["run_patches"] == 256
    assert [t["target"] for t in report["targets"]] == ["vlmrl_over_trl_step_time"]


@pytest.mark.timeout(120)
def test_step_bench_worker_process(tmp_path):
    report = _run(["--no-trl", "--no-rollout", "--cases", "vlmrl_grpo"], tmp_path)
    x = report["sizes"]["tiny"]["cases"]["vlmrl_grpo"]
    _check_case("vlmrl_grpo", x, 2 * 4)
    assert report["config"]["in_process"] is False
