"""Rollout benchmark: the engine against plain `model.generate`, and two-turn tool rollouts against one-turn ones.

Runs offline on a tiny/small random checkpoint built by `vlmrl.models.tiny.make_tiny`, in one process, on
one machine. Every path is warmed once, then the paths are timed in turn for `--repeats` rounds (so that
load from other processes falls on all alike); the median wall time is reported, and ratios are also given
from the fastest repeat of each path (less sensitive to other processes on a shared machine).

Measured (see tools/bench/README.md for the details and the caveats):

1. `engine_direct`: `RolloutEngine(mode="direct")` on B prompts x G samples (one prefill per prompt, the KV
   cache shared by its G samples). Stops are banned so every row samples exactly N tokens.
2. `hf_generate`: `policy.model.generate(do_sample=True, temperature=1, top_p=1, min_new_tokens=N,
   max_new_tokens=N)` on the same prompts, each repeated G times (B*G rows, B*G prefills), as a naive
   user would run it. Ratio: engine tok/s / generate tok/s.
   `hf_generate_shared_prefill`: the stronger HF baseline: under `torch.inference_mode()`, each prompt (but its
   last token) is prefilled once, its KV cache repeated for the G rows, and `model.generate` continues from it.
   Ratio: engine tok/s / this tok/s.
3. `tool_one_turn`: tool mode, turn 0 samples N tokens and makes no call (stops banned).
   `tool_two_turn`: tool mode, turn 0 decodes a fixed valid crop call (the sampler makes each call
   token certain, so it is decoded step by step like a sampled one), the tool runs with the crop pixel budget
   of `recipes/dtpo.yaml`, and turn 1 samples N tokens per row (reusing the row's cache: only the tool
   observation is prefilled). Ratio: two-turn wall time per generated token (call + N) / one-turn's.

Usage: python tools/bench/rollout.py [--size tiny|small] [--family qwen2_5_vl] [--group-size 8] [--prompts 2]
       [--new-tokens 64] [--repeats 3] [--threads T] [--recipe recipes/dtpo.yaml] [--no-reuse-kv] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from vlmrl.models.codec import Seq  # noqa: E402
from vlmrl.models.decoding import PackedLinears  # noqa: E402
from vlmrl.models.hf_sampler import HFSampler, HFSamplerConfig  # noqa: E402
from vlmrl.models.policy import Policy  # noqa: E402
from vlmrl.models.sampler import SamplingParams  # noqa: E402
from vlmrl.rollout.engine import RolloutConfig, RolloutEngine  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "dtpo.yaml"  # its crop pixel budget is used
# qwen2_5_vl reads absolute pixel coordinates of the seen view; the others 0-1000. Both are valid here.
CALL_TEXT = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [10, 10, 60, 60]}}</tool_call>'


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


@contextmanager
def force_tokens(policy: Policy, ids: list[int]):
    """Within the block, the k-th next-token distribution `policy` samples from makes token `ids[k]` certain (for
    every row). The logits are changed after the LM head (in `logp_from_logits`), so the decoding step itself
    runs as it does for sampled tokens, packed LM-head weights included."""
    pending, plain = iter(ids), policy.logp_from_logits

    def logp(logits, temperature):
        t = next(pending, None)
        if t is not None:
            logits = logits.clone()
            logits[..., t] += 1e4
        return plain(logits, temperature)

    policy.logp_from_logits = logp
    try:
        yield
    finally:
        del policy.logp_from_logits


class BenchSampler(HFSampler):
    """The HF sampler with stops banned so every sampled turn runs exactly `new_tokens` tokens.

    `force_call=True`: turn 0 of each rollout decodes the fixed `CALL_TEXT` for every row (`force_tokens`: each
    token costs one decoding step, as if sampled, and the row's cache goes on to turn 1 as in a real rollout);
    later turns sample for real. Call `start()` before each rollout (it also drops the packed decode weights).
    The eos ids are replaced by `<|image_pad|>`, which sampling never emits, so no row stops early.
    """

    def __init__(self, base: Policy, new_tokens: int, force_call: bool = False, reuse_kv: bool = True):
        super().__init__(base, HFSamplerConfig(reuse_kv=reuse_kv))
        self.eos_token_ids = [self.codec.image_token_id]
        self.new_tokens = new_tokens
        self.force_call = force_call
        self.turn = 0
        self.sampled_tokens = 0
        self.call_ids = self.codec.tokenizer.encode(CALL_TEXT, add_special_tokens=False)

    def start(self) -> None:
        """Before each rollout. The decoding step's packed weight copies are dropped, so each rollout packs them
        again and pays for it, as in training, where the weights change between rollouts."""
        self.turn, self.sampled_tokens = 0, 0
        self.linears = PackedLinears(self.config.packed_weights, self.config.packed_min_numel)

    def generate(self, prompts, params: SamplingParams):
        turn, self.turn = self.turn, self.turn + 1
        if self.force_call and turn == 0:
            with force_tokens(self.policy, self.call_ids):
                return super().generate(prompts, replace(params, max_new_tokens=len(self.call_ids),
                                                         stop_strings=("</tool_call>",)))
        gens = super().generate(prompts, replace(params, max_new_tokens=self.new_tokens, stop_strings=()))
        self.sampled_tokens += sum(len(g.ids) for g in gens)
        return gens


def recipe_crop_pixels(recipe: str | Path = RECIPE) -> tuple[int, int]:
    """(crop_min_pixels, crop_max_pixels) of a recipe's rollout section."""
    from vlmrl.config import load_config

    r = load_config(recipe).rollout
    return r.crop_min_pixels, r.crop_max_pixels


def _time_round_robin(fns: dict, repeats: int) -> dict:
    """Warm every path once (recording the peak RSS it reaches), then time the paths in turn, `repeats` rounds,
    so that load from other processes falls on all of them alike. Returns name -> (times, tokens, rss, growth)."""
    out = {}
    for name, fn in fns.items():
        before = _rss_mb()
        fn()
        out[name] = [[], None, _rss_mb(), _rss_mb() - before]
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name][1] = fn()
            out[name][0].append(time.perf_counter() - t0)
    return out


def _summary(timed: list, **extra) -> dict:
    times, tokens, rss, growth = timed
    med = statistics.median(times)
    return {"times_s": [round(t, 4) for t in times], "median_s": med, "min_s": min(times), "tokens": tokens,
            "tok_per_s": tokens / med if med > 0 else 0.0, "s_per_token": med / tokens if tokens else 0.0,
            "peak_rss_mb": rss, "peak_rss_growth_mb": growth, **extra}


def shared_prefill_generate(model, inputs: dict, G: int, N: int, pad_token_id: int, seed: int = 0,
                            do_sample: bool = True) -> torch.Tensor:
    """HF generation with each prompt prefilled once per group: one row per prompt in `inputs`; under
    `torch.inference_mode()` the prompt but its last token runs once through `model` (images included), its
    KV cache is repeated for the G rows, and `model.generate` samples N tokens per row from there (it runs only
    the last prompt token before decoding). Returns the G rows per prompt (prompt ids + N generated ids)."""
    ids = inputs["input_ids"]
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("shared_prefill_generate needs every prompt to end in the last column (left padding)")
    per_token = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.shape[:2] == ids.shape}  # ids, mask, ...
    rest = {k: v for k, v in inputs.items() if k not in per_token}  # images
    torch.manual_seed(seed)
    with torch.inference_mode():
        pre = model(**{k: v[:, :-1] for k, v in per_token.items()}, use_cache=True, **rest)
        cache = pre.past_key_values
        cache.batch_repeat_interleave(G)
        sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if do_sample else dict(do_sample=False)
        return model.generate(**{k: v.repeat_interleave(G, 0) for k, v in per_token.items()}, cache=cache,
                              max_new_tokens=N, min_new_tokens=N, pad_token_id=pad_token_id, **sampling)


def run_bench(size: str = "tiny", family: str = "qwen2_5_vl", group_size: int = 8, prompts: int = 2,
              new_tokens: int = 64, repeats: int = 3, out: str | Path | None = DEFAULT_OUT, seed: int = 0,
              workdir: str | Path | None = None, recipe: str | Path = RECIPE, reuse_kv: bool = True,
              model: str | Path | None = None, data: str | Path | None = None) -> dict:
    """`model`: a checkpoint to use instead of a fresh `make_tiny(family, size=size)`; `data`: a jsonl whose first
    `prompts` rows are the prompts (default: a fresh synthetic-zoom set)."""
    from vlmrl.data import load_dataset, make_zoom_dataset
    from vlmrl.models.tiny import make_tiny

    G, N = group_size, new_tokens
    crop_min, crop_max = recipe_crop_pixels(recipe)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        if model is None:
            model = make_tiny(family, tmp / "model", size=size, seed=seed)
        base = Policy.load(model, dtype="float32", device="cpu")
        base.model.eval()
        if data is None:
            make_zoom_dataset(tmp / "data", n=prompts, n_test=1, seed=seed)
            data = tmp / "data" / "train.jsonl"
        samples = list(load_dataset(data))[:prompts]
        B = len(samples)
        results: dict = {}

        # 1. engine, direct mode
        pol = BenchSampler(base, N)
        eng = RolloutEngine(base, RolloutConfig(mode="direct", max_new_tokens=N, temperature=1.0,
                                                prompt_style="compact", max_total_tokens=1 << 16), sampler=pol)

        def engine_direct():
            pol.start()
            trajs = eng.rollout(samples, n_per_prompt=G, generator=torch.Generator().manual_seed(seed))
            return sum(sum(t.response_mask) for t in trajs)

        prompt_lens = [len(eng.build_prompt(s)[0].ids) for s in samples]

        # 2. plain HF generate on the same prompts, each repeated G times
        seqs = [Seq(p.ids, [base.codec.vision(im) for im in p.images]) for p, _ in map(eng.build_prompt, samples)]
        inputs = base.collate([s for s in seqs for _ in range(G)])
        inputs.pop("position_ids")

        def hf_generate():
            torch.manual_seed(seed)
            with torch.no_grad():
                ids = base.model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                          max_new_tokens=N, min_new_tokens=N, pad_token_id=base.pad_token_id)
            return int((ids.shape[1] - inputs["input_ids"].shape[1]) * ids.shape[0])

        # 2b. the same with each prompt prefilled once per group, under inference_mode
        one_row = base.collate(seqs)
        one_row.pop("position_ids")

        def hf_generate_shared_prefill():
            ids = shared_prefill_generate(base.model, one_row, G, N, base.pad_token_id, seed)
            return int((ids.shape[1] - one_row["input_ids"].shape[1]) * ids.shape[0])

        # 3. tool mode: one turn (no call) against two turns (forced call, then N sampled tokens)
        tool_cfg = dict(mode="tool", max_turns=2, max_new_tokens=N, temperature=1.0, prompt_style="compact",
                        max_total_tokens=1 << 16, crop_min_pixels=crop_min, crop_max_pixels=crop_max)
        one = BenchSampler(base, N, reuse_kv=reuse_kv)
        eng1 = RolloutEngine(base, RolloutConfig(**tool_cfg), sampler=one)
        two = BenchSampler(base, N, force_call=True, reuse_kv=reuse_kv)
        eng2 = RolloutEngine(base, RolloutConfig(**{**tool_cfg, "max_new_tokens": max(N, len(two.call_ids))}),
                             sampler=two)
        last: dict = {}

        def tool_rollout(engine, pol):
            def fn():
                pol.start()
                trajs = engine.rollout(samples, n_per_prompt=G, generator=torch.Generator().manual_seed(seed))
                last["trajs"] = trajs
                return pol.sampled_tokens
            return fn

        trajs_of: dict = {}

        def keep(name, fn):
            def wrapped():
                n = fn()
                trajs_of[name] = last.pop("trajs", None)
                return n
            return wrapped

        timed = _time_round_robin({"engine_direct": engine_direct, "hf_generate": hf_generate,
                                   "hf_generate_shared_prefill": hf_generate_shared_prefill,
                                   "tool_one_turn": keep("one", tool_rollout(eng1, one)),
                                   "tool_two_turn": keep("two", tool_rollout(eng2, two))}, repeats)
        results["engine_direct"] = _summary(timed["engine_direct"], rows=B * G)
        results["hf_generate"] = _summary(timed["hf_generate"], rows=B * G)
        results["hf_generate_shared_prefill"] = _summary(timed["hf_generate_shared_prefill"], rows=B * G)
        results["tool_one_turn"] = _summary(timed["tool_one_turn"], rows=B * G,
                                            turns=max(len(t.turns) for t in trajs_of["one"]))
        trajs = trajs_of["two"]
        times = timed["tool_two_turn"][0]
        ok_calls = sum(1 for t in trajs for c in t.tool_calls if c.valid)
        if ok_calls != len(trajs):
            raise RuntimeError(f"the forced crop call failed in {len(trajs) - ok_calls} of {len(trajs)} rows: "
                               f"{[c.error for t in trajs for c in t.tool_calls if not c.valid][:1]}")
        policy_tokens = sum(sum(t.response_mask) for t in trajs)
        results["tool_two_turn"] = _summary(
            timed["tool_two_turn"], rows=B * G, turns=min(len(t.turns) for t in trajs),
            policy_tokens=policy_tokens, forced_call_tokens=len(two.call_ids),
            s_per_policy_token=statistics.median(times) / policy_tokens,
            mean_len=statistics.mean(len(t.ids) for t in trajs),
            crop_visual_tokens=statistics.mean(im.visual_tokens for t in trajs for im in t.images if im.kind == "crop"))

    report = {
        "config": {"size": size, "family": family, "group_size": G, "prompts": B, "new_tokens": N,
                   "repeats": repeats, "seed": seed, "dtype": "float32", "device": "cpu",
                   "prompt_tokens": prompt_lens, "crop_min_pixels": crop_min, "crop_max_pixels": crop_max,
                   "crop_pixels_from": str(recipe), "reuse_kv": reuse_kv},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__},
        "results": results,
        "ratios": _ratios(results, "median_s"),
        "ratios_fastest": _ratios(results, "min_s"),
    }
    report["markdown"] = to_markdown(report)
    write_report(report, out, "rollout_bench")
    return report


def write_report(report: dict, out, stem: str) -> None:
    """`out/<stem>.json` (the whole report) and `out/<stem>.md` (its markdown table); nothing when out is None."""
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(report["markdown"])


def _ratios(results: dict, stat: str) -> dict:
    """The headline ratios from one statistic of the wall times ("median_s" or "min_s")."""
    e, h, t1, t2 = (results[k] for k in ("engine_direct", "hf_generate", "tool_one_turn", "tool_two_turn"))
    one = t1[stat] / t1["tokens"]
    ratios = {"engine_over_generate_tok_per_s": (e["tokens"] / e[stat]) / (h["tokens"] / h[stat])}
    if "hf_generate_shared_prefill" in results:
        s = results["hf_generate_shared_prefill"]
        ratios["engine_over_shared_prefill_generate_tok_per_s"] = (e["tokens"] / e[stat]) / (s["tokens"] / s[stat])
        ratios["shared_prefill_over_generate_tok_per_s"] = (s["tokens"] / s[stat]) / (h["tokens"] / h[stat])
    return {**ratios,
            "two_turn_over_one_turn_cost_per_sampled_token": t2[stat] / t2["tokens"] / one,
            "two_turn_over_one_turn_cost_per_policy_token": t2[stat] / t2["policy_tokens"] / one}


def to_markdown(report: dict) -> str:
    c, m, r = report["config"], report["machine"], report["results"]
    lines = [
        f"# Rollout benchmark ({c['size']} {c['family']}, B={c['prompts']} G={c['group_size']} "
        f"N={c['new_tokens']}, median of {c['repeats']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), {m['platform']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, float32 on CPU.",
        f"Crop budget {c['crop_min_pixels']}-{c['crop_max_pixels']} px (from {Path(c['crop_pixels_from']).name}), "
        f"KV reuse across turns: {'on' if c['reuse_kv'] else 'off'}.",
        "",
        "| path | rows | sampled tokens | median s | tok/s | ms / token | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in r.items():
        lines.append(f"| {name} | {x['rows']} | {x['tokens']} | {x['median_s']:.3f} | {x['tok_per_s']:.1f} | "
                     f"{1000 * x['s_per_token']:.2f} | {x['peak_rss_mb']:.0f} |")
    q, f = report["ratios"], report["ratios_fastest"]
    key = "engine_over_generate_tok_per_s"
    lines += [
        "",
        f"- engine (direct) tok/s / `model.generate` tok/s: **{q[key]:.2f}x** (fastest repeats: {f[key]:.2f}x)",
        f"- engine (direct) tok/s / `model.generate` with the prompt prefilled once per group, under inference_mode: "
        f"**{q['engine_over_shared_prefill_generate_tok_per_s']:.2f}x** "
        f"(fastest repeats: {f['engine_over_shared_prefill_generate_tok_per_s']:.2f}x)",
        f"- two-turn / one-turn tool rollout, wall time per generated token (the "
        f"{r['tool_two_turn']['forced_call_tokens']}-token call + {c['new_tokens']}): "
        f"**{q['two_turn_over_one_turn_cost_per_policy_token']:.2f}x** "
        f"(fastest repeats: {f['two_turn_over_one_turn_cost_per_policy_token']:.2f}x; per turn-1 sampled token, "
        f"the call's decoding charged to them: {q['two_turn_over_one_turn_cost_per_sampled_token']:.2f}x)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "small"), default="tiny")
    p.add_argument("--family", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=str(RECIPE), help="recipe whose rollout crop pixel budget the tool uses")
    p.add_argument("--no-reuse-kv", action="store_true", help="re-prefill each row's whole history on turn 1")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    report = run_bench(size=a.size, family=a.family, group_size=a.group_size, prompts=a.prompts,
                       new_tokens=a.new_tokens, repeats=a.repeats, out=a.out, seed=a.seed, recipe=a.recipe,
                       reuse_kv=not a.no_reuse_kv)
    print(report["markdown"])
    print(f"wrote {Path(a.out) / 'rollout_bench.json'} and rollout_bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
