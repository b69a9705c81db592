"""GPU device check of the vLLM backend (driven by tools/device_check_vllm.sh; < 10 minutes on one GPU).

1. a Qwen2.5-VL-3B-shaped checkpoint with random weights, built offline (vlmrl's locally trained tokenizer, the
   output vocabulary padded to Qwen's 151936 rows so sampling costs what it costs with the real model);
2. tokens/s of the vLLM sampler vs the HF sampler on it (tools/bench/sampler_vllm.py, side by side);
3. one `vlmrl train` step (GRPO, tool mode, zoom data) with `rollout.backend: vllm` (colocated, sleep mode on):
   rollout through vLLM, the update, the weight sync into vLLM, and a second rollout after it (two steps, so the
   synced weights are sampled from), with the sampler/trainer log-prob gap of each step.

Usage: python tools/device_check_vllm.py [--out DIR] [--size 3b|tiny32] [--steps 2]
(`--size tiny32` is the same path on CPU in a minute, to check the script itself.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Qwen2.5-VL-3B-Instruct's shapes (config.json of the release), vocab padded to its 151936 rows
SHAPE_3B = dict(hidden=2048, layers=36, heads=16, kv_heads=2, mlp=11008, vocab=4096, v_hidden=1280, v_layers=32,
                v_heads=16)
VOCAB_3B = 151936


def build_3b(out: Path) -> Path:
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmrl.models import tiny
    from vlmrl.models.processor import save_processor

    tiny.SIZES["3b"] = SHAPE_3B
    tok = tiny.build_tokenizer(SHAPE_3B["vocab"], seed=0)
    cfg = tiny.build_config("qwen2_5_vl", "3b", tok)
    cfg.text_config.vocab_size = VOCAB_3B
    cfg.vision_config.intermediate_size = 3420
    cfg.vision_config.out_hidden_size = SHAPE_3B["hidden"]
    cfg.vision_config.fullatt_block_indexes = [7, 15, 23, 31]
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = cfg.text_config.eos_token_id
    model.generation_config.pad_token_id = cfg.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(out, "qwen2_5_vl", tok)
    del model
    return out


def sh(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT), env=dict(os.environ,
                           PYTHONPATH=str(ROOT)))
    print(f"  ({time.time() - t:.0f} s, exit {r.returncode}, log {log})", flush=True)
    if r.returncode:
        print(log.read_text()[-4000:])
        raise SystemExit(r.returncode)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "device_check_vllm_out"))
    p.add_argument("--size", default="3b", choices=("3b", "tiny32"))
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    t0 = time.time()
    model = out / "model"
    if not (model / "config.json").is_file():
        if args.size == "3b":
            build_3b(model)
        else:
            from vlmrl.models.tiny import make_tiny

            make_tiny("qwen2_5_vl", model, size="tiny32")
    print(f"model ready ({time.time() - t0:.0f} s)", flush=True)
    big = args.size == "3b"
    bench = [py, "tools/bench/sampler_vllm.py", "--model", str(model), "--out", str(out), "--repeats", "3",
             "--prompts", "16" if big else "2", "--group-size", "8" if big else "2",
             "--new-tokens", "256" if big else "16", "--gpu-memory-utilization", "0.5"]
    sh(bench, out / "bench.log")
    data = out / "data"
    if not (data / "train.jsonl").is_file():
        sh([py, "-m", "vlmrl.cli", "make-data", "zoom", "--out", str(data), "--n", "64", "--n-test", "16"],
           out / "data.log")
    run = out / "run"
    train = [py, "-m", "vlmrl.cli", "train", "recipes/grpo.yaml", f"model.path={model}",
             f"data.train={data / 'train.jsonl'}", "data.eval=", f"train.output_dir={run}",
             f"train.steps={args.steps}", "train.prompts_per_step=8" if big else "train.prompts_per_step=2",
             "rollout.group_size=4" if big else "rollout.group_size=2", "rollout.mode=tool",
             "rollout.max_new_tokens=128" if big else "rollout.max_new_tokens=12", "train.plot=false",
             "train.micro_batch_size=4", "train.resume=none", "rollout.backend=vllm",
             "vllm.gpu_memory_utilization=0.3", "vllm.tis_cap=2.0", "train.eval_every=0"]
    sh(train, out / "train.log")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "time/rollout", "time/old_logp", "time/update", "mismatch/logp_abs_mean", "mismatch/logp_abs_max",
            "mismatch/tis_weight_mean", "reward/mean", "response_length")
    summary = {"bench": json.loads(next(out.glob("sampler_vllm_*.json")).read_text()),
               "train": [{k: r.get(k) for k in keys} for r in rows], "seconds": round(time.time() - t0)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
