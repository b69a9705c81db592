"""Training checkpoints: atomic, self-contained, resumable.

On-disk layout (one directory per saved step)::

    RUN_DIR/checkpoints/
      step-000010/                      complete checkpoint (the rename below is the commit)
        config.json, generation_config.json
        model.safetensors               (or model-0000x-of-0000n.safetensors + model.safetensors.index.json)
        tokenizer.json, tokenizer_config.json, chat_template.jinja, processor_config.json
        optimizer.pt                    optimizer.state_dict()            (if an optimizer was given)
        scheduler.pt                    scheduler.state_dict()            (if a scheduler was given)
        rng.pt                          python / numpy / torch CPU / torch CUDA / named torch.Generator states
        trainer_state.json              {"step": 10, ...whatever the trainer passed (data position, ...)}
      step-000012/
      .tmp-step-000014-1a2b3c4d/        a save in progress, or one killed mid-way: ignored, removed by the next save

The model directory is a normal Hugging Face checkpoint: `AutoModelForImageTextToText.from_pretrained` and
`AutoProcessor.from_pretrained` (after `import vlmrl.models.processor`) load it as is. A peft (LoRA) model
saves only its adapter (`adapter_model.safetensors` + `adapter_config.json`); the frozen base weights are
not copied, so resuming needs the same base model, which the trainer loads from the recipe anyway.

Atomicity: everything is written into `.tmp-step-N-<random>/`, every file and the directory are fsynced,
then the directory is renamed to `step-N` (a single `rename`, atomic on POSIX). A directory named `step-*`
is therefore complete; a SIGKILL or power loss mid-save leaves only a `.tmp-*` directory, which
`latest_checkpoint` ignores. A failed save (e.g. a full disk) removes its temporary directory, keeps every
earlier checkpoint and raises `CheckpointError` naming the step, the path and the intact previous checkpoint.

Multi-process runs: only the main process writes (`is_main=False` returns None at once); the caller puts
barriers around the save. `rng.pt` holds the main process's RNG states.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved or loaded."""


def step_dirname(step: int) -> str:
    return f"step-{int(step):06d}"


# --------------------------------------------------------------------------- helpers

def _unwrap(model):
    """The model under DDP / accelerate wrappers (`.module`); peft models stay wrapped."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then the directories (so the names are durable too)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root, dirs, files in os.walk(path, topdown=False):
        _fsync_dir(Path(root))


def _publish(tmp: Path, final: Path, root: Path) -> None:
    """Make the written checkpoint `tmp` the step directory `final`, atomically: synced to disk first, then renamed;
    a step saved again (e.g. after resuming from an older checkpoint) replaces the old one only once the new is in
    place."""
    _fsync_tree(tmp)
    if final.exists():
        old = root / f".old-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def _rng_state(generators: dict[str, torch.Generator] | None) -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state as plain types, so torch.load(weights_only=True) reads it
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def _set_rng_state(state: dict, generators: dict[str, torch.Generator] | None, where: Path) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])
    saved = state.get("generators", {})
    for gname, gen in (generators or {}).items():
        if gname not in saved:
            raise CheckpointError(f"{where}: no RNG state saved for generator {gname!r} (saved: {sorted(saved)})")
        gen.set_state(saved[gname])


def _weights_files(ckpt: Path) -> list[Path] | None:
    """The weight files a checkpoint directory should hold, or None when they are missing."""
    if (ckpt / "sharded" / ".metadata").is_file():  # an FSDP run's sharded checkpoint (vlmrl/train/sharded_checkpoint.py)
        return [ckpt / "sharded" / ".metadata"]
    for index_name in ("model.safetensors.index.json", "adapter_model.safetensors.index.json"):
        index = ckpt / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, OSError):
                return None
            files = [ckpt / s for s in shards]
            return files if files and all(f.is_file() for f in files) else None
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (ckpt / name).is_file():
            return [ckpt / name]
    return None


def is_complete(ckpt: str | os.PathLike) -> bool:
    """True for a directory holding trainer_state.json (valid JSON with a step) and all its weight files."""
    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and "step" in state and _weights_files(ckpt) is not None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step number)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete `step-*` checkpoint of a run, or None. `.tmp-*` leftovers are ignored."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _remove_leftovers(root: Path) -> None:
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep_last: int | None) -> None:
    if not keep_last or keep_last <= 0:
        return
    ckpts = list_checkpoints(root.parent)
    for old in ckpts[:-keep_last]:
        # rename first so a half-deleted directory never looks like a checkpoint
        trash = root / f".old-{old.name}-{secrets.token_hex(4)}"
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- save

def _save_pretrained_quietly(model, out: Path) -> None:
    """`model.save_pretrained` in safetensors, without transformers' per-save progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, processor=None, optimizer=None, scheduler=None,
                    trainer_state: dict | None = None, generators: dict[str, torch.Generator] | None = None,
                    keep_last: int | None = 3, is_main: bool = True,
                    extra_files: dict[str, object] | None = None) -> Path | None:
    """Write `run_dir/checkpoints/step-{step:06d}/` atomically and keep the newest `keep_last` checkpoints.

    `processor` is anything with `save_pretrained` (processor or tokenizer). `trainer_state` must be JSON-able
    (step is added). `generators` are named torch.Generators whose states go into rng.pt. Returns the
    checkpoint path (None on non-main processes, which write nothing). Raises CheckpointError on failure.
    `extra_files`: name -> object, each torch.saved into the checkpoint (e.g. the other processes' RNG states).
    """
    if not is_main:
        return None
    step = int(step)
    state = {**(trainer_state or {}), "step": step}
    try:
        state_json = json.dumps(state, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"trainer_state for step {step} is not JSON-serialisable: {e}") from None

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / step_dirname(step)
    tmp = root / f".tmp-{step_dirname(step)}-{secrets.token_hex(4)}"
    previous = latest_checkpoint(run_dir)
    model = _unwrap(model)
    try:
        tmp.mkdir()
        _save_pretrained_quietly(model, tmp)
        if processor is not None:
            processor.save_pretrained(str(tmp))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(generators), tmp / "rng.pt")
        for name, obj in (extra_files or {}).items():
            torch.save(obj, tmp / name)
        (tmp / STATE_FILE).write_text(state_json + "\n")
        if _weights_files(tmp) is None:
            raise CheckpointError(f"model.save_pretrained wrote no safetensors weights into {tmp}")
        _publish(tmp, final, root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: clean up and pass it on
            raise
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "there is no earlier checkpoint"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise CheckpointError(f"saving checkpoint step {step} to {final} failed: {reason}; {kept}") from e
    _prune(root, keep_last)
    return final


# --------------------------------------------------------------------------- load

def _read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def _tied_groups(model) -> dict[str, set[str]]:
    """name -> names of all parameters/buffers sharing its storage (tied weights)."""
    by_ptr: dict[tuple, set[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t.device.type == "meta" or t.numel() == 0:
            continue
        by_ptr.setdefault((t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), set()).add(name)
    return {n: group for group in by_ptr.values() for n in group}


def _load_model_weights(ckpt: Path, model) -> None:
    model = _unwrap(model)
    files = _weights_files(ckpt)
    if files is None:
        raise CheckpointError(f"{ckpt}: no model weights (model.safetensors or adapter_model.safetensors)")
    sd = _read_safetensors(files)
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, sd)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{ckpt}: adapter keys the model does not have: {result.unexpected_keys[:5]}")
        return
    own = model.state_dict()
    if set(sd) <= set(own):
        missing = set(own) - set(sd)
        tied = _tied_groups(model)
        untied = sorted(k for k in missing if not (tied.get(k, set()) & set(sd)))
        if untied:
            raise CheckpointError(f"{ckpt}: weights missing for {len(untied)} parameters, e.g. {untied[:5]}")
        model.load_state_dict(sd, strict=False)
        return
    # transformers renamed keys on save (its checkpoint conversion mapping, e.g. Qwen2-VL's
    # model.language_model.* <-> model.*): let transformers read its own format, then copy
    dtype = next(model.parameters()).dtype
    fresh = type(model).from_pretrained(str(ckpt), dtype=dtype, local_files_only=True)
    try:
        model.load_state_dict(fresh.state_dict(), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt}: weights do not fit the model: {e}") from None
    del fresh


def load_checkpoint(ckpt_dir: str | os.PathLike, model=None, optimizer=None, scheduler=None,
                    generators: dict[str, torch.Generator] | None = None, restore_rng: bool = True) -> dict:
    """Load weights, optimizer, scheduler and (last) RNG states from a checkpoint; return its trainer_state.

    Each part is restored only when its object is given (model=None skips the weights, e.g. when the
    policy was already loaded from this directory with `Policy.load`).
    """
    ckpt = Path(ckpt_dir)
    if not is_complete(ckpt):
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (needs {STATE_FILE} and safetensors weights)")
    if (ckpt / "sharded").is_dir():
        raise CheckpointError(f"{ckpt} is a sharded (FSDP) checkpoint: resume it under the same FSDP launch "
                              "(accelerate launch --config_file ...), or use the run's model/ directory")
    state = json.loads((ckpt / STATE_FILE).read_text())
    if model is not None:
        _load_model_weights(ckpt, model)
    for obj, fname in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if obj is None:
            continue
        if not (ckpt / fname).is_file():
            raise CheckpointError(f"{ckpt}: no {fname}, but a {fname[:-3]} was given to restore")
        obj.load_state_dict(torch.load(ckpt / fname, map_location="cpu", weights_only=True))
    if restore_rng:
        if not (ckpt / "rng.pt").is_file():
            raise CheckpointError(f"{ckpt}: no rng.pt")
        _set_rng_state(torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=True), generators, ckpt)
    return state


def resolve_resume(run_dir: str | os.PathLike, resume: str | os.PathLike | None) -> Path | None:
    """Which checkpoint to resume from: "auto" -> newest complete one or None; "none"/""/None -> None;
    anything else is a checkpoint directory (or a run directory, meaning its newest checkpoint)."""
    if resume is None or str(resume).strip().lower() in ("", "none", "no", "false"):
        return None
    if str(resume).strip().lower() == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"resume={resume}: no such checkpoint directory")
    if is_complete(path):
        return path
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
    raise CheckpointError(
        f"resume={resume}: not a complete checkpoint (needs {STATE_FILE} and safetensors weights; "
        f"an interrupted save leaves a .tmp-* directory, which cannot be resumed)")
