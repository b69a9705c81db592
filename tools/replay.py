#!/usr/bin/env python
"""Replay one dataset row through the crop-tool loop with a given checkpoint and seed.

    python tools/replay.py --model CKPT --data data/train.jsonl --row 3 [--seed 0] [--group-size 4]
        [--mode tool|direct] [--max-turns 2] [--temperature 1.0] [--max-new-tokens 128] [--out replay.jsonl]

Prints every trajectory readably (rewards as `vlmrl rollout` computes them) (turns, tool calls, boxes, images, rewards) and saves the trace
(JSONL + PNGs) for `vlmrl view` or tools/diff_traces.py. The same model, row and seed give the same
trace, so two replays diff clean; change one thing (checkpoint, seed, temperature) to see its effect.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace


def load_row(path: Path, row: int):
    """Row `row` (0-based) as a Sample, with vlmrl.data's loader when it is there, else a minimal JSONL reader."""
    try:
        from vlmrl.data import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        ds = load_dataset(path)
        if not 0 <= row < len(ds):
            raise ValueError(f"{path}: row {row} out of range (the dataset has {len(ds)} rows)")
        return ds[row]
    from PIL import Image  # minimal adapter: {"image"|"images", "question", "answer", "answer_type"?}

    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not 0 <= row < len(lines):
        raise ValueError(f"{path}: row {row} out of range (the file has {len(lines)} rows)")
    d = json.loads(lines[row])
    refs = d.get("images") or [d.get("image")]
    for field in ("question", "answer"):
        if field not in d:
            raise ValueError(f"{path}, row {row}: missing field {field!r}")
    images = [Image.open(Path(path).parent / r).convert("RGB") for r in refs if r]
    return SimpleNamespace(id=str(d.get("id", f"{Path(path).stem}-{row}")), images=images, question=d["question"],
                           answer=str(d["answer"]), answer_type=d.get("answer_type", "word"),
                           choices=d.get("choices"), meta=d.get("meta") or {})


def score(trajs: list, group_size: int, reward: str) -> None:
    """Fill t.rewards (total and parts) the way `vlmrl rollout` does."""
    from vlmrl.rewards.trajectories import score_trajectories

    total, parts = score_trajectories(trajs, group_size, name=reward)
    for i, t in enumerate(trajs):
        t.rewards = {"total": total[i]} | {k: v[i] for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint directory (HF format)")
    ap.add_argument("--data", required=True, type=Path, help="dataset file or directory (vlmrl.data formats)")
    ap.add_argument("--row", type=int, default=0, help="0-based row index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=1, help="samples of the prompt (G)")
    ap.add_argument("--mode", choices=("tool", "direct"), default="tool")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--reward", default="accuracy_format", help="accuracy_format or dtpo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="trace JSONL to write (default replay-row<ROW>-seed<SEED>.jsonl)")
    args = ap.parse_args(argv)
    try:
        import torch

        from vlmrl.models.policy import Policy
        from vlmrl.rollout.engine import RolloutConfig, RolloutEngine
        from vlmrl.rollout.trajectory import save_traces
        from vlmrl.viewer import format_trajectory

        if not Path(args.model).is_dir():
            raise FileNotFoundError(f"--model {args.model}: no such directory")
        sample = load_row(args.data, args.row)
        torch.manual_seed(args.seed)
        policy = Policy.load(args.model, dtype="float32", device=args.device)
        cfg = RolloutConfig(mode=args.mode, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature)
        trajs = RolloutEngine(policy, cfg).rollout([sample], n_per_prompt=args.group_size,
                                                   generator=torch.Generator().manual_seed(args.seed))
    except (FileNotFoundError, ValueError) as e:
        print(f"replay: error: {e}", file=sys.stderr)
        return 2
    score(trajs, args.group_size, args.reward)
    for t in trajs:
        t.meta = {**t.meta, "replay": {"model": str(args.model), "data": str(args.data), "row": args.row,
                                       "seed": args.seed}}
        print(format_trajectory(t))
        print()
    out = args.out or Path(f"replay-row{args.row}-seed{args.seed}.jsonl")
    save_traces(out, trajs)
    print(f"saved {len(trajs)} trajectories to {out} (view: vlmrl view {out} --model {args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
