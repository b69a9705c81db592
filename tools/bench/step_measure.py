"""What the step benchmark (tools/bench/step.py) measures besides time: memory, the machine, token counts and FLOPs.

- `rss_mb`: the process's resident memory, peak or now;
- `matmul_flops`: the machine's fp32 matmul FLOP/s (the physical limit achieved FLOP/s are compared to);
- `machine_info`: CPU, cores, threads, versions;
- `step_counts`: the token and image-patch counts of one step, from its trajectories;
- `vision_flops_per_patch`, `model_flops`, `FLOPS_FORMULA`: the model FLOPs of one step from those counts.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path


def rss_mb(peak: bool = True) -> float:
    """Resident memory of this process, MiB: its peak so far (`VmHWM`) or now (`VmRSS`), from /proc/self/status.

    Not getrusage's ru_maxrss where /proc exists: on Linux it keeps the peak of the process that forked us across
    exec, so a worker would start with the driver's peak. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS)."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def step_counts(trajs, score_passes: int) -> dict:
    """Token counts of one step (inputs of the FLOP estimate, see `model_flops`)."""
    prompts = {t.prompt_index: t.prompt_len for t in trajs}
    gen = sum(sum(t.response_mask) for t in trajs)
    train = sum(len(t.ids) for t in trajs)
    observed = sum(len(t.ids) - t.prompt_len - sum(t.response_mask) for t in trajs)  # tool observations
    run = sum(prompts.values()) + sum(len(t.ids) - t.prompt_len for t in trajs)  # each prompt once per group
    # image patches the vision tower encodes: each prompt's images once per group, every row's crops
    prompt_patches = {t.prompt_index: _patches(t, "input") for t in trajs}
    run_patches = sum(prompt_patches.values()) + sum(_patches(t, "crop") for t in trajs)
    return {"rows": len(trajs), "turns": max(len(t.turns) for t in trajs),
            "prompt_tokens": [prompts[k] for k in sorted(prompts)], "gen_tokens": gen, "train_tokens": train,
            "train_run_tokens": run, "score_run_tokens": score_passes * run,
            "prefill_tokens": sum(prompts.values()) + observed, "score_tokens": score_passes * train,
            "run_patches": run_patches, "score_run_patches": score_passes * run_patches,
            "completion_tokens_min": min(sum(t.response_mask) for t in trajs),
            "completion_tokens_max": max(sum(t.response_mask) for t in trajs),
            "valid_tool_calls": sum(1 for t in trajs for c in t.tool_calls if c.valid)}


def _patches(traj, kind: str) -> int:
    """Image patches (t*h*w of the vision grid) of a trajectory's images of `kind` ("input" or "crop")."""
    if len(traj.images) != len(traj.vision):
        raise ValueError(f"trajectory {traj.sample_id}: {len(traj.images)} images but {len(traj.vision)} vision inputs")
    return sum(math.prod(v.grid_thw) for im, v in zip(traj.images, traj.vision) if im.kind == kind)


def _in_vision_tower(param_name: str) -> bool:
    return ".visual." in f".{param_name}"


def vision_flops_per_patch(model) -> float:
    """Forward FLOPs of the vision tower per image patch: 2 per weight the patch is multiplied by (the patch
    embedding and every block), the merger's weights counted once per merge x merge patches (they act on the
    merged visual token). Norms, biases and position tables are not counted."""
    merge = model.config.vision_config.spatial_merge_size
    flops = 0.0
    for name, p in model.named_parameters():
        if not _in_vision_tower(name) or p.dim() < 2 or "pos_embed" in name:
            continue
        flops += 2 * p.numel() / (merge * merge if "merger" in name else 1)
    return flops


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matmul FLOP/s: best of `repeats` n x n @ n x n products (after one warm-up)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": __import__("trl").__version__ if importlib.util.find_spec("trl") else None}
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


FLOPS_FORMULA = ("model FLOPs per step = 6*N*T_train + 2*N*(T_prefill + T_gen + T_score) + F_patch*(4*P_run + "
                 "P_score), N = language-model parameters (tied embedding/LM head counted once); T_train = tokens "
                 "the gradient pass needs: each prompt (with its image tokens) once per group of G, plus every row's "
                 "turns after it (train_run_tokens); T_gen = generated (policy) tokens; T_prefill = prompt tokens "
                 "once per prompt + tool-observation tokens; T_score = tokens of no-grad scoring passes (PAPO's "
                 "masked-image pass, T_train again: score_run_tokens); F_patch = the vision tower's forward FLOPs per "
                 "image patch (2 per weight, the merger's shared by the 4 patches of a visual token); P_run = "
                 "patches of each prompt's images once per group plus every row's crops (encoded once in the rollout, "
                 "1 x F_patch, and with gradients in the update, 3 x: run_patches); P_score = the same for the "
                 "scoring passes. Attention-score FLOPs are not counted.")


def model_flops(counts: dict, n_language: int, vision_per_patch: float = 0.0) -> float:
    c = counts
    language = 6 * n_language * c["train_run_tokens"] + 2 * n_language * (c["prefill_tokens"] + c["gen_tokens"]
                                                                          + c["score_run_tokens"])
    vision = vision_per_patch * (4 * c.get("run_patches", 0) + c.get("score_run_patches", 0))
    return language + vision
