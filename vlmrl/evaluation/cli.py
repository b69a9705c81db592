"""`vlmrl eval`: evaluate a model on a benchmark task through the rollout engine.

    vlmrl eval --task chartqa --data data/benchmarks/chartqa --model runs/x/final [--tool | --direct]
               [--recipe RECIPE.yaml] [--samples K] [--limit N] [--out DIR] [--max-new-tokens M]
               [--prompt-style full|compact|minimal|bare] [--batch-size B] [--seed S] [--crop-min-pixels P]
               [--crop-max-pixels P] [--image-max-pixels P] [--prefix TEXT] [--backend hf|vllm] [--vllm-url URL]
               [--perception [--perception-mask-prob P] [--perception-patch-size N]
                             [--perception-mask-order raw|resized]]

Greedy (temperature 0) by default; ``--samples K`` > 1 samples K answers at temperature 1.0 and
reports avg@K. ``--tool``: AdaptVision tool mode (a low-resolution view plus crops). Writes
``samples.jsonl``, ``traces.jsonl`` and ``results.json`` into ``--out`` (default ``eval_out/<task>``);
an interrupted run resumes where it stopped (see :mod:`vlmrl.evaluation.harness`). ``--perception`` (direct mode)
adds the perception probe: the KL between the answers' token distributions with the real and a patch-masked image, and
the answer with the masked image (see :mod:`vlmrl.evaluation.perception`).

Rollout settings: ``--recipe`` takes a training recipe's ``rollout:`` section (mode, budgets, prompt style,
coordinate convention, ...); flags given on the command line override single fields. Without a recipe:
direct mode, the task's ``generation.max_new_tokens`` and the recipe defaults of ``vlmrl.config.RolloutConfig``.
The temperature is always the evaluation's (0, or 1.0 with ``--samples`` > 1), never the recipe's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from vlmrl.data.prompts import STYLES

from .tasks import list_tasks, load_task


def add_args(parser) -> None:
    parser.add_argument("--task", required=True,
                        help=f"task name (eval/NAME.yaml) or a task YAML path; known: {', '.join(list_tasks())}")
    parser.add_argument("--data", default=None, help="benchmark file or folder (default: the task's data.path)")
    parser.add_argument("--model", required=True, help="local Qwen-VL checkpoint directory")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tool", dest="mode", action="store_const", const="tool",
                      help="tool mode: low-resolution view + crop tool (default: direct, or the recipe's mode)")
    mode.add_argument("--direct", dest="mode", action="store_const", const="direct",
                      help="direct mode: one turn on the full-resolution image")
    parser.add_argument("--recipe", default=None,
                        help="training recipe whose rollout section gives the rollout settings (flags override)")
    parser.add_argument("--samples", type=int, default=1, help="K responses per doc (K > 1: temperature 1.0, avg@K)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N docs only")
    parser.add_argument("--out", default=None, help="output folder (default: eval_out/<task>)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="per assistant turn (default: the task's generation.max_new_tokens)")
    parser.add_argument("--max-turns", type=int, default=None, help="assistant turns in tool mode (default 2)")
    parser.add_argument("--prompt-style", default=None, choices=STYLES, help="prompt templates (default full)")
    parser.add_argument("--crop-min-pixels", type=int, default=None,
                        help="tool mode: crops are upscaled to at least this many pixels (default: the engine's)")
    parser.add_argument("--crop-max-pixels", type=int, default=None, help="tool mode: crops are capped at this")
    parser.add_argument("--image-max-pixels", type=int, default=None,
                        help="direct mode: the image is downscaled to at most this many pixels (default: the "
                             "engine's, rollout.image_max_pixels); match the training run's setting")
    parser.add_argument("--prefix", default=None,
                        help="force the start of the first assistant turn (baselines with a fixed decision, "
                             "e.g. the model's own call-opening text to always call the tool); {question} in it "
                             "stands for each doc's question")
    parser.add_argument("--batch-size", type=int, default=8, help="docs per rollout batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--backend", default=None, choices=("hf", "vllm"),
                        help="sampler: hf (the model's own) or vllm (default: the recipe's rollout.backend, else hf); "
                             "vllm runs colocated unless --vllm-url is given (docs/vllm.md)")
    parser.add_argument("--vllm-url", action="append", default=None,
                        help="with --backend vllm: a running `python -m vlmrl.models.vllm_server` serving this "
                             "--model (repeat for several)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--perception", action="store_true",
                        help="direct mode: per doc, the token-mean KL(pi(.|q,I) || pi(.|q,I_masked)) over the answer "
                             "and the answer with the masked image (perception/* metrics; PAPO's masking)")
    parser.add_argument("--perception-mask-prob", type=float, default=0.6,
                        help="with --perception: share of image tiles blacked out (default 0.6, as PAPO; 1.0: blank)")
    parser.add_argument("--perception-patch-size", type=int, default=0,
                        help="with --perception: tile side in pixels (default 0: the family's patch, 14 for "
                             "Qwen2/2.5-VL)")
    parser.add_argument("--perception-mask-order", default="raw", choices=("raw", "resized"),
                        help="with --perception: mask the source image then resize (raw, PAPO's code) or the seen view")


_FLAG_FIELDS = {"mode": "mode", "max_new_tokens": "max_new_tokens", "max_turns": "max_turns",
                "prompt_style": "prompt_style", "crop_min_pixels": "crop_min_pixels",
                "crop_max_pixels": "crop_max_pixels", "image_max_pixels": "image_max_pixels",
                "prefix": "first_turn_prefix"}
"""Command-line flag -> the RolloutConfig field it overrides (flags left unset keep the recipe's value)."""


def rollout_settings(args, task):
    """The rollout settings of a ``vlmrl eval`` run: ``--recipe``'s rollout section (else direct mode with the
    task's max_new_tokens and RolloutConfig's defaults), with every flag given on the command line applied."""
    from vlmrl.config import RolloutConfig, load_config

    if args.recipe:
        base = load_config(args.recipe).rollout
    else:
        base = RolloutConfig(mode="direct", max_new_tokens=int(task.generation.get("max_new_tokens", 64)))
    given = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items() if getattr(args, flag) is not None}
    for flag, least in (("max_new_tokens", 1), ("max_turns", 1), ("crop_min_pixels", 28 * 28),
                        ("crop_max_pixels", 28 * 28), ("image_max_pixels", 28 * 28)):
        value = getattr(args, flag)
        if value is not None and value < least:
            what = " (one 28x28 patch)" if least > 1 else ""
            raise ValueError(f"--{flag.replace('_', '-')} must be >= {least}{what}, got {value}")
    return replace(base, **given)


def run(args) -> int:
    from .harness import EvalSettings, evaluate

    task = load_task(args.task)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model = Path(args.model).expanduser()
    if not model.is_dir():
        raise FileNotFoundError(f"model directory {model} does not exist")
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model} is not a model checkpoint (no config.json)")
    settings = EvalSettings(rollout=rollout_settings(args, task), samples=args.samples,
                            batch_size=args.batch_size, seed=args.seed)
    settings.check()
    perception = perception_settings(args, settings)
    docs = task.load_docs(args.data, images=True, limit=args.limit)
    if not docs:
        raise ValueError(f"task {task.name}: the data holds no documents")

    import torch

    from vlmrl.models.policy import Policy

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = Policy.load(model, dtype="float32" if device == "cpu" else "auto", device=device)
    out = Path(args.out) if args.out else Path("eval_out") / task.name
    result = evaluate(task, docs, policy, out, settings, progress=not args.no_progress,
                      sampler=eval_sampler(args, policy, settings, model), perception=perception)
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'samples.jsonl'}, {out / 'traces.jsonl'}, {out / 'results.json'}")
    return 0


def perception_settings(args, settings):
    """``--perception``'s settings (None without the flag); the probe runs in direct mode only."""
    from .perception import PerceptionSettings

    given = [f for f in ("mask_prob", "patch_size", "mask_order")
             if getattr(args, "perception_" + f) != getattr(PerceptionSettings, f)]
    if not args.perception:
        if given:
            raise ValueError(f"--perception-{given[0].replace('_', '-')} needs --perception")
        return None
    ps = PerceptionSettings(mask_prob=args.perception_mask_prob, patch_size=args.perception_patch_size,
                            mask_order=args.perception_mask_order)
    ps.check(settings.mode)
    return ps


def eval_sampler(args, policy, settings, model: Path):
    """The sampler of ``--backend`` (else the recipe's ``rollout.backend``): None for the HF sampler (the harness
    makes it), a vLLM sampler otherwise (server mode with ``--vllm-url``; else the recipe's ``vllm:`` section)."""
    from dataclasses import replace as _replace

    from vlmrl.config import VLLMConfig, load_config

    recipe = load_config(args.recipe) if args.recipe else None
    backend = args.backend or (recipe.rollout.backend if recipe else "hf")
    if backend == "hf":
        if args.vllm_url:
            raise ValueError("--vllm-url needs --backend vllm")
        return None
    from vlmrl.models.samplers import make_sampler

    vcfg = recipe.vllm if recipe else VLLMConfig()
    if args.vllm_url:
        vcfg = _replace(vcfg, mode="server", server_urls=list(args.vllm_url))
    return make_sampler(policy, "vllm", vllm_config=vcfg, rollout=settings.engine_config(), model_dir=str(model))
