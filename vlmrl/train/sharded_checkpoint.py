"""Sharded checkpoints for FSDP runs: every rank writes its own shards; atomic like `vlmrl.train.checkpoint`.

On-disk layout (one directory per saved step, next to the unsharded kind; `latest_checkpoint`, `resolve_resume`,
`keep_last` treat both alike)::

    RUN_DIR/checkpoints/step-000010/
      sharded/                 torch.distributed.checkpoint (DCP): the model's and the optimizer's sharded state
        .metadata, __0_0.distcp, __1_0.distcp, ...   one data file per rank
      scheduler.pt             the LR scheduler (the same on every rank)
      rng-000.pt, rng-001.pt   each rank's RNG states (python, numpy, torch, the trainer's named generators)
      trainer_state.json       {"step": 10, "sharded": true, "num_processes": 2, ...}
      config.json, tokenizer and processor files (so the directory names its model family)

Atomicity: the main process picks `.tmp-step-N-<random>/` and tells the others; every rank writes its shards and
its RNG file there; after a barrier the main process writes the rest, fsyncs the tree and renames it to `step-N`
(the commit). A rank killed mid-save leaves a `.tmp-*` directory, which is ignored and removed by the next save.

Resume needs the same number of processes (the RNG streams are per rank); DCP itself would reshard the weights.
`export_model` writes a plain Hugging Face checkpoint (full weights) for `vlmrl eval` and transformers.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import torch

from vlmrl.train.checkpoint import (
    CHECKPOINTS,
    STATE_FILE,
    CheckpointError,
    _publish,
    _prune,
    _remove_leftovers,
    _rng_state,
    _set_rng_state,
    latest_checkpoint,
    step_dirname,
)

SHARDED = "sharded"


def _inner_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def _broadcast(obj, acc):
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def save_sharded_checkpoint(run_dir, step: int, model, optimizer, scheduler, acc, processor=None,
                            trainer_state: dict | None = None, generators: dict | None = None,
                            keep_last: int | None = 3) -> Path:
    """Every rank calls this at the same point. Returns the checkpoint path. Raises CheckpointError on failure."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    step = int(step)
    state = {**(trainer_state or {}), "step": step, "sharded": True, "num_processes": acc.num_processes}
    state_json = json.dumps(state, indent=2, sort_keys=True, allow_nan=False)
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dirname(step)
    tmp = None
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp = root / f".tmp-{step_dirname(step)}-{secrets.token_hex(4)}"
        tmp.mkdir()
    tmp = Path(_broadcast(str(tmp) if tmp else None, acc))
    previous = latest_checkpoint(run_dir)
    error = None
    try:
        msd, osd = get_state_dict(model, _inner_optimizer(optimizer))
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp / SHARDED))
        torch.save(_rng_state(generators), tmp / f"rng-{acc.process_index:03d}.pt")
    except Exception as e:  # noqa: BLE001  (reported after the barrier, so no rank is left waiting)
        error = e
    failed = _broadcast_any(error is not None, acc)
    if not failed and acc.is_main_process:
        try:
            if processor is not None:
                processor.save_pretrained(str(tmp))
            core = _core(model)
            if hasattr(core, "config"):
                core.config.save_pretrained(str(tmp))
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / STATE_FILE).write_text(state_json + "\n")
            _publish(tmp, final, root)
            _prune(root, keep_last)
        except Exception as e:  # noqa: BLE001
            error = e
    failed = _broadcast_any(error is not None, acc)
    if failed:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointError(f"saving sharded checkpoint step {step} to {final} failed on "
                              f"{'this rank' if error else 'another rank'}: {error or 'see its log'}; {kept}") from error
    return final


def _broadcast_any(flag: bool, acc) -> bool:
    """Whether any rank has `flag` set (an all-reduce)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _core(model):
    m = model
    while hasattr(m, "module") and isinstance(m.module, torch.nn.Module):
        m = m.module
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def is_sharded(ckpt) -> bool:
    return (Path(ckpt) / SHARDED / ".metadata").is_file()


def load_sharded_checkpoint(ckpt, model, optimizer, scheduler, acc, generators: dict | None = None) -> dict:
    """Restore the shards, the scheduler and this rank's RNG states; every rank calls it. Returns trainer_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ckpt = Path(ckpt)
    state = json.loads((ckpt / STATE_FILE).read_text())
    saved_n = int(state.get("num_processes", 0))
    if saved_n != acc.num_processes:
        raise CheckpointError(f"{ckpt} was saved by {saved_n} processes; resume it with {saved_n} "
                              f"(this run has {acc.num_processes}): each rank's RNG streams are in it")
    opt = _inner_optimizer(optimizer)
    msd, osd = get_state_dict(model, opt)
    sd = {"model": msd, "optimizer": osd}
    dcp.load(sd, checkpoint_id=str(ckpt / SHARDED))
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True))
    rng = ckpt / f"rng-{acc.process_index:03d}.pt"
    if not rng.is_file():
        raise CheckpointError(f"{ckpt}: no {rng.name}")
    _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True), generators, ckpt)
    return state


def export_model(model, processor, out_dir, acc, replica=None) -> None:
    """A plain Hugging Face checkpoint of the full weights in `out_dir` (written by the main process). `replica`: an
    unsharded model holding the same weights (the gathered sampler's copy), saved as it is; else the full state
    dict is gathered (a collective: every rank calls this)."""
    out_dir = Path(out_dir)
    if replica is None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if acc.is_main_process:
            _core_or_peft(model).save_pretrained(str(out_dir), state_dict=sd)
    elif acc.is_main_process:
        replica.save_pretrained(str(out_dir))
    if acc.is_main_process and processor is not None:
        processor.save_pretrained(str(out_dir))


def _core_or_peft(model):
    m = model
    while hasattr(m, "module") and isinstance(m.module, torch.nn.Module):
        m = m.module
    return m
