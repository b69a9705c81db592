"""Training-step benchmark: vlmrl against TRL's GRPOTrainer, PAPO and DTPO overheads, rollout throughput, peak
memory and achieved FLOP/s, in one command and one run (so every ratio compares numbers taken side by side).

Cases, per model size (a random checkpoint from `vlmrl.models.tiny.make_tiny`, qwen2_5_vl, fp32 on CPU), all on
the same prompt with its image (the VLM path), B prompts x G samples, N sampled tokens per turn:

- `vlmrl_grpo`: `vlmrl.train.Trainer.step()` with algo grpo, direct mode, no reference model (beta 0);
- `trl_grpo`: TRL's `GRPOTrainer` doing the same work (tools/bench/trl_side.py);
- `vlmrl_papo`: as vlmrl_grpo plus PAPO (recipes/papo_g.yaml's gamma 0.02, patch 14, p 0.6, clip 0.2/0.3), beta 0;
- `dtpo_one_turn`: algo dtpo in the crop-tool loop (recipes/dtpo.yaml: half-resolution first view, crop pixels
  3136..50176, clip 0.2/0.24, entropy 0.001), the policy answers in one turn of N tokens;
- `dtpo_two_turn`: the same, but turn 0 decodes a fixed valid crop call (the sampler makes each call token
  certain after the LM head, so it costs a decoding step like a sampled one), the crop is observed, turn 1
  samples N tokens.

Every sampled turn runs exactly its budget (EOS and stop strings can never end it), so work is equal across cases.
Torch runs one thread per case by default (`--threads`): with two threads on a 2-core machine shared with other
processes, every op waits for a descheduled partner thread and one step's time varies by 10x or more.
Each case runs in its own worker process (its peak RSS is its own); the driver warms every worker up, then
steps them in turn, round-robin, so that load from other processes falls on all cases alike; medians are
reported. The rollout benchmark (tools/bench/rollout.py, engine vs `model.generate`) runs in one more worker.
The machine's fp32 matmul FLOP/s is measured in the same run (before and after the cases).

Usage: python tools/bench/step.py [--sizes tiny,30m] [--prompts 1] [--group-size 8] [--new-tokens 64]
       [--steps 5] [--warmup 1] [--lr 1e-4] [--threads 1] [--no-trl] [--no-rollout] [--out DIR]
Writes DIR/step_bench.json and DIR/step_bench.md (default tools/bench/results/) and prints the tables.
See tools/bench/README.md for every column.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
FAMILY = "qwen2_5_vl"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

# Sizes the benchmark adds to vlmrl.models.tiny.SIZES in its own processes (the library's sizes are unchanged):
# "30m" is a ~30M-parameter model (LM 24M incl. a 4096x512 tied embedding, vision tower 6M).
BENCH_SIZES = {
    "30m": dict(hidden=512, layers=7, heads=8, kv_heads=4, mlp=1536, vocab=4096, v_hidden=256, v_layers=4, v_heads=4),
}
# A valid crop call for qwen2_5_vl (absolute pixels of the 112x112 half-resolution first view of a 224x224 image).
CALL_TEXT = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [10, 10, 60, 60]}}</tool_call>'
CROP_MIN_PIXELS, CROP_MAX_PIXELS = 3136, 50176  # recipes/dtpo.yaml, recipes/quickstart.yaml
MAX_ROUNDS = 200  # timed rounds at most, whatever `min_seconds` asks
STEP_CASES = ("vlmrl_grpo", "trl_grpo", "vlmrl_papo", "dtpo_one_turn", "dtpo_two_turn")
# target name -> (goal, "<=" or ">=")
TARGETS = {
    "vlmrl_over_trl_step_time": (0.5, "<="),
    "engine_over_generate_tok_per_s": (2.0, ">="),
    "papo_over_grpo_step_time": (1.4, "<="),
    "dtpo_two_over_one_turn_time_per_gen_token": (1.3, "<="),
}


def register_bench_sizes() -> None:
    from vlmrl.models import tiny

    for name, dims in BENCH_SIZES.items():
        tiny.SIZES.setdefault(name, dims)


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


# =====================================================================================================================
# Worker side: one case per process, driven over stdin/stdout (one JSON line per command and per reply).
# =====================================================================================================================

def _beside(name: str):
    """A script beside this one (tools/bench/rollout.py, trl_side.py) as a module: they sit in no package."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def forced_tokens(policy, ids: list[int]):
    """Within the block, the k-th token `policy` samples is `ids[k]` (rollout.py's `force_tokens`)."""
    return _beside("rollout").force_tokens(policy, ids)


def bench_sampler(base, call_text: str | None = None):
    """The HF sampler of `base` with every sampled turn running its full budget; with `call_text`, turn 0 decodes
    that call.

    EOS is replaced by `<|image_pad|>`, which sampling never emits, and stop strings are dropped, so no row stops
    early. With a call, a prompt without a `<tool_response>` is turn 0: the call is decoded token by token with
    each token made certain by `forced_tokens` (every token costs one decoding step, as a sampled call would),
    it stops at `</tool_call>`, and the engine parses it, runs the crop tool and observes the crop; later turns
    sample their full budget."""
    from dataclasses import replace

    from vlmrl.models.hf_sampler import HFSampler

    class BenchSampler(HFSampler):
        def __init__(self):
            super().__init__(base)
            tok = self.codec.tokenizer
            self.eos_token_ids = [self.codec.image_token_id]
            self.call_ids = tok.encode(call_text, add_special_tokens=False) if call_text else None
            self.response_tag = tok.convert_tokens_to_ids("<tool_response>")

        def generate(self, prompts, params):
            if self.call_ids and not any(self.response_tag in p.ids for p in prompts):
                with forced_tokens(self.policy, self.call_ids):
                    gens = super().generate(prompts, replace(params, max_new_tokens=len(self.call_ids),
                                                             stop_strings=("</tool_call>",)))
                if any(g.ids != self.call_ids for g in gens):
                    raise RuntimeError("forcing the crop call failed: the decoded turn is not the call")
                return gens
            return super().generate(prompts, replace(params, stop_strings=()))

    return BenchSampler()


def case_overrides(case: str, spec: dict) -> list[str]:
    """Recipe overrides of a vlmrl case (see the module docstring)."""
    B, G, N = spec["prompts"], spec["group_size"], spec["new_tokens"]
    common = [f"model.path={spec['model']}", "model.dtype=float32", "model.device=cpu",
              f"rollout.group_size={G}", f"rollout.max_new_tokens={N}", "rollout.temperature=1.0", "rollout.top_p=1.0",
              "rollout.prompt_style=compact", f"train.prompts_per_step={B}", f"train.micro_batch_size={B * G}",
              "train.mini_batch_size=0", "train.ppo_epochs=1", f"train.lr={spec['lr']}", "train.lr_schedule=constant",
              "train.max_grad_norm=1.0", f"train.seed={spec['seed']}", f"train.output_dir={spec['workdir']}",
              "data.shuffle=false", "algo.kl_coef=0.0"]
    if case == "vlmrl_grpo":
        return common + ["algo.name=grpo", "algo.clip_low=0.2", "algo.clip_high=0.2", "reward.name=accuracy_format"]
    if case == "vlmrl_papo":
        return common + ["algo.name=grpo", "algo.clip_low=0.2", "algo.clip_high=0.3", "reward.name=accuracy_format",
                         "algo.papo.enabled=true", "algo.papo.gamma=0.02", "algo.papo.mask_prob=0.6",
                         "algo.papo.patch_size=14"]
    if case in ("dtpo_one_turn", "dtpo_two_turn"):
        return common + ["rollout.mode=tool", "rollout.max_turns=2", "rollout.first_view_scale=0.5",
                         f"rollout.crop_min_pixels={CROP_MIN_PIXELS}", f"rollout.crop_max_pixels={CROP_MAX_PIXELS}",
                         "algo.name=dtpo", "algo.clip_low=0.2", "algo.clip_high=0.24", "algo.entropy_coef=0.001",
                         "algo.tool_weight=0.3", "algo.alpha=0.5", "reward.name=dtpo"]
    raise ValueError(f"unknown vlmrl case {case!r}")


class Repeat:
    """A dataset that is `items` over and over (every step sees the same prompts: equal work in every step)."""

    def __init__(self, items: list, n: int):
        self.items, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.items[i % len(self.items)]


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


class VlmrlCase:
    """vlmrl's Trainer on the repeated sample, one `Trainer.step()` per `step()`."""

    def __init__(self, case: str, spec: dict, sample):
        import torch

        from vlmrl.config import load_config
        from vlmrl.models.policy import Policy
        from vlmrl.train.trainer import Trainer

        cfg = load_config(None, case_overrides(case, spec))
        self.policy = Policy.load(spec["model"], dtype="float32", device="cpu")
        sampler = bench_sampler(self.policy, CALL_TEXT if case == "dtpo_two_turn" else None)
        dataset = Repeat([sample] * spec["prompts"], spec["prompts"] * 1000)
        self.trainer = Trainer(cfg, policy=self.policy, dataset=dataset, sampler=sampler)
        self.case, self.cfg = case, cfg
        self.score_passes = int(cfg.algo.papo.enabled and not cfg.algo.papo.masked_grad) + int(cfg.algo.kl_coef > 0)
        model = self.policy.core
        vision = sum(p.numel() for n, p in model.named_parameters() if _in_vision_tower(n))
        total = sum(p.numel() for p in model.parameters())
        self.info = {"params": {"total": total, "vision": vision, "language": total - vision,
                                "vision_flops_per_patch": vision_flops_per_patch(model)},
                     "torch_threads": torch.get_num_threads()}

    def step(self) -> dict:
        t0 = time.perf_counter()
        _metrics, trajs = self.trainer.step()
        elapsed = time.perf_counter() - t0
        counts = step_counts(trajs, self.score_passes)
        if self.case == "dtpo_two_turn" and (counts["turns"] != 2 or counts["valid_tool_calls"] != len(trajs)):
            raise RuntimeError(f"the forced crop call did not give two turns with a valid call in every row: {counts}")
        return {"time_s": elapsed, "counts": counts}


class RolloutCase:
    """tools/bench/rollout.py's `run_bench` (engine direct mode vs `model.generate`, plus its tool-mode paths)."""

    def __init__(self, spec: dict):
        self.run_bench, self.spec, self.info = _beside("rollout").run_bench, spec, {}

    def step(self) -> dict:
        s = self.spec
        report = self.run_bench(size=s["size"], family=FAMILY, group_size=s["group_size"], prompts=s["prompts"],
                                new_tokens=s["new_tokens"], repeats=s["repeats"], out=None, seed=s["seed"],
                                workdir=s["workdir"])
        report.pop("markdown", None)
        return {"report": report}


def load_sample(spec: dict):
    from vlmrl.data import load_dataset

    return next(iter(load_dataset(spec["data"])))


def build_case(spec: dict):
    register_bench_sizes()
    if spec["case"] == "rollout":
        return RolloutCase(spec)
    sample = load_sample(spec)
    if spec["case"] == "trl_grpo":
        TrlCase = _beside("trl_side").TrlCase
        from vlmrl.data.prompts import build_messages

        return TrlCase(spec["model"], sample, build_messages(sample, mode="direct", style="compact"),
                       prompts=spec["prompts"], group_size=spec["group_size"], new_tokens=spec["new_tokens"],
                       lr=spec["lr"], total_steps=spec["total_steps"], seed=spec["seed"], output_dir=spec["workdir"])
    return VlmrlCase(spec["case"], spec, sample)


def worker_main(spec: dict) -> int:
    """Build the case, say "ready", then answer "step" and "quit" commands, one JSON line each."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever libraries print goes to the worker's log, not into the protocol

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    try:
        case = Local(spec)
        send(case.receive())
    except WorkerError as e:  # reported to the driver, which records the case as failed
        send({"error": str(e)})
        return 1
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["do"] == "quit":
            send({"peak_rss_mb": rss_mb()})
            return 0
        try:
            send(case.ask("step"))
        except WorkerError as e:
            send({"error": str(e)})
            return 1
    return 0


def import_modules(case: str) -> None:
    """Import what a case needs, so that the RSS baseline taken after it holds the libraries and not the case."""
    import accelerate  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401 - loaded lazily by from_pretrained

    import vlmrl.data  # noqa: F401
    import vlmrl.rewards.trajectories  # noqa: F401
    import vlmrl.train.trainer  # noqa: F401

    torch.ones(64, 64) @ torch.ones(64, 64)  # torch's first-op initialisation

    if case == "trl_grpo":
        import datasets  # noqa: F401
        import trl  # noqa: F401
        from trl import GRPOTrainer  # noqa: F401


class WorkerError(RuntimeError):
    pass


class Local:
    """A case in this process, with the interface of `Worker` (`receive()` the setup reply, `ask("step")`).
    The worker process runs one; `--in-process` runs all cases in the driver (faster to start, but the peak RSS
    is then the process's peak so far, not the case's own)."""

    def __init__(self, spec: dict, name: str = ""):
        self.name = name or spec["case"]
        import_modules(spec["case"])
        if spec.get("threads"):
            import torch

            torch.set_num_threads(spec["threads"])
        self.baseline = rss_mb(peak=False)
        t0 = time.perf_counter()
        self.case, self.error = None, None
        try:
            self.case = build_case(spec)
        except Exception:  # noqa: BLE001 - the driver records the case as failed
            self.error = traceback.format_exc()
        self.setup_s = time.perf_counter() - t0

    def receive(self) -> dict:
        if self.error:
            raise WorkerError(f"{self.name}: {self.error}")
        return {"ready": True, "setup_s": self.setup_s, "rss_baseline_mb": self.baseline, **self.case.info}

    def ask(self, do: str) -> dict:
        if do == "quit":
            return {"peak_rss_mb": rss_mb()}
        try:
            return {**self.case.step(), "peak_rss_mb": rss_mb()}
        except Exception:  # noqa: BLE001
            raise WorkerError(f"{self.name}: {traceback.format_exc()}") from None

    def kill(self) -> None:
        pass


# =====================================================================================================================
# Driver side: start the workers, warm them, step them round-robin, collect.
# =====================================================================================================================

class Worker:
    """One case in a subprocess running this file with `--worker SPEC`."""

    def __init__(self, name: str, spec: dict, log_dir: Path, timeout: float):
        self.name, self.timeout = name, timeout
        self.log_path = log_dir / f"{spec.get('size', '')}-{name}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, **OFFLINE_ENV}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def _tail(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-3000:]

    def receive(self, timeout: float | None = None) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout or self.timeout)
        if not ready:
            tail = self._tail()
            self.kill()
            raise WorkerError(f"{self.name}: no answer in {timeout or self.timeout:.0f} s; log:\n{tail}")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{self.name}: the worker exited with code {code}; log:\n{self._tail()}")
        msg = json.loads(line)
        if "error" in msg:
            self.kill()
            raise WorkerError(f"{self.name}: {msg['error']}")
        return msg

    def ask(self, do: str) -> dict:
        self.proc.stdin.write(json.dumps({"do": do}) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_cases(specs: dict[str, dict], warmup: int, steps: int, log_dir: Path, timeout: float,
              in_process: bool = False, min_seconds: float = 0.0) -> dict:
    """Start every case, then `warmup` + `steps` round-robin rounds, and more rounds (at most `MAX_ROUNDS`) while
    a case's timed steps add up to less than `min_seconds` (short steps need more of them for a steady median);
    returns name -> raw result (or error)."""
    out: dict[str, dict] = {}
    workers = {name: Local(spec, name) if in_process else Worker(name, spec, log_dir, timeout)
               for name, spec in specs.items()}
    live: dict[str, Worker] = {}
    for name, w in workers.items():
        try:
            out[name] = {"setup": w.receive(), "steps": []}
            live[name] = w
        except WorkerError as e:
            out[name] = {"error": str(e)}
    r = 0
    while live and (r < warmup + steps or (r < warmup + MAX_ROUNDS and min(
            sum(x.get("time_s", 0.0) for x in out[name]["steps"]) for name in live) < min_seconds)):
        for name, w in list(live.items()):
            try:
                reply = w.ask("step")
            except WorkerError as e:
                out[name] = {"error": str(e)}
                del live[name]
                continue
            if r >= warmup:
                out[name]["steps"].append(reply)
        r += 1
    for name, w in live.items():
        try:
            out[name]["peak_rss_mb"] = w.ask("quit")["peak_rss_mb"]
        except WorkerError as e:
            out[name] = {"error": str(e)}
        w.kill()
    return out


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


# =====================================================================================================================
# Report: medians, FLOPs, ratios against the targets, markdown.
# =====================================================================================================================

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


def summarize_case(raw: dict, n_language: int | None, vision_per_patch: float = 0.0) -> dict:
    if "error" in raw:
        return {"error": raw["error"]}
    times = [s["time_s"] for s in raw["steps"]]
    med = statistics.median(times)
    counts = raw["steps"][len(raw["steps"]) // 2]["counts"]
    setup = raw["setup"]
    out = {"times_s": [round(t, 4) for t in times], "median_s": med, "min_s": min(times), "counts": counts,
           "s_per_gen_token": med / counts["gen_tokens"], "peak_rss_mb": raw["peak_rss_mb"],
           "rss_baseline_mb": setup["rss_baseline_mb"],
           "rss_over_baseline_mb": raw["peak_rss_mb"] - setup["rss_baseline_mb"],
           "setup_s": setup["setup_s"]}
    if n_language:
        f = model_flops(counts, n_language, vision_per_patch)
        out.update(model_flops=f, flops_per_s=f / med)
    return out


def _steps_cell(times: list[float]) -> str:
    """Every step time, or for many steps (the tiny model with --min-seconds) their count and range."""
    if len(times) <= 15:
        return ", ".join(f"{t:.2f}" for t in times)
    return f"{len(times)} steps, {min(times):.2f}-{max(times):.2f}"


def ratios_and_targets(size: str, cases: dict, rollout: dict | None) -> tuple[dict, list]:
    """Ratios from the medians (what the targets are judged on); as `<name>_from_min`, from the fastest step of
    each case: other processes only ever add time, so the minimum is the less disturbed estimate on a shared
    machine; and as `<name>_paired`, the median over rounds of the ratio within a round (the two cases' steps
    of one round run back to back, so a slow phase of the machine tends to hit both)."""
    ok = {k: v for k, v in cases.items() if "median_s" in v}
    r: dict = {}

    def both(name, num, den, scale=1.0):
        x, y = ok[num], ok[den]
        r[name] = x["median_s"] / y["median_s"] / scale
        r[f"{name}_from_min"] = x["min_s"] / y["min_s"] / scale
        if len(x["times_s"]) == len(y["times_s"]):  # the same rounds
            r[f"{name}_paired"] = statistics.median([a / b for a, b in zip(x["times_s"], y["times_s"])]) / scale

    if "vlmrl_grpo" in ok and "trl_grpo" in ok:
        both("vlmrl_over_trl_step_time", "vlmrl_grpo", "trl_grpo")
        a, b = ok["vlmrl_grpo"]["counts"], ok["trl_grpo"]["counts"]
        r["equal_work_vs_trl"] = all(a[k] == b[k] for k in ("rows", "prompt_tokens", "gen_tokens", "train_tokens",
                                                           "run_patches"))
    if "vlmrl_papo" in ok and "vlmrl_grpo" in ok:
        both("papo_over_grpo_step_time", "vlmrl_papo", "vlmrl_grpo")
    if "dtpo_one_turn" in ok and "dtpo_two_turn" in ok:
        one, two = ok["dtpo_one_turn"], ok["dtpo_two_turn"]
        per_token = two["counts"]["gen_tokens"] / one["counts"]["gen_tokens"]
        both("dtpo_two_over_one_turn_time_per_gen_token", "dtpo_two_turn", "dtpo_one_turn", per_token)
        both("dtpo_two_over_one_turn_step_time", "dtpo_two_turn", "dtpo_one_turn")
        # reported, not a target: per token the gradient pass runs (each prompt once, then every row's own part)
        per_run = two["counts"]["train_run_tokens"] / one["counts"]["train_run_tokens"]
        both("dtpo_two_over_one_turn_time_per_run_token", "dtpo_two_turn", "dtpo_one_turn", per_run)
        if "model_flops" in one and "model_flops" in two:  # the time ratio the two steps would have at equal FLOP/s
            r["dtpo_two_over_one_turn_flops_per_gen_token"] = two["model_flops"] / one["model_flops"] / per_token
    if rollout and "results" in rollout:
        e, h = rollout["results"]["engine_direct"], rollout["results"]["hf_generate"]
        r["engine_over_generate_tok_per_s"] = rollout["ratios"]["engine_over_generate_tok_per_s"]
        r["engine_over_generate_tok_per_s_from_min"] = ((e["tokens"] / min(e["times_s"]))
                                                        / (h["tokens"] / min(h["times_s"])))
    targets = []
    for name, (goal, op) in TARGETS.items():
        if name in r:
            value = r[name]
            targets.append({"target": name, "size": size, "value": value, "value_from_min": r[f"{name}_from_min"],
                            "value_paired": r.get(f"{name}_paired"), "goal": f"{op} {goal}",
                            "pass": value <= goal if op == "<=" else value >= goal})
    return r, targets


def to_markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    mm = m["matmul_fp32_flops"]
    lines = [
        f"# Step benchmark ({c['family']}, B={c['prompts']} prompt(s) x G={c['group_size']}, N={c['new_tokens']} "
        f"tokens per sampled turn, median of {c['steps']} warm steps)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads), {m['platform']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; float32 on CPU. Load average "
        f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end. Measured fp32 matmul peak "
        f"({mm['n']}^3, best of 5): {mm['peak'] / 1e9:.1f} GFLOP/s (start {mm['start'] / 1e9:.1f}, "
        f"end {mm['end'] / 1e9:.1f}).",
        "",
        f"Inputs: {c['inputs']}",
        "",
        "## Targets",
        "",
        "| target | size | measured (medians) | from the fastest steps | paired (median over rounds) | goal "
        "| pass (medians) |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for t in report["targets"]:
        paired = f"{t['value_paired']:.2f}x" if t.get("value_paired") is not None else "-"
        lines.append(f"| {t['target']} | {t['size']} | {t['value']:.2f}x | {t['value_from_min']:.2f}x | {paired} | "
                     f"{t['goal']} | {'PASS' if t['pass'] else 'FAIL'} |")
    for key, what in (("dtpo_two_over_one_turn_time_per_run_token",
                       "step time per token the gradient pass runs (each prompt once, then every row's call, tool "
                       "observation and answer)"),
                      ("dtpo_two_over_one_turn_flops_per_gen_token",
                       "model FLOPs per generated token, i.e. the per-token time ratio if both steps ran at the same "
                       "FLOP/s (the two-turn step also trains the tool observation and encodes the crops)")):
        values = [f"{size} {s['ratios'][key]:.2f}x" for size, s in report["sizes"].items() if key in s["ratios"]]
        if values:
            lines += ["", f"Not a target: DTPO two-turn / one-turn {what}: " + ", ".join(values) + "."]
    lines += [
        "",
        "## Step time, FLOP/s and memory",
        "",
        "| size | case | median s | min s | steps s | gen tok | trained tok | ms / gen tok | GFLOP / step | GFLOP/s "
        "| % of matmul peak | peak RSS MiB | over baseline MiB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, s in report["sizes"].items():
        for name, x in s["cases"].items():
            if "error" in x:
                lines.append(f"| {size} | {name} | failed: {x['error'].strip().splitlines()[-1][:120]} |"
                             + " |" * 11)
                continue
            if "skipped" in x:
                lines.append(f"| {size} | {name} | skipped: {x['skipped']} |" + " |" * 11)
                continue
            k = x["counts"]
            lines.append(
                f"| {size} | {name} | {x['median_s']:.3f} | {x['min_s']:.3f} | "
                f"{_steps_cell(x['times_s'])} | "
                f"{k['gen_tokens']} | {k['train_tokens']} | {1000 * x['s_per_gen_token']:.2f} | "
                f"{x.get('model_flops', 0) / 1e9:.2f} | {x.get('flops_per_s', 0) / 1e9:.2f} | "
                f"{100 * x.get('fraction_of_matmul_peak', 0):.1f} | {x['peak_rss_mb']:.0f} | "
                f"{x['rss_over_baseline_mb']:.0f} |")
    lines += ["", "## Rollout throughput (tools/bench/rollout.py: engine direct mode vs `model.generate`)", "",
              "| size | B x G x N | engine tok/s | generate tok/s | engine / generate | from the fastest repeats "
              "| rollout.py's other ratios |", "|---|---|---:|---:|---:|---:|---|"]
    for size, s in report["sizes"].items():
        ro = s.get("rollout")
        if not ro:
            continue
        if "error" in ro:
            lines.append(f"| {size} | failed: {ro['error'].strip().splitlines()[-1][:120]} | | | | | |")
            continue
        rc, rr, q = ro["config"], ro["results"], ro["ratios"]
        other = "; ".join(f"{k} {v:.2f}x" for k, v in q.items() if k != "engine_over_generate_tok_per_s")
        lines.append(f"| {size} | {rc['prompts']} x {rc['group_size']} x {rc['new_tokens']} | "
                     f"{rr['engine_direct']['tok_per_s']:.0f} | {rr['hf_generate']['tok_per_s']:.0f} | "
                     f"{q['engine_over_generate_tok_per_s']:.2f}x | "
                     f"{s['ratios']['engine_over_generate_tok_per_s_from_min']:.2f}x | {other} |")
    lines += ["", "Model sizes (parameters): " + "; ".join(
        f"{size}: {p['total'] / 1e6:.2f}M total, {p['language'] / 1e6:.2f}M language model, "
        f"{p['vision'] / 1e6:.2f}M vision" for size, s in report["sizes"].items() if (p := s.get("params"))) + ".",
        "", f"FLOPs: {report['flops_formula']}", ""]
    return "\n".join(lines)


# =====================================================================================================================
# The run.
# =====================================================================================================================

def run_step_bench(sizes=("tiny", "30m"), prompts: int = 1, group_size: int = 8, new_tokens: int = 64,
                   steps: int = 5, warmup: int = 1, lr: float = 1e-4, trl: bool = True, rollout: bool = True,
                   rollout_repeats: int = 3, seed: int = 0, out: str | Path | None = DEFAULT_OUT,
                   timeout: float = 600.0, cases: tuple[str, ...] = STEP_CASES, in_process: bool = False,
                   matmul_size: int = 2048, threads: int = 1, min_seconds: float = 0.0) -> dict:
    from vlmrl.data import make_zoom_dataset
    from vlmrl.models.tiny import SIZES, make_tiny

    register_bench_sizes()
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise ValueError(f"unknown size(s) {bad}; choose from {', '.join(SIZES)}")
    bad = [c for c in cases if c not in STEP_CASES]
    if bad:
        raise ValueError(f"unknown case(s) {bad}; choose from {', '.join(STEP_CASES)}")
    have_trl = importlib.util.find_spec("trl") is not None
    if threads:
        import torch

        torch.set_num_threads(threads)
    machine = machine_info()
    machine["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    mm_start = matmul_flops(matmul_size)
    report_sizes: dict = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlmrl-step-bench-") as tmp:
        tmp = Path(tmp)
        log_dir = tmp / "logs"  # a failed case's error carries the tail of its log
        log_dir.mkdir()
        make_zoom_dataset(tmp / "data", n=1, n_test=1, seed=seed)
        for size in sizes:
            model = make_tiny(FAMILY, tmp / f"model-{size}", size=size, seed=seed)
            base = {"size": size, "model": str(model), "data": str(tmp / "data" / "train.jsonl"), "prompts": prompts,
                    "group_size": group_size, "new_tokens": new_tokens, "lr": lr, "seed": seed,
                    "total_steps": warmup + (max(steps, MAX_ROUNDS) if min_seconds else steps),  # TRL's max_steps
                    "threads": threads}
            specs = {}
            for case in cases:
                if case == "trl_grpo" and not (trl and have_trl):
                    continue
                (tmp / f"work-{size}-{case}").mkdir()
                specs[case] = {**base, "case": case, "workdir": str(tmp / f"work-{size}-{case}")}
            raw = run_cases(specs, warmup, steps, log_dir, timeout, in_process, min_seconds)
            params = next((r["setup"]["params"] for r in raw.values() if "setup" in r and "params" in r["setup"]), None)
            n_lang = params["language"] if params else None
            per_patch = params.get("vision_flops_per_patch", 0.0) if params else 0.0
            results = {name: summarize_case(raw[name], n_lang, per_patch) for name in specs}
            if "trl_grpo" in cases and trl and not have_trl:
                results["trl_grpo"] = {"skipped": "trl is not installed (pip install -e '.[bench]')"}
            ro = None
            if rollout:
                (tmp / f"work-{size}-rollout").mkdir()
                spec = {**base, "case": "rollout", "repeats": rollout_repeats,
                        "workdir": str(tmp / f"work-{size}-rollout")}
                res = run_cases({"rollout": spec}, 0, 1, log_dir, timeout, in_process)["rollout"]
                ro = res["steps"][0]["report"] | {"peak_rss_mb": res["peak_rss_mb"]} if "steps" in res else res
            r, targets = ratios_and_targets(size, results, ro)
            report_sizes[size] = {"params": params, "cases": results, "rollout": ro, "ratios": r, "targets": targets}
    mm_end = matmul_flops(matmul_size)
    peak = max(mm_start, mm_end)
    for s in report_sizes.values():  # achieved FLOP/s against the better of the two matmul measurements
        for x in s["cases"].values():
            if "model_flops" in x:
                x["fraction_of_matmul_peak"] = x["flops_per_s"] / peak
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["matmul_fp32_flops"] = {"start": mm_start, "end": mm_end, "peak": peak, "n": matmul_size}
    report = {
        "config": {"family": FAMILY, "sizes": list(sizes), "prompts": prompts, "group_size": group_size,
                   "new_tokens": new_tokens, "steps": steps, "min_seconds": min_seconds, "warmup": warmup, "lr": lr,
                   "seed": seed, "cases": list(cases), "in_process": in_process, "threads": threads, "dtype": "float32",
                   "device": "cpu", "crop_min_pixels": CROP_MIN_PIXELS,
                   "crop_max_pixels": CROP_MAX_PIXELS, "call_text": CALL_TEXT, "rollout_repeats": rollout_repeats,
                   "bench_sizes": BENCH_SIZES,
                   "inputs": "images on both sides (the VLM path): one synthetic-zoom prompt with its 224x224 image "
                             "(64 image tokens in direct mode), repeated, so every step and both frameworks see the "
                             "same prompt; TRL gets vlmrl's image-only processor as processing_class."},
        "machine": machine,
        "flops_formula": FLOPS_FORMULA,
        "sizes": report_sizes,
        "targets": [t for s in report_sizes.values() for t in s["targets"]],
        "wall_s": time.perf_counter() - t_start,
    }
    report["markdown"] = to_markdown(report)
    _beside("rollout").write_report(report, out, "step_bench")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,30m", help="comma-separated model sizes (tiny, small, 30m)")
    p.add_argument("--prompts", type=int, default=1, help="B prompts per step")
    p.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    p.add_argument("--new-tokens", type=int, default=64, help="N sampled tokens per turn")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (the median is reported)")
    p.add_argument("--min-seconds", type=float, default=5.0,
                   help="more timed steps (round-robin, at most %d) until every case has run this long: the tiny "
                        "model's ~0.1 s steps need dozens for a steady median" % MAX_ROUNDS)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per case first")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rollout-repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(STEP_CASES), help="comma-separated step cases to run")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL case")
    p.add_argument("--no-rollout", action="store_true", help="skip the rollout benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a worker may take for one answer")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in every case and the matmul; 0 = torch's own choice (default 1: stable on a "
                        "shared machine, see tools/bench/README.md)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul that measures the peak")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process (starts faster; peak RSS is then not per case)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker_main(json.loads(a.worker))
    if a.steps < 1 or a.warmup < 0 or a.min_seconds < 0:
        p.error("--steps must be >= 1, --warmup and --min-seconds >= 0")
    report = run_step_bench(sizes=tuple(s for s in a.sizes.split(",") if s), prompts=a.prompts,
                            group_size=a.group_size, new_tokens=a.new_tokens, steps=a.steps, warmup=a.warmup, lr=a.lr,
                            min_seconds=a.min_seconds, trl=not a.no_trl, rollout=not a.no_rollout,
                            rollout_repeats=a.rollout_repeats, seed=a.seed,
                            out=a.out, timeout=a.timeout, cases=tuple(c for c in a.cases.split(",") if c),
                            in_process=a.in_process, matmul_size=a.matmul_size, threads=a.threads)
    print(report["markdown"])
    print(f"wrote {Path(a.out) / 'step_bench.json'} and step_bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
