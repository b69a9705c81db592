"""`vlmrl eval`: evaluate a model on a benchmark task through the rollout engine.

    vlmrl eval --task chartqa --data data/benchmarks/chartqa --model runs/x/final [--tool] [--samples K]
               [--limit N] [--out DIR] [--max-new-tokens M] [--prompt-style full|compact|minimal|bare]
               [--batch-size B] [--seed S] [--crop-min-pixels P] [--crop-max-pixels P] [--image-max-pixels P]
               [--prefix TEXT]

Greedy (temperature 0) by default; ``--samples K`` > 1 samples K answers at temperature 1.0 and
reports avg@K. ``--tool``: AdaptVision tool mode (a low-resolution view plus crops). Writes
``samples.jsonl``, ``traces.jsonl`` and ``results.json`` into ``--out`` (default ``eval_out/<task>``);
an interrupted run resumes where it stopped (see :mod:`vlmrl.evaluation.harness`).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmrl.data.prompts import STYLES

from .tasks import list_tasks, load_task


def add_args(parser) -> None:
    parser.add_argument("--task", required=True,
                        help=f"task name (eval/NAME.yaml) or a task YAML path; known: {', '.join(list_tasks())}")
    parser.add_argument("--data", default=None, help="benchmark file or folder (default: the task's data.path)")
    parser.add_argument("--model", required=True, help="local Qwen-VL checkpoint directory")
    parser.add_argument("--tool", action="store_true", help="tool mode: low-resolution view + crop tool")
    parser.add_argument("--samples", type=int, default=1, help="K responses per doc (K > 1: temperature 1.0, avg@K)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N docs only")
    parser.add_argument("--out", default=None, help="output folder (default: eval_out/<task>)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="per assistant turn (default: the task's generation.max_new_tokens)")
    parser.add_argument("--max-turns", type=int, default=2, help="assistant turns in tool mode")
    parser.add_argument("--prompt-style", default="full", choices=STYLES)
    parser.add_argument("--crop-min-pixels", type=int, default=None,
                        help="tool mode: crops are upscaled to at least this many pixels (default: the engine's)")
    parser.add_argument("--crop-max-pixels", type=int, default=None, help="tool mode: crops are capped at this")
    parser.add_argument("--image-max-pixels", type=int, default=None,
                        help="direct mode: the image is downscaled to at most this many pixels (default: the "
                             "engine's, rollout.image_max_pixels); match the training run's setting")
    parser.add_argument("--prefix", default="",
                        help="force the start of the first assistant turn (baselines with a fixed decision, "
                             "e.g. the model's own call-opening text to always call the tool); {question} in it "
                             "stands for each doc's question")
    parser.add_argument("--batch-size", type=int, default=8, help="docs per rollout batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    max_new = args.max_new_tokens or int(task.generation.get("max_new_tokens", 64))
    settings = EvalSettings(mode="tool" if args.tool else "direct", samples=args.samples, max_new_tokens=max_new,
                            max_turns=args.max_turns, prompt_style=args.prompt_style, batch_size=args.batch_size,
                            seed=args.seed, crop_min_pixels=args.crop_min_pixels,
                            crop_max_pixels=args.crop_max_pixels, image_max_pixels=args.image_max_pixels,
                            prefix=args.prefix)
    settings.check()
    docs = task.load_docs(args.data, images=True, limit=args.limit)
    if not docs:
        raise ValueError(f"task {task.name}: the data holds no documents")

    import torch

    from vlmrl.models.policy import Policy

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = Policy.load(model, dtype="float32" if device == "cpu" else "auto", device=device)
    out = Path(args.out) if args.out else Path("eval_out") / task.name
    result = evaluate(task, docs, policy, out, settings, progress=not args.no_progress)
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'samples.jsonl'}, {out / 'traces.jsonl'}, {out / 'results.json'}")
    return 0
