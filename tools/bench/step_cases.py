"""The step benchmark's cases (tools/bench/step.py): what each case runs, built from its spec.

- the bench sizes (`BENCH_SIZES`, added to `vlmrl.models.tiny.SIZES` in the benchmark's own processes);
- `bench_sampler`: the HF sampler with every sampled turn running its full budget, or turn 0 decoding a fixed crop
  call (`CALL_TEXT`);
- `case_overrides`: the recipe overrides of each vlmrl case;
- `VlmrlCase` (vlmrl's Trainer), `RolloutCase` (tools/bench/rollout.py's `run_bench`), and `build_case`, which
  builds the case a spec names (the TRL case is tools/bench/trl_side.py's `TrlCase`).

Each case has `info` (what its setup reports) and `step()` (one timed step: its time and token counts).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from step_measure import _in_vision_tower, step_counts, vision_flops_per_patch

HERE = Path(__file__).resolve().parent
FAMILY = "qwen2_5_vl"
# Sizes the benchmark adds to vlmrl.models.tiny.SIZES in its own processes (the library's sizes are unchanged):
# "30m" is a ~30M-parameter model (LM 24M incl. a 4096x512 tied embedding, vision tower 6M).
BENCH_SIZES = {
    "30m": dict(hidden=512, layers=7, heads=8, kv_heads=4, mlp=1536, vocab=4096, v_hidden=256, v_layers=4, v_heads=4),
}
# A valid crop call for qwen2_5_vl (absolute pixels of the 112x112 half-resolution first view of a 224x224 image).
CALL_TEXT = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [10, 10, 60, 60]}}</tool_call>'
CROP_MIN_PIXELS, CROP_MAX_PIXELS = 3136, 50176  # the step benchmark's crop budget (the smallest crops)


def call_text(box: list[int] | tuple[int, ...]) -> str:
    """The crop call of `CALL_TEXT` with another box (absolute pixels of the first view)."""
    return CALL_TEXT.replace("[10, 10, 60, 60]", "[" + ", ".join(str(int(v)) for v in box) + "]")


def make_bench_model(size: str, out: str | Path, seed: int = 0, vocab: int = 0) -> Path:
    """`make_tiny(FAMILY, out, size)`, its vocabulary (embedding and tied LM head) padded to `vocab` rows when
    that is larger: the tiny BPE tokenizer stops at a few thousand tokens, so a Qwen-sized vocabulary (151936) is
    reached by rows no token maps to. Sampling still draws from every row (decoding them gives no text)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmrl.models.tiny import make_tiny

    register_bench_sizes()
    path = make_tiny(FAMILY, out, size=size, seed=seed)
    if vocab:
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
        if vocab < model.get_input_embeddings().weight.shape[0]:
            raise ValueError(f"vocab {vocab} is below the tokenizer's {model.get_input_embeddings().weight.shape[0]}")
        torch.manual_seed(seed)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        model.save_pretrained(str(path))
    return path


def make_bench_data(out: str | Path, seed: int = 0, image_size: int = 224) -> Path:
    """One synthetic-zoom prompt (its image `image_size` x `image_size`); returns its train.jsonl."""
    from vlmrl.data.synthetic import ZoomConfig, make_zoom_dataset

    make_zoom_dataset(out, n=1, n_test=1, seed=seed, config=ZoomConfig(image_size=(image_size, image_size)))
    return Path(out) / "train.jsonl"
STEP_CASES = ("vlmrl_grpo", "trl_grpo", "vlmrl_papo", "dtpo_one_turn", "dtpo_two_turn")


def register_bench_sizes() -> None:
    from vlmrl.models import tiny

    for name, dims in BENCH_SIZES.items():
        tiny.SIZES.setdefault(name, dims)


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
              "data.shuffle=false", "algo.kl_coef=0.0",
              f"train.keep_freed_memory={str(spec.get('keep_freed_memory', True)).lower()}"]
    extra = list(spec.get("overrides", ()))  # a sweep's variants (ablations, PAPO's KL): after the case's own
    if case == "vlmrl_grpo":
        return common + ["algo.name=grpo", "algo.clip_low=0.2", "algo.clip_high=0.2",
                         "reward.name=accuracy_format"] + extra
    if case == "vlmrl_papo":
        return common + ["algo.name=grpo", "algo.clip_low=0.2", "algo.clip_high=0.3", "reward.name=accuracy_format",
                         "algo.papo.enabled=true", "algo.papo.gamma=0.02", "algo.papo.mask_prob=0.6",
                         "algo.papo.patch_size=14"] + extra
    if case in ("dtpo_one_turn", "dtpo_two_turn"):
        lo, hi = spec.get("crop_pixels", (CROP_MIN_PIXELS, CROP_MAX_PIXELS))
        return common + ["rollout.mode=tool", "rollout.max_turns=2", "rollout.first_view_scale=0.5",
                         f"rollout.crop_min_pixels={lo}", f"rollout.crop_max_pixels={hi}",
                         "algo.name=dtpo", "algo.clip_low=0.2", "algo.clip_high=0.24", "algo.entropy_coef=0.001",
                         "algo.tool_weight=0.3", "algo.alpha=0.5", "reward.name=dtpo"] + extra
    raise ValueError(f"unknown vlmrl case {case!r}")


class Repeat:
    """A dataset that is `items` over and over (every step sees the same prompts: equal work in every step)."""

    def __init__(self, items: list, n: int):
        self.items, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.items[i % len(self.items)]



class VlmrlCase:
    """vlmrl's Trainer on the repeated sample, one `Trainer.step()` per `step()`."""

    def __init__(self, case: str, spec: dict, sample):
        import torch

        from vlmrl.config import load_config
        from vlmrl.models.policy import Policy
        from vlmrl.train.trainer import Trainer

        cfg = load_config(None, case_overrides(case, spec))
        self.policy = Policy.load(spec["model"], dtype="float32", device="cpu")
        call = call_text(spec["crop_box"]) if spec.get("crop_box") else CALL_TEXT
        sampler = bench_sampler(self.policy, call if case == "dtpo_two_turn" else None)
        dataset = Repeat([sample] * spec["prompts"], spec["prompts"] * 1000)
        self.trainer = Trainer(cfg, policy=self.policy, dataset=dataset, sampler=sampler)
        self.case, self.cfg = case, cfg
        self.count_next = bool(spec.get("count_flops"))  # the first step (a warm-up) runs under a FLOP counter
        self.score_passes = int(cfg.algo.papo.enabled and not cfg.algo.papo.masked_grad) + int(cfg.algo.kl_coef > 0)
        model = self.policy.core
        vision = sum(p.numel() for n, p in model.named_parameters() if _in_vision_tower(n))
        total = sum(p.numel() for p in model.parameters())
        self.info = {"params": {"total": total, "vision": vision, "language": total - vision,
                                "vision_flops_per_patch": vision_flops_per_patch(model)},
                     "torch_threads": torch.get_num_threads()}

    def step(self) -> dict:
        counter, self.count_next = (flop_counter() if self.count_next else None), False
        t0 = time.perf_counter()
        if counter is not None:
            with counter:
                _metrics, trajs = self.trainer.step()
        else:
            _metrics, trajs = self.trainer.step()
        elapsed = time.perf_counter() - t0
        counts = step_counts(trajs, self.score_passes)
        if counter is not None:
            counts["counted_flops"] = counter.get_total_flops()
        if self.case == "dtpo_two_turn" and (counts["turns"] != 2 or counts["valid_tool_calls"] != len(trajs)):
            raise RuntimeError(f"the forced crop call did not give two turns with a valid call in every row: {counts}")
        return {"time_s": elapsed, "counts": counts}


class RolloutCase:
    """tools/bench/rollout.py's `run_bench` (engine direct mode vs `model.generate`, plus its tool-mode paths)."""

    def __init__(self, spec: dict):
        self.run_bench, self.spec, self.info = _beside("rollout").run_bench, spec, {}

    def step(self) -> dict:
        s = self.spec
        # the case's checkpoint; its prompt file only where the spec asks (step.py's holds one row for any B)
        report = self.run_bench(size=s["size"], family=FAMILY, group_size=s["group_size"], prompts=s["prompts"],
                                new_tokens=s["new_tokens"], repeats=s["repeats"], out=None, seed=s["seed"],
                                workdir=s["workdir"], model=s["model"],
                                data=s["data"] if s.get("rollout_data") else None)
        report.pop("markdown", None)
        return {"report": report}


def flop_counter():
    """A FLOP counter over every op a block dispatches (enter it with `with`; `get_total_flops()` after): torch's
    own formulas (torch.utils.flop_counter: matmuls, convolutions, attention, forward and backward, from the shapes
    really run), plus oneDNN's packed linear (vlmrl's decoding step). Not torch's `FlopCounterMode` itself: its
    per-module tracker hooks every module call and fails on vlmrl's no-grad decoding of a trainable model."""
    from torch.utils import flop_counter as fc
    from torch.utils._python_dispatch import TorchDispatchMode

    _register_packed_linear()

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = fc.flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

        def get_total_flops(self) -> int:
            return self.total

    return Counter()


def _register_packed_linear() -> None:
    import torch
    from torch.utils import flop_counter as fc

    op = torch.ops.mkldnn._linear_pointwise  # the counter looks ops up by their overload packet
    if op in fc.flop_registry:
        return

    def linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        # x (..., in) @ packed weight: 2 FLOPs per multiply-add, out features from the output's last dimension
        rows = 1
        for d in x_shape[:-1]:
            rows *= d
        return 2 * rows * x_shape[-1] * out_shape[-1]

    fc.register_flop_formula(op, get_raw=False)(linear_flops)


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
                       lr=spec["lr"], total_steps=spec["total_steps"], seed=spec["seed"], output_dir=spec["workdir"],
                       keep_freed_memory=spec.get("keep_freed_memory", True),
                       count_flops=bool(spec.get("count_flops")))
    return VlmrlCase(spec["case"], spec, sample)
