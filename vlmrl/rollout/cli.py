"""`vlmrl rollout`: one image + question through the rollout engine; prints each trajectory and saves it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vlmrl.data.prompts import STYLES
from vlmrl.rollout.engine import RolloutConfig, RolloutEngine
from vlmrl.rollout.trajectory import Trajectory, save_traces


def describe(t: Trajectory) -> str:
    """A readable multi-line account of one trajectory."""
    lines = [f"--- sample {t.sample_index}  finish={t.finish_reason}  visual_tokens={t.visual_tokens}  "
             f"response_tokens={t.num_response_tokens}"]
    view = t.images[0] if t.images else None
    if view is not None:
        lines.append(f"  first view: {view.seen_size[0]}x{view.seen_size[1]} of {view.original_size[0]}x"
                     f"{view.original_size[1]} ({view.visual_tokens} visual tokens)")
    calls = {c.turn: c for c in t.tool_calls}
    for k, text in enumerate(t.turns):
        lines.append(f"  [turn {k}] {text.strip()}")
        c = calls.get(k)
        if c is None:
            continue
        if c.valid and c.box_seen is not None:
            lines.append(f"    tool call ok: bbox {c.bbox} -> seen {[round(x, 1) for x in c.box_seen]} "
                         f"-> original {c.box_original}")
        elif c.valid:
            lines.append(f"    tool call ok: {c.name} {c.arguments} -> {c.record}")
        else:
            lines.append(f"    tool call rejected: {c.error}")
    if t.rewards:
        lines.append("  rewards: " + ", ".join(f"{k}={v:.3g}" for k, v in t.rewards.items()))
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Qwen-VL checkpoint directory")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--question", required=True)
    p.add_argument("--answer", default="", help="reference answer (for the reward printout)")
    p.add_argument("--answer-type", default="word", choices=["choice", "number", "word", "math"])
    p.add_argument("--tool", action="store_true", help="tool mode: low-resolution view + crop tool")
    p.add_argument("--samples", type=int, default=4, help="G samples")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--prompt-style", default="full", choices=STYLES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="rollout_traces.jsonl", help="trace file (images go beside it)")


def run(args: argparse.Namespace) -> int:
    from vlmrl.data.images import decode_image
    from vlmrl.data.sample import Sample
    from vlmrl.models.policy import Policy
    from vlmrl.rewards.trajectories import score_trajectories

    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    image = decode_image(Path(args.image), where=args.image)
    sample = Sample(images=[image], question=args.question, answer=args.answer, answer_type=args.answer_type,
                    id=Path(args.image).stem)
    policy = Policy.load(args.model, dtype="float32" if not torch.cuda.is_available() else "auto")
    cfg = RolloutConfig(mode="tool" if args.tool else "direct", max_turns=args.max_turns,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        prompt_style=args.prompt_style)
    trajs = RolloutEngine(policy, cfg).rollout([sample], args.samples,
                                               generator=torch.Generator().manual_seed(args.seed))
    if args.answer:
        total, parts = score_trajectories(trajs, args.samples)
        for i, t in enumerate(trajs):
            t.rewards = {"total": total[i]} | {k: v[i] for k, v in parts.items()}
    for t in trajs:
        print(describe(t))
    path = save_traces(args.out, trajs)
    print(f"saved {len(trajs)} trajectories to {path}")
    return 0
