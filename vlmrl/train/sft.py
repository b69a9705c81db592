"""`vlmrl sft`: supervised warm start on scripted demonstrations (synthetic zoom task).

    vlmrl sft recipes/quickstart.yaml sft.steps=100 sft.lr=1e-3

Each training row becomes one demonstration trajectory built *through the real rollout engine* (with a
`ScriptedSampler` that "generates" the scripted texts), so ids, masks, observation turns and crops are
exactly what RL will see. Scripts, in `rollout.mode: tool`:

- crop demo (needs-zoom rows with probability `sft.tool_fraction`, other rows with probability
  `sft.tool_fraction_no_zoom`, seeded): turn 0 `<think>The detail is too small to read. I will zoom
  in.</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}</tool_call>`, turn 1
  `<think>Now I can read it.</think><answer>{answer}</answer>`. The box, in the coordinate convention of the
  first view the model sees, is (`sft.box`) "tight": the ground-truth box padded 25% per side, or "grid":
  the window of a 3x3 grid of half-size windows (stride a quarter of the image) that holds the padded box
  (a coarse, easy-to-learn choice among 9 boxes), or "snap": the padded box widened to multiples of the
  model's patch factor (28 original pixels for Qwen2.5-VL), so the crop is kept pixel for pixel;
- direct demo (everything else, and always in direct mode): `<think>I can see it.</think><answer>{answer}</answer>`.

With `sft.restate_question: true` the first thought of either script opens with the question itself
(`<think>What color is the small tag? I can see it.</think>...`), so the words that decide whether to crop
sit right before the decision; `vlmrl eval --prefix` fills in `{question}` per sample for the fixed-decision
baselines.

Training: AdamW (`sft.lr`, `sft.adam_beta2`; `sft.warmup_steps` of linear warm-up, then `sft.lr_schedule`:
constant, linear or cosine decay to 0), `sft.steps` steps of `sft.batch_size` demos (cycling a seeded permutation),
loss = mean negative log-likelihood of the response tokens (observation tokens are masked out).
Writes the model + processor to `sft.output` (default `<train.output_dir>/sft_model`) and one JSON
record per step to `sft_metrics.jsonl` next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from vlmrl.config import Config, load_config

CROP_THINK = "<think>The detail is too small to read. I will zoom in.</think>"
AFTER_CROP = "<think>Now I can read it.</think><answer>{answer}</answer>"
DIRECT = "<think>I can see it.</think><answer>{answer}</answer>"
BOX_PAD = 0.25  # per side, as a fraction of the box's width / height


# --------------------------------------------------------------------------- scripts

def _union(boxes) -> list[float] | None:
    boxes = [b for b in (boxes or []) if isinstance(b, (list, tuple)) and len(b) == 4]
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def grid_window(box, original_size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The window of the 3x3 grid of half-size windows (offsets 0, 1/4, 1/2 of each side) that contains
    `box` and whose centre is nearest to the box's; None when no window contains it."""
    W, H = original_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    best = None
    for ox in (0.0, W / 4, W / 2):
        for oy in (0.0, H / 4, H / 2):
            w = (ox, oy, ox + W / 2, oy + H / 2)
            if w[0] <= box[0] and w[1] <= box[1] and box[2] <= w[2] and box[3] <= w[3]:
                d = (ox + W / 4 - cx) ** 2 + (oy + H / 4 - cy) ** 2
                if best is None or d < best[0]:
                    best = (d, w)
    return None if best is None else best[1]


def seen_box(gt_box, original_size: tuple[int, int], seen_size: tuple[int, int], convention: str,
             pad: float = BOX_PAD, grid: bool = False, snap: int = 0) -> list:
    """A ground-truth box (original pixels), padded by `pad` per side and clamped to the image (with
    `grid`: then widened to its `grid_window` when one holds it; with `snap`: then widened to multiples of
    `snap` original pixels, so a crop of it needs no resize and keeps every pixel), in the coordinates the
    model writes: "absolute" (pixels of the seen view), "rel1000" (0-1000) or "rel1" (0-1)."""
    W, H = original_size
    x1, y1, x2, y2 = (float(v) for v in gt_box)
    bw, bh = x2 - x1, y2 - y1
    x1, x2 = max(0.0, x1 - pad * bw), min(float(W), x2 + pad * bw)
    y1, y2 = max(0.0, y1 - pad * bh), min(float(H), y2 + pad * bh)
    window = grid_window((x1, y1, x2, y2), original_size) if grid else None
    if window is not None:
        x1, y1, x2, y2 = window
    if snap:
        x1, y1 = snap * math.floor(x1 / snap), snap * math.floor(y1 / snap)
        x2, y2 = min(float(W), snap * math.ceil(x2 / snap)), min(float(H), snap * math.ceil(y2 / snap))
    if convention == "absolute":
        sw, sh = seen_size
        return [round(x1 * sw / W), round(y1 * sh / H), round(x2 * sw / W), round(y2 * sh / H)]
    if convention == "rel1000":
        return [round(x1 * 1000 / W), round(y1 * 1000 / H), round(x2 * 1000 / W), round(y2 * 1000 / H)]
    if convention == "rel1":
        return [round(x1 / W, 3), round(y1 / H, 3), round(x2 / W, 3), round(y2 / H, 3)]
    raise ValueError(f"unknown coordinate convention {convention!r}")


def demo_texts(sample, cfg: Config, family: str, factor: int, use_tool: bool) -> list[str]:
    """The scripted assistant turns of one sample: [tool call, answer] or [answer]."""
    from vlmrl.rollout.tools import default_convention, first_view

    answer = str(sample.answer)
    box = _union((getattr(sample, "meta", None) or {}).get("gt_boxes"))
    if not (use_tool and cfg.rollout.mode == "tool" and box is not None and sample.images):
        return [restate(DIRECT, sample.question, cfg).format(answer=answer)]
    r = cfg.rollout
    tool = demo_tool(cfg)
    image = sample.images[0]
    view = first_view(image, r.first_view_scale, factor, r.first_view_min_pixels, r.first_view_max_pixels)
    convention = r.coord_convention or default_convention(family)
    bbox = seen_box(box, image.size, view.size, convention, grid=cfg.sft.box == "grid",
                    snap=factor if cfg.sft.box == "snap" else 0)
    call = json.dumps({"name": tool.name, "arguments": tool.first_view_arguments(bbox)})
    return [f"{restate(CROP_THINK, sample.question, cfg)}<tool_call>{call}</tool_call>", AFTER_CROP.format(answer=answer)]


def demo_tool(cfg: Config):
    """The recipe's tool, which must be a crop tool (crop or nested_crop) for crop demonstrations."""
    from vlmrl.rollout.tools import CropTool, make_tool

    tool = make_tool(cfg.rollout.tool, cfg.rollout.tool_name)
    if not isinstance(tool, CropTool):
        raise ValueError(f"SFT crop demonstrations need a crop tool; rollout.tool={cfg.rollout.tool!r} is "
                         f"{type(tool).__name__} (sft.tool_fraction=0 and sft.tool_fraction_no_zoom=0 give direct "
                         "demonstrations only)")
    return tool


def restate(script: str, question: str, cfg: Config) -> str:
    """With `sft.restate_question`, a first turn's thought opens with the question itself (the words that
    decide whether to crop sit right before the decision, so RL can condition on them)."""
    if not cfg.sft.restate_question or not script.startswith("<think>"):
        return script
    return f"<think>{question.strip()} " + script[len("<think>"):]


def build_demos(policy, samples: list, cfg: Config, seed: int = 0, chunk: int = 8) -> tuple[list, list[str]]:
    """Demonstration trajectories of `samples` (through the rollout engine) and the errors of skipped ones.

    A needs-zoom sample gets a crop demo with probability `cfg.sft.tool_fraction`, any other sample with
    probability `cfg.sft.tool_fraction_no_zoom` (seeded by `seed`)."""
    from vlmrl.rollout.engine import PromptTooLong, RolloutEngine
    from vlmrl.rollout.scripted import ScriptedSampler

    if cfg.rollout.mode == "tool" and (cfg.sft.tool_fraction > 0 or cfg.sft.tool_fraction_no_zoom > 0):
        demo_tool(cfg)  # a recipe whose tool cannot be demonstrated fails here, not once per sample
    rng = random.Random(seed)
    texts: list[list[str]] = []
    ok = []
    skipped: list[str] = []
    for s in samples:
        needs = bool((getattr(s, "meta", None) or {}).get("needs_zoom"))
        use_tool = rng.random() < (cfg.sft.tool_fraction if needs else cfg.sft.tool_fraction_no_zoom)
        try:
            texts.append(demo_texts(s, cfg, policy.family, policy.factor, use_tool))
            ok.append(s)
        except (ValueError, OSError) as e:
            skipped.append(f"{getattr(s, 'id', '?')}: {e}")
    batch_texts: list[list[str]] = []
    scripted = ScriptedSampler(policy.tokenizer,
                               lambda row, turn: batch_texts[row][min(turn, len(batch_texts[row]) - 1)])
    engine = RolloutEngine(policy, cfg.rollout, sampler=scripted)
    trajs = []
    for i in range(0, len(ok), chunk):
        part, part_texts = [], []
        for s, t in zip(ok[i:i + chunk], texts[i:i + chunk]):
            try:
                engine.build_prompt(s)
            except (PromptTooLong, ValueError, OSError) as e:
                skipped.append(f"{getattr(s, 'id', '?')}: {e}")
                continue
            part.append(s)
            part_texts.append(t)
        if not part:
            continue
        batch_texts[:] = part_texts
        scripted.start(len(part))
        trajs += engine.rollout(part, n_per_prompt=1, generator=torch.Generator().manual_seed(cfg.train.seed))
    return trajs, skipped


# --------------------------------------------------------------------------- training

def sft_loss(policy, trajs) -> tuple[torch.Tensor, int]:
    """Mean NLL over response tokens of a batch of trajectories; also the token count."""
    from vlmrl.models.codec import Seq
    from vlmrl.train.batch import left_pad

    seqs = [Seq(list(t.ids), list(t.vision)) for t in trajs]
    mask = left_pad([t.response_mask for t in trajs]).to(policy.device)
    logp = policy.logprobs(seqs, mask)
    n = mask.sum()
    return -(logp * mask).sum() / n.clamp(min=1), int(n)


def sft_data(cfg: Config) -> str:
    """The warm start's rows: ``sft.data``, else ``data.train``."""
    return cfg.sft.data or cfg.data.train


def _load_samples(cfg: Config, need: int, seed: int) -> tuple[list, list[str]]:
    from vlmrl.data import load_dataset

    path = sft_data(cfg)
    ds = load_dataset(path, format=cfg.data.format, max_image_pixels=cfg.data.max_image_pixels)
    if len(ds) == 0:
        raise ValueError(f"the SFT dataset {path} is empty")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    samples, skipped = [], []
    for i in order[:max(1, need)]:
        try:
            samples.append(ds[i])
        except (ValueError, OSError) as e:  # DataError is a ValueError: bad image or row
            skipped.append(str(e))
    return samples, skipped


def run_sft(cfg: Config, policy=None, verbose: bool = True) -> Path:
    """Supervised warm start; returns the directory of the saved model (HF format)."""
    from vlmrl.models.policy import Policy
    from vlmrl.train.checkpoint import _save_pretrained_quietly
    from vlmrl.train.metrics import progress
    from vlmrl.train.schedule import check_schedule, make_scheduler

    s = cfg.sft
    if s.steps < 1 or s.batch_size < 1:
        raise ValueError(f"sft.steps and sft.batch_size must be >= 1, got {s.steps} and {s.batch_size}")
    for name in ("tool_fraction", "tool_fraction_no_zoom"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise ValueError(f"sft.{name} must be in [0, 1], got {getattr(s, name)}")
    if s.box not in ("tight", "grid", "snap"):
        raise ValueError(f"sft.box must be 'tight', 'grid' or 'snap', got {s.box!r}")
    check_schedule(s.lr_schedule, s.warmup_steps, "sft")
    if not 0.0 < s.adam_beta2 < 1.0:
        raise ValueError(f"sft.adam_beta2 must be in (0, 1), got {s.adam_beta2}")
    out = Path(s.output) if s.output else Path(cfg.train.output_dir) / "sft_model"
    if cfg.train.keep_freed_memory:
        from vlmrl.train.memory import keep_freed_memory

        keep_freed_memory()
    seed = cfg.train.seed
    torch.manual_seed(seed)
    if policy is None:
        lora = {"r": cfg.model.lora_r, "alpha": cfg.model.lora_alpha} if cfg.model.lora_r > 0 else None
        policy = Policy.load(cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device,
                             gradient_checkpointing=cfg.model.gradient_checkpointing, lora=lora)

    t0 = time.time()
    samples, skipped = _load_samples(cfg, s.steps * s.batch_size, seed)
    policy.model.eval()
    demos, skipped2 = build_demos(policy, samples, cfg, seed=seed)
    skipped += skipped2
    if not demos:
        raise ValueError(f"no usable demonstrations from {sft_data(cfg)} ({len(skipped)} rows skipped)")
    n_tool = sum(bool(t.tool_calls) for t in demos)
    if verbose:
        print(f"sft: {len(demos)} demonstrations ({n_tool} with a crop), {len(skipped)} rows skipped, "
              f"built in {time.time() - t0:.1f}s")
        for e in skipped[:3]:
            print(f"  skipped: {e}")

    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=cfg.train.weight_decay, betas=(0.9, s.adam_beta2))
    sched = make_scheduler(opt, s.lr_schedule, s.warmup_steps, s.steps, section="sft")
    gen = torch.Generator().manual_seed(seed + 1)
    perm: list[int] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / "sft_metrics.jsonl"
    policy.model.train()
    bar = progress(s.steps, desc="sft")
    with open(log_path, "w") as log:
        for step in range(1, s.steps + 1):
            batch = []
            while len(batch) < min(s.batch_size, len(demos)):
                if not perm:
                    perm = torch.randperm(len(demos), generator=gen).tolist()
                batch.append(demos[perm.pop()])
            loss, n_tok = sft_loss(policy, batch)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"sft step {step}: the loss is {loss.item()}")
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm or float("inf"))
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            rec = {"step": step, "loss": float(loss.item()), "tokens": n_tok, "grad_norm": float(gnorm), "lr": lr,
                   "time": round(time.time() - t0, 3)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(1, {"loss": rec["loss"]})
    bar.close()
    policy.model.eval()
    model = policy.model
    if hasattr(model, "merge_and_unload"):  # peft (LoRA): save a plain HF checkpoint
        model = model.merge_and_unload()
    _save_pretrained_quietly(model, out)
    policy.processor.save_pretrained(str(out))
    if verbose:
        rows = [json.loads(l) for l in open(log_path)]
        k = min(5, len(rows))
        first = sum(r["loss"] for r in rows[:k]) / k
        last = sum(r["loss"] for r in rows[-k:]) / k
        print(f"sft: loss {first:.3f} -> {last:.3f} over {s.steps} steps; model saved to {out}")
    return out


# --------------------------------------------------------------------------- CLI

def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe (see recipes/); its sft section sets steps, batch_size, lr, ...")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.steps=50 sft.lr=1e-3")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    out = run_sft(cfg)
    print(f"sft model: {out}")
    return 0
