"""`vlmrl train`: the outer loop around Trainer.step — resume, metrics, traces, checkpoints, eval, plots.

Run directory layout (train.output_dir):
    config.yaml            the resolved recipe
    metrics.jsonl          one JSON record per step
    traces/step-000001.jsonl (+ _images/)   a sample of each step's trajectories
    checkpoints/step-000010/   HF model + optimizer, scheduler, RNG and data position (FSDP runs: the sharded
                           model and optimizer state, one RNG file per rank; vlmrl/train/sharded_checkpoint.py)
    model/                 the final model (HF format)
    plots/*.png            curves of the metrics (train.plot)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


from vlmrl.config import Config, load_config
from vlmrl.train.checkpoint import CheckpointError, load_checkpoint, resolve_resume, save_checkpoint
from vlmrl.train.sharded_checkpoint import (export_model, is_sharded, load_sharded_checkpoint,
                                            save_sharded_checkpoint)
from vlmrl.train.metrics import MetricsLogger, progress, reduce_metrics
from vlmrl.train.trainer import Trainer, save_run_config


def evaluate(policy, dataset, cfg: Config, limit: int, mode: str | None = None, seed: int = 0, sampler=None,
             answers: list | None = None) -> dict:
    """Greedy held-out evaluation through the eval harness (vlmrl.evaluation.harness.evaluate_samples), scored
    with the training reward's accuracy: accuracy, tool-call rates, visual tokens (per needs_zoom split too).
    `sampler`: the trainer's, so a periodic eval reuses its packed decode weights instead of packing a second copy.
    `answers`: a list that gets each row's (kind, predicted answer, target) (vlmrl.train.health.answer_rows)."""
    from vlmrl.evaluation.harness import EvalSettings, evaluate_samples
    from vlmrl.rewards.trajectories import score_trajectories
    from vlmrl.train.health import answer_rows

    samples, skipped = [], 0
    for i in range(min(limit, len(dataset))):
        try:
            samples.append(dataset[i])
        except (ValueError, OSError) as e:  # a bad image in the eval split: skipped and counted
            skipped += 1
            print(f"skipped an eval row: {e}", file=sys.stderr)
    if not samples:
        return {"eval/skipped_samples": skipped}
    settings = EvalSettings(rollout=replace(cfg.rollout, mode=mode or cfg.rollout.mode), samples=1, batch_size=8,
                            seed=seed)

    def score(trajs):
        if answers is not None:
            answers.extend(answer_rows(trajs))
        return score_trajectories(trajs, 1, "accuracy_format")[1]["accuracy"]

    res = evaluate_samples(samples, policy, settings, score, sampler)
    out = {"eval/accuracy": res["accuracy"], "eval/tool_call_rate": res["tool_call_rate"],
           "eval/visual_tokens_per_sample": res["visual_tokens_per_sample"], "eval/skipped_samples": skipped}
    for flag, name in (("true", "zoom"), ("false", "no_zoom")):
        part = res.get("by", {}).get("needs_zoom", {}).get(flag)
        if part and part["n"]:
            out[f"eval/accuracy_{name}"] = part["score"]
            out[f"eval/tool_call_rate_{name}"] = part["tool_call_rate"]
    return out


def _my_skipped(state: dict, acc) -> list[str]:
    """This process's skipped rows from a checkpoint. Saved with the same number of processes: its own list;
    otherwise the main process takes them all (so the summed count across processes stays right)."""
    by = state.get("skipped_by_process") or [state.get("skipped_samples", [])]
    if len(by) == acc.num_processes:
        return list(by[acc.process_index])
    return [x for lst in by for x in lst] if acc.is_main_process else []


def run_training(cfg: Config, accelerator=None) -> Path:
    """Train with RL per the config; returns the run directory."""
    from vlmrl.rollout.trajectory import save_traces

    out = Path(cfg.train.output_dir)
    trainer = Trainer(cfg, accelerator)
    acc = trainer.acc
    if trainer.is_main:
        save_run_config(cfg, out)
    start = 0
    state = {}
    ckpt = resolve_resume(out, cfg.train.resume)
    gens = {"rollout": trainer.gen, "papo_mask": trainer.mask_gen}
    sharded = trainer.dist.sharded
    if ckpt is not None:
        if is_sharded(ckpt) != sharded:
            raise CheckpointError(f"{ckpt} is {'a sharded' if is_sharded(ckpt) else 'an unsharded'} checkpoint and "
                                  f"this run is {'' if sharded else 'not '}sharded (FSDP): resume under the launch "
                                  "config that saved it")
        if sharded:
            state = load_sharded_checkpoint(ckpt, trainer.policy.model, trainer.optimizer, trainer.scheduler, acc,
                                            generators=gens)
            if hasattr(trainer.sampler, "sync_all_weights"):
                trainer.sampler.sync_all_weights(trainer.policy.model)
        else:
            state = load_checkpoint(ckpt, acc.unwrap_model(trainer.policy.model), trainer.optimizer,
                                    trainer.scheduler, generators=gens)
            own_rng = Path(ckpt) / f"rng-{acc.process_index:03d}.pt"
            if acc.num_processes > 1 and own_rng.is_file() and state.get("num_processes") == acc.num_processes:
                from vlmrl.train.checkpoint import _set_rng_state
                import torch

                _set_rng_state(torch.load(own_rng, map_location="cpu", weights_only=True), gens, Path(ckpt))
        start = int(state["step"])
        by_pos = state.get("data_position_by_process")
        own = by_pos is not None and len(by_pos) == acc.num_processes
        trainer.stream.position = int(by_pos[acc.process_index] if own else state["data_position"])
        trainer.nonfinite_total = int(state.get("nonfinite_total", 0))
        trainer.stream.skipped = _my_skipped(state, acc)
        trainer.step_idx = start
        trainer.budget.load_state_dict(state.get("budget"))  # Knapsack RL's success rates (None: uniform)
        if trainer.is_main:
            print(f"resumed from {ckpt} at step {start}")
    eval_set = None
    if cfg.data.eval and (cfg.train.eval_every or cfg.train.eval_at_start):
        from vlmrl.data import load_dataset

        eval_set = load_dataset(cfg.data.eval, format=cfg.data.format, max_image_pixels=cfg.data.max_image_pixels)
    logger = MetricsLogger(out, is_main=trainer.is_main, accelerator=acc if cfg.train.log_with else None,
                           resume_step=start if ckpt is not None else -1)  # a fresh start drops an old run's records
    bar = progress(cfg.train.steps, desc=f"train {cfg.algo.name}", is_main=trainer.is_main, initial=start)
    from vlmrl.train.health import HealthMonitor

    health = HealthMonitor(cfg.train.health, warn=trainer.is_main)
    health.load_state_dict(state.get("health"))  # the eval/reward windows and the warnings given go on

    def checkpoint(step: int) -> None:
        acc.wait_for_everyone()
        by_process = [list(trainer.stream.skipped)]
        positions = [trainer.stream.position]
        if acc.num_processes > 1:  # every process skips rows of its own stream, and may take more of them
            from accelerate.utils import gather_object

            by_process = gather_object(by_process)
            positions = gather_object(positions)
        state = {"data_position": trainer.stream.position, "nonfinite_total": trainer.nonfinite_total,
                 "skipped_samples": by_process[0], "skipped_by_process": by_process,
                 "data_position_by_process": positions,
                 "budget": trainer.budget.state_dict(), "health": health.state_dict()}
        if sharded:
            save_sharded_checkpoint(out, step, trainer.policy.model, trainer.optimizer, trainer.scheduler, acc,
                                    trainer.policy.processor, trainer_state=state, generators=gens,
                                    keep_last=cfg.train.keep_last)
        else:
            extra = None
            if acc.num_processes > 1:  # each process's RNG streams, so every rank resumes its own
                from accelerate.utils import gather_object

                from vlmrl.train.checkpoint import _rng_state

                rngs = gather_object([_rng_state(gens)])
                extra = {f"rng-{r:03d}.pt": st for r, st in enumerate(rngs)}
                state["num_processes"] = acc.num_processes
            save_checkpoint(out, step, acc.unwrap_model(trainer.policy.model), trainer.policy.processor,
                            trainer.optimizer, trainer.scheduler, trainer_state=state,
                            generators=gens, keep_last=cfg.train.keep_last, is_main=trainer.is_main,
                            extra_files=extra)
        acc.wait_for_everyone()

    if eval_set is not None and cfg.train.eval_at_start and start == 0:  # the curve's starting point
        answers = []
        first = evaluate(trainer.policy, eval_set, cfg, cfg.train.eval_samples, sampler=trainer.sampler, answers=answers)
        logger.log(0, first | health.check_start(answers))
    for step in range(start + 1, cfg.train.steps + 1):
        metrics, trajs = trainer.step()
        metrics = reduce_metrics(metrics, acc)
        answers = None
        if eval_set is not None and cfg.train.eval_every and step % cfg.train.eval_every == 0:
            answers = []
            metrics.update(evaluate(trainer.policy, eval_set, cfg, cfg.train.eval_samples, sampler=trainer.sampler,
                                    answers=answers))
        metrics.update(health.update(step, metrics, answers=answers))
        record = logger.log(step, metrics)
        if trainer.is_main and trajs and cfg.train.trace_samples:
            save_traces(out / "traces" / f"step-{step:06d}.jsonl", trajs[:cfg.train.trace_samples], step=step)
        bar.update(1, record)
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.steps:
            checkpoint(step)
    bar.close()
    logger.close()
    if cfg.train.steps > start:
        checkpoint(cfg.train.steps)
    if sharded:  # the full weights as a plain Hugging Face checkpoint
        replica = getattr(trainer.sampler, "replica", None)
        export_model(trainer.policy.model, trainer.policy.processor, out / "model", acc,
                     replica=replica.model if replica is not None else None)
    if trainer.is_main:
        model_dir = out / "model"
        if not sharded:
            acc.unwrap_model(trainer.policy.model).save_pretrained(model_dir)
            trainer.policy.processor.save_pretrained(str(model_dir))
        if cfg.train.plot:
            try:
                from vlmrl.plots import plot_run

                plot_run(out)
            except ImportError as e:  # matplotlib is an optional extra
                print(f"plots skipped: {e}")
    acc.wait_for_everyone()
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe (see recipes/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 algo.kl_coef=0.01")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    try:
        out = run_training(cfg)
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        import os

        raise RuntimeError(
            f"process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}: a collective failed, so "
            f"another training process died or stopped answering ({type(e).__name__}: {str(e)[:300]}). Relaunch the "
            f"same command to resume from the last complete checkpoint in {cfg.train.output_dir}/checkpoints "
            "(train.resume=auto)") from e
    print(f"run directory: {out}")
    _leave_process_group()
    return 0


def _lost_peer(e: BaseException) -> bool:
    """Whether an error is a collective failing because a peer process went away (gloo / NCCL wording)."""
    import torch.distributed as dist

    text = str(e).lower()
    return (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and
            (type(e).__name__ == "DistBackendError" or any(w in text for w in (
                "connection closed", "connection reset", "broken pipe", "timed out", "timeout", "gloo", "nccl"))))


def _leave_process_group() -> None:
    """Under `accelerate launch`, tear the process group down while Python is still whole: a gloo group freed
    during interpreter shutdown can abort the rank ("terminate called without an active exception")."""
    import gc

    import torch.distributed as dist

    # world size 1: not accelerate's group but the colocated vLLM engine's, which vLLM tears down itself
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gc.collect()  # run_training's DDP wrapper holds the group
        dist.barrier()
        dist.destroy_process_group()
