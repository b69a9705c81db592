"""tools/bench/sweep.py (issue 23's benchmark sweep): the quick sweep end to end, and its parts by hand (the FLOP
counter, the padded vocabulary, the prefix-shared HF baseline, the ratios and targets). No timing assertions."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flop_counter_counts_matmuls_backward_and_packed_linear():
    import torch

    from vlmrl.models.decoding import PackedLinears

    flop_counter = _load("step_cases").flop_counter
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(16, 32)
    with flop_counter() as c:
        (a @ b).sum().backward()
    assert c.get_total_flops() == 2 * 8 * 16 * 32 * 2  # forward, and the gradient of a (b needs none)
    lin, x = torch.nn.Linear(16, 32), torch.randn(4, 16)
    packed = PackedLinears(True, 1)
    with torch.no_grad(), flop_counter() as c:
        y = packed.linear(lin, x)
    if torch.backends.mkldnn.is_available():
        assert c.get_total_flops() == 2 * 4 * 16 * 32
    torch.testing.assert_close(y, lin(x).detach(), atol=1e-5, rtol=1e-5)


def test_bench_model_vocabulary_padded_to_qwen_size(tmp_path):
    """The tiny tokenizer stops at a few hundred tokens; the checkpoint's embedding (tied LM head) gets the
    requested rows, and vlmrl loads it with the tokenizer unchanged."""
    from vlmrl.models.policy import Policy

    path = _load("step_cases").make_bench_model("tiny", tmp_path / "m", vocab=3000)
    pol = Policy.load(path, dtype="float32", device="cpu")
    assert pol.core.get_output_embeddings().weight.shape[0] == 3000
    assert pol.core.get_input_embeddings().weight.data_ptr() == pol.core.get_output_embeddings().weight.data_ptr()
    assert len(pol.codec.tokenizer) < 3000
    assert json.loads((path / "config.json").read_text())["text_config"]["vocab_size"] == 3000


def test_shared_prefill_generate_matches_stock_generate(tmp_path):
    """Greedy: prefilling the prompt once and repeating its cache for G rows gives stock `generate`'s tokens on the
    G-times repeated prompt (images, Qwen2.5-VL's 3-D positions and all)."""
    import torch

    from vlmrl.data import load_dataset, make_zoom_dataset
    from vlmrl.models.codec import Seq
    from vlmrl.models.policy import Policy
    from vlmrl.models.tiny import make_tiny
    from vlmrl.rollout.engine import RolloutConfig, RolloutEngine

    rollout = _load("rollout")
    pol = Policy.load(make_tiny("qwen2_5_vl", tmp_path / "m"), dtype="float32", device="cpu")
    make_zoom_dataset(tmp_path / "d", n=1, n_test=1)
    sample = next(iter(load_dataset(tmp_path / "d" / "train.jsonl")))
    prompt, _ = RolloutEngine(pol, RolloutConfig(mode="direct", prompt_style="compact")).build_prompt(sample)
    seq = Seq(prompt.ids, [pol.codec.vision(im) for im in prompt.images])
    G, N = 3, 5
    one = pol.collate([seq])
    one.pop("position_ids")
    shared = rollout.shared_prefill_generate(pol.model, one, G, N, pol.pad_token_id, do_sample=False)
    many = pol.collate([seq] * G)
    many.pop("position_ids")
    with torch.no_grad():
        stock = pol.model.generate(**many, do_sample=False, max_new_tokens=N, min_new_tokens=N,
                                   pad_token_id=pol.pad_token_id)
    assert shared.shape == (G, len(prompt.ids) + N)
    assert torch.equal(shared, stock)


def _case(times, rss, flops=None, **counts):
    x = {"times_s": times, "median_s": sorted(times)[len(times) // 2], "min_s": min(times), "peak_rss_mb": rss,
         "rss_over_baseline_mb": rss - 100, "counts": {"rows": 8, "prompt_tokens": [100], "gen_tokens": 512,
                                                        "train_tokens": 4896, "run_patches": 256, **counts}}
    if flops:
        x.update(counted_flops=flops, counted_fraction_of_matmul_peak=0.5)
    return x


def test_group_ratios_and_targets_by_hand():
    rep = _load("sweep_report")
    cases = {"vlmrl_grpo": _case([1.0, 2.0, 3.0], 1100, 100e9), "trl_grpo": _case([4.0, 5.0, 2.0], 2100, 300e9)}
    r = rep.group_ratios("vs_trl", cases)
    assert r["vlmrl_over_trl_step_time"] == pytest.approx(2.0 / 4.0)
    assert r["vlmrl_over_trl_step_time_from_min"] == pytest.approx(1.0 / 2.0)
    assert r["vlmrl_over_trl_step_time_paired"] == pytest.approx(0.4)  # median of 0.25, 0.4, 1.5
    assert r["vlmrl_over_trl_peak_rss"] == pytest.approx(1100 / 2100)
    assert r["vlmrl_over_trl_rss_over_baseline"] == pytest.approx(1000 / 2000)
    assert r["trl_over_vlmrl_counted_flops"] == pytest.approx(3.0)
    assert r["same_tokens_and_patches_as_trl"] is True
    cases["trl_grpo"]["counts"]["run_patches"] = 2048  # a side that encodes more patches: not the same inputs
    assert rep.group_ratios("vs_trl", cases)["same_tokens_and_patches_as_trl"] is False
    dtpo = {"dtpo_one_turn": _case([2.0], 0), "dtpo_two_turn_small_crop": _case([4.0], 0, gen_tokens=768),
            "dtpo_two_turn_full_crop": _case([6.0], 0, gen_tokens=768, run_patches=512)}
    r = rep.group_ratios("dtpo", dtpo)
    assert r["dtpo_two_over_one_turn_time_per_gen_token_small_crop"] == pytest.approx(2.0 / 1.5)
    assert r["dtpo_two_over_one_turn_time_per_gen_token_full_crop"] == pytest.approx(3.0 / 1.5)
    assert r["dtpo_full_crop_patches"] == 256
    points = [{"name": "p", "group": "vs_trl", "target": True, "ratios": rep.group_ratios("vs_trl", cases)},
              {"name": "q", "group": "rollout", "target": True,
               "ratios": {"engine_over_shared_prefill_generate_tok_per_s": 1.2}}]
    targets = {t["target"]: t for t in rep.judge_targets(points)}
    assert targets["vlmrl_over_trl_step_time"]["pass"] is True  # 0.5 <= 0.5
    assert targets["vlmrl_over_trl_peak_rss"]["pass"] is True  # 0.52
    assert targets["vlmrl_counted_fraction_of_matmul_peak"]["pass"] is False  # 0.5 < 0.6
    assert targets["engine_over_shared_prefill_generate_tok_per_s"]["pass"] is False


def test_plan_puts_every_group_at_the_target_point():
    sweep = _load("sweep")
    points = sweep.plan([64, 256, 512], [4096, 151936], [224, 448], (256, 151936))
    grid = [(p["new_tokens"], p["vocab"], p["image_size"]) for p in points if p["group"] == "vs_trl"]
    assert grid == [(64, 4096, 224), (256, 4096, 224), (512, 4096, 224), (64, 151936, 224), (256, 151936, 224),
                    (512, 151936, 224), (64, 151936, 448)]
    assert [p["group"] for p in points if p["target"]] == ["vs_trl", "ablations", "allocator_off", "papo", "dtpo",
                                                           "rollout"]
    # the 30m model with Qwen's vocabulary: 24.1M language-model parameters at 4096 rows, 77.8M more at 151936
    assert sweep.language_params("30m", 4096) == pytest.approx(24.13e6, rel=0.01)
    assert sweep.language_params("30m", 151936) - sweep.language_params("30m", 4096) == 147840 * 512


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_sweep_end_to_end(tmp_path):
    pytest.importorskip("trl")
    sweep = _load("sweep")
    assert sweep.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    md = (tmp_path / "sweep.md").read_text()
    q = sweep.QUICK
    planned = sweep.plan(q["lengths"], q["vocabs"], q["image_sizes"], q["target"])
    assert [p["name"] for p in report["points"]] == [p["name"] for p in planned]
    expected = {"vs_trl": {"vlmrl_over_trl_step_time", "vlmrl_over_trl_peak_rss", "trl_over_vlmrl_counted_flops",
                           "vlmrl_counted_fraction_of_matmul_peak", "trl_counted_fraction_of_matmul_peak"},
                "ablations": {"no_share_prompt_over_grpo_step_time", "no_share_cache_over_grpo_step_time"},
                "allocator_off": {"vlmrl_over_trl_step_time", "vlmrl_over_trl_peak_rss"},
                "papo": {"papo_over_grpo_step_time", "papo_masked_grad_over_grpo_step_time"},
                "dtpo": {"dtpo_two_over_one_turn_time_per_gen_token_small_crop",
                         "dtpo_two_over_one_turn_time_per_gen_token_full_crop"},
                "rollout": {"engine_over_generate_tok_per_s", "engine_over_shared_prefill_generate_tok_per_s"}}
    for p in report["points"]:
        for label, x in p["cases"].items():
            assert "error" not in x, (p["name"], label, x.get("error", "")[-2000:])
        assert expected[p["group"]] <= set(p["ratios"]), (p["name"], sorted(p["ratios"]))
        assert all(v > 0 for k, v in p["ratios"].items() if isinstance(v, float)), p["ratios"]
        if p["group"] == "vs_trl":
            v, t = p["cases"]["vlmrl_grpo"], p["cases"]["trl_grpo"]
            assert p["ratios"]["same_tokens_and_patches_as_trl"] is True
            # TRL runs each prompt once per row: it does more work for the same inputs
            assert t["counted_flops"] > v["counted_flops"] > 0
            assert t["torch_threads_in_trl_thread"] == [1]
        if p["group"] == "dtpo":
            assert p["ratios"]["dtpo_full_crop_patches"] > p["ratios"]["dtpo_small_crop_patches"] > 0
    assert [t["target"] for t in report["targets"]] == list(_load("sweep_report").TARGETS)
    assert all(t["value"] is not None and isinstance(t["pass"], bool) for t in report["targets"])
    for p in report["points"]:
        if p["group"] == "vs_trl":
            assert f"| {p['new_tokens']} | {p['vocab']} | {p['image_size']} |" in md
    for key in ("no_share_prompt_over_grpo_step_time", "papo_masked_grad_over_grpo_step_time",
                "dtpo_two_over_one_turn_time_per_gen_token_full_crop", "engine_over_shared_prefill_generate_tok_per_s"):
        assert f"| {key} |" in md
    profiled = [x for p in report["points"] for x in p["cases"].values() if "profile_top" in x]
    assert len(profiled) == 2 and all(Path(x["profile_path"]).is_file() and x["profile_top"] for x in profiled)
    if any(t["pass"] is False for t in report["targets"]):
        assert "## Where the time goes" in md
