"""Peak memory per process: `vlmrl train` in one process vs 2 FSDP2 processes (recipes/accelerate/fsdp2_cpu.yaml).

    python tools/bench/fsdp_memory.py                 # the 30m model, 2 steps, GRPO direct mode
    python tools/bench/fsdp_memory.py --size tiny     # a quick look

Each run is `vlmrl train` as a user launches it (plain, or under `accelerate launch`), with the same per-process
work: every process rolls out `prompts_per_step` prompts x G samples and trains on them. The script polls the
resident set size (RSS) of every training process every 20 ms (psutil) and reports each one's peak, and the peak
of a process that only imports torch, transformers, accelerate and vlmrl's trainer (the runtime, which sharding
cannot shrink), so the model-state part (peak - runtime) is shown too. Writes fsdp_memory.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _env():
    return dict(os.environ, VLMRL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(cmd: list[str], match: str, timeout: float = 1800) -> list[float]:
    """Run `cmd`; the peak RSS (MB) of each process in its tree whose command line contains `match`."""
    import psutil

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, float] = {}
    t0 = time.time()
    while proc.poll() is None:
        try:
            tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                if match in " ".join(p.cmdline()):
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 2**20)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if time.time() - t0 > timeout:
            proc.kill()
            raise TimeoutError(" ".join(cmd))
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return sorted(peaks.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="30m", help="tiny, small or 30m (tools/bench/step_cases.py BENCH_SIZES)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step per process")
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "tools" / "bench" / "results"))
    args = ap.parse_args(argv)

    from vlmrl.data.synthetic import make_zoom_dataset
    from vlmrl.models import tiny

    from step_cases import BENCH_SIZES

    tiny.SIZES.update(BENCH_SIZES)
    work = Path(tempfile.mkdtemp(prefix="fsdp_mem_"))
    model = tiny.make_tiny("qwen2_5_vl", work / "model", size=args.size, seed=0)
    make_zoom_dataset(work / "data", n=32, n_test=4, seed=0)
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        n_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())

    def train_args(out):
        return ["-m", "vlmrl.cli", "train", str(ROOT / "recipes" / "grpo.yaml"), f"model.path={model}",
                f"data.train={work / 'data' / 'train.jsonl'}", f"train.output_dir={out}", f"train.steps={args.steps}",
                f"train.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
                f"rollout.max_new_tokens={args.new_tokens}", "train.eval_every=0", "train.save_every=0",
                "model.dtype=float32", "model.device=cpu", "train.plot=false", "train.trace_samples=0"]

    runtime = peak_rss([sys.executable, "-c", "import torch, transformers, accelerate, time; "
                        "import vlmrl.train.trainer, vlmrl.models.policy; "
                        "from transformers import AutoModelForImageTextToText; time.sleep(1)"], "import torch")
    one = peak_rss([sys.executable, *train_args(work / "one")], "vlmrl.cli")
    two = peak_rss([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "recipes" / "accelerate" / "fsdp2_cpu.yaml"), "--main_process_port", str(_port()),
                    *train_args(work / "two")], "vlmrl.cli")
    two = [x for x in two if x > runtime[0] * 0.9][-2:]  # the 2 workers (not the launcher)
    base = runtime[0]
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "size": args.size, "parameters": n_params, "fp32_weights_mb": n_params * 4 / 2**20,
        "steps": args.steps, "prompts_per_process": args.prompts, "group_size": args.group_size,
        "new_tokens": args.new_tokens,
        "runtime_rss_mb": base, "one_process_peak_mb": one[-1], "fsdp2_two_process_peaks_mb": two,
        "ratio_peak": max(two) / one[-1],
        "ratio_above_runtime": (max(two) - base) / (one[-1] - base),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fsdp_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


if __name__ == "__main__":
    sys.exit(main())
