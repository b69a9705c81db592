"""Sampler benchmark: the vLLM sampler (`VLLMSampler`, colocated) against the HF sampler (`HFSampler`), side by
side in one process, on the same prompts, weights and thread count.

Run it in the vLLM environment (both samplers live there):

    .venv-vllm/bin/python tools/bench/sampler_vllm.py [--size small] [--family qwen2_5_vl] [--prompts 8]
        [--group-size 8] [--new-tokens 64] [--repeats 3] [--threads T] [--model DIR] [--out DIR]

A random checkpoint of `--size` is built offline (or `--model DIR` is used). Each path is warmed once, then the
two are timed in turn for `--repeats` rounds (load from other processes falls on both alike): B prompts (a
224x224 image each, direct mode) x G samples x up to N new tokens at temperature 1 (the sampled tokens are
counted: a sample may stop early at an end-of-turn token, the same for both in expectation). Reported: tokens/s
of each (median and best round) and their ratio; JSON in --out (default tools/bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--family", default="qwen2_5_vl")
    p.add_argument("--model", default=None, help="a checkpoint directory instead of a random --size one")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None)
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from vlmrl.config import RolloutConfig, VLLMConfig
    from vlmrl.models.hf_sampler import HFSampler
    from vlmrl.models.policy import Policy
    from vlmrl.models.sampler import SamplingParams
    from vlmrl.models.tiny import make_tiny
    from vlmrl.models.vllm_sampler import VLLMSampler
    from vlmrl.rollout.engine import RolloutEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    model = Path(args.model) if args.model else make_tiny(args.family, Path(tempfile.mkdtemp()) / "m", size=args.size)
    pol = Policy.load(model, dtype=dtype, device="cuda" if gpu else "cpu")
    rollout = RolloutConfig(mode="direct", max_new_tokens=args.new_tokens, max_total_tokens=4096)
    vllm_cfg = VLLMConfig(gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=256, sleep=False)
    t0 = time.perf_counter()
    samplers = {"hf": HFSampler(pol), "vllm": VLLMSampler(pol, model, vllm_cfg, rollout)}
    vllm_start = time.perf_counter() - t0

    def user(sample, cfg, family):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]

    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    samples = [SimpleNamespace(id=str(i), question="What colour is the large shape?", answer="red",
                               answer_type="word", choices=None, meta={},
                               images=[Image.fromarray(torch.randint(0, 256, (224, 224, 3), generator=g,
                                                                     dtype=torch.uint8).numpy())])
               for i in range(args.prompts)]
    eng = RolloutEngine(pol, rollout, messages_fn=user, sampler=samplers["hf"])
    prompts = [eng.build_prompt(s)[0] for s in samples]

    def run(name: str, seed: int) -> tuple[float, int]:
        params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, n=args.group_size, seed=seed)
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        gens = samplers[name].generate(prompts, params)
        if gpu:
            torch.cuda.synchronize()
        samplers[name].release()
        return time.perf_counter() - t, sum(len(x.ids) for x in gens)

    for name in samplers:  # warm-up (vLLM: the first generate also loads the policy's weights)
        run(name, 0)
    rates: dict[str, list[float]] = {n: [] for n in samplers}
    tokens: dict[str, list[int]] = {n: [] for n in samplers}
    for r in range(args.repeats):
        for name in samplers:
            dt, n = run(name, r + 1)
            rates[name].append(n / dt)
            tokens[name].append(n)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                   + (f", {torch.cuda.get_device_name()}" if gpu else ""),
        "torch_threads": torch.get_num_threads(), "size": args.size if not args.model else str(model),
        "family": args.family, "dtype": dtype, "prompts": args.prompts, "group_size": args.group_size,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "vllm_start_seconds": round(vllm_start, 1),
        **{f"{n}_tokens_per_s_median": round(statistics.median(v), 1) for n, v in rates.items()},
        **{f"{n}_tokens_per_s_best": round(max(v), 1) for n, v in rates.items()},
        **{f"{n}_tokens_mean": statistics.mean(v) for n, v in tokens.items()},
    }
    result["vllm_over_hf_median"] = round(result["vllm_tokens_per_s_median"] / result["hf_tokens_per_s_median"], 2)
    result["vllm_over_hf_best"] = round(result["vllm_tokens_per_s_best"] / result["hf_tokens_per_s_best"], 2)
    print(f"sampler tokens/s ({result['machine']}, {result['torch_threads']} threads, {result['size']} {dtype}, "
          f"B={args.prompts} G={args.group_size} N<={args.new_tokens}):")
    for n in samplers:
        print(f"  {n:5s} median {result[f'{n}_tokens_per_s_median']:8.1f}  best {result[f'{n}_tokens_per_s_best']:8.1f}")
    print(f"  vLLM / HF: {result['vllm_over_hf_median']}x (median), {result['vllm_over_hf_best']}x (best)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sampler_vllm_{args.size if not args.model else 'model'}_{'gpu' if gpu else 'cpu'}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # vLLM may spawn processes
    sys.exit(main())
