"""Memory per process: the RL trainer in one process vs 2 FSDP2 processes (recipes/accelerate/fsdp2_cpu.yaml).

    python tools/bench/fsdp_memory.py                 # the 30m model, 2 steps, GRPO direct mode
    python tools/bench/fsdp_memory.py --size tiny     # a quick look

Both runs do the same per-process work: `Trainer.step()` (each process rolls out `--prompts` prompts x G samples
and trains on them), `--steps` times, in a worker this script starts plainly or under `accelerate launch`. Each
worker reports its peak resident set size (ru_maxrss: what the machine must have) and the bytes of the tensors it
holds between steps (every live CPU tensor's storage counted once, a DTensor by its local shard: weights, sharded
weights, the sampler's full copy, gradients, optimizer state), after set-up and after the last step. The runtime
(a process that only imports torch, transformers, accelerate and the trainer) is measured too. Writes
fsdp_memory.json to --out and prints it.
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


def tensor_mb() -> float:
    import gc

    import torch

    gc.collect()
    seen, total = set(), 0
    for o in gc.get_objects():
        try:
            if torch.is_tensor(o) and o.device.type == "cpu":
                t = o._local_tensor if hasattr(o, "_local_tensor") else o
                st = t.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
        except Exception:  # noqa: BLE001  (objects gc tracks but torch cannot inspect)
            pass
    return total / 2**20


def worker(args) -> None:
    import resource

    from vlmrl.config import load_config
    from vlmrl.train.distributed import make_accelerator
    from vlmrl.train.trainer import Trainer

    acc = make_accelerator(cpu=True)
    cfg = load_config(ROOT / "recipes" / "grpo.yaml", args.overrides)
    trainer = Trainer(cfg, acc)
    after_init = tensor_mb()
    for _ in range(args.steps):
        trainer.step()
    after = tensor_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("FSDP_MEM " + json.dumps({"rank": acc.process_index, "processes": acc.num_processes, "sharded":
                                    trainer.dist.sharded, "peak_rss_mb": peak, "tensors_after_init_mb": after_init,
                                    "tensors_after_steps_mb": after}), flush=True)
    if acc.num_processes > 1:
        import gc

        import torch.distributed as dist

        del trainer
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def run_workers(cmd: list[str]) -> list[dict]:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rows = [json.loads(line.split("FSDP_MEM ", 1)[1]) for line in r.stdout.splitlines() if "FSDP_MEM " in line]
    return sorted(rows, key=lambda x: x["rank"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="30m", help="tiny, small or 30m (tools/bench/step_cases.py BENCH_SIZES)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step per process")
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "tools" / "bench" / "results"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

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

    overrides = [f"model.path={model}", f"data.train={work / 'data' / 'train.jsonl'}",
                 f"train.output_dir={work / 'run'}", f"train.prompts_per_step={args.prompts}",
                 f"rollout.group_size={args.group_size}", f"rollout.max_new_tokens={args.new_tokens}",
                 "model.dtype=float32", "model.device=cpu"]
    me = [str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps), *overrides]
    runtime = peak_rss([sys.executable, "-c", "import torch, transformers, accelerate, time; "
                        "import vlmrl.train.trainer, vlmrl.models.policy; "
                        "from transformers import AutoModelForImageTextToText; time.sleep(1)"], "import torch")[0]
    one = run_workers([sys.executable, *me])
    two = run_workers([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(ROOT / "recipes" / "accelerate" / "fsdp2_cpu.yaml"), "--main_process_port", str(_port()),
                       *me])
    assert len(one) == 1 and not one[0]["sharded"] and len(two) == 2 and all(w["sharded"] for w in two)
    peak1, peak2 = one[0]["peak_rss_mb"], max(w["peak_rss_mb"] for w in two)
    held1, held2 = one[0]["tensors_after_steps_mb"], max(w["tensors_after_steps_mb"] for w in two)
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "size": args.size, "parameters": n_params, "fp32_weights_mb": n_params * 4 / 2**20,
        "steps": args.steps, "prompts_per_process": args.prompts, "group_size": args.group_size,
        "new_tokens": args.new_tokens, "runtime_rss_mb": runtime, "one_process": one[0], "fsdp2_two_processes": two,
        "ratio_peak_rss": peak2 / peak1,
        "ratio_peak_rss_above_runtime": (peak2 - runtime) / (peak1 - runtime),
        "ratio_tensors_held": held2 / held1,
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
