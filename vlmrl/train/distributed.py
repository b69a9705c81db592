"""Multi-process training pieces the trainer needs beyond accelerate: FSDP2 on CPU, lockstep plans, the vision
keep-alive, and the global token totals.

- `make_accelerator`: an `Accelerator` for the trainer. Under `accelerate launch` with an FSDP config
  (`distributed_type: FSDP`, `fsdp_version: 2`), accelerate 1.x turns FSDP on only for accelerator devices; on a
  CPU-only machine it runs the processes as MULTI_CPU (gloo) and ignores the FSDP settings. Here the FSDP2 path is
  switched on for CPU too (torch's `fully_shard` works with gloo), so the same config file and the same code path
  (accelerate's `fsdp2_prepare_model`: transformer-based wrap, activation checkpointing, cpu-ram-efficient
  loading) run on CPU and on GPUs. The layer classes to wrap default to the family's decoder layer and vision
  block (`vlmrl.family`).
- Lockstep: with sharded weights every forward of a wrapped module all-gathers its weights, so all ranks must run
  the same sequence of forward/backward passes, or the collectives hang. `Dist.gather` exchanges a rank's counts
  (mini-batches, micro-batches, tokens) so every rank runs the global maximum (padding with passes that add
  exactly zero), and `vision_keepalive` runs the vision tower on a 4-patch dummy image (its output times zero joins
  the embeddings) in a forward that has no image, so every rank calls the vision blocks in every forward.
- Token normalisation: `Dist.gather` also sums the mini-batch's loss totals (`vlmrl.algos.loss_totals`), so a
  token-mean (and DTPO's two terms, and every other aggregation) divides by the global count; the trainer scales
  the loss by the number of processes because DDP and FSDP average the gradients.
"""

from __future__ import annotations

import os

import torch

from vlmrl.family import get_family


def is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc is not None and acc.distributed_type == DistributedType.FSDP


def _fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(cpu: bool, **kw):
    """An Accelerator; under an FSDP launch config on CPU, with accelerate's FSDP2 path switched on (see the module
    docstring)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    timeout = os.environ.get("VLMRL_COLLECTIVE_TIMEOUT_S")
    if timeout:  # how long a rank waits in a collective for a peer that stopped answering (torch's default: 30 min)
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        kw["kwargs_handlers"] = [*kw.get("kwargs_handlers", []), InitProcessGroupKwargs(timeout=timedelta(seconds=float(timeout)))]
    acc = Accelerator(cpu=cpu, **kw)
    if _fsdp_requested() and acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* environment
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU needs fsdp_version: 2 in the accelerate config (torch's fully_shard); "
                             f"got fsdp_version {plugin.fsdp_version}")
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
    if is_fsdp(acc):
        import warnings

        # The root module returns logits sliced by logits_to_keep (a view); vlmrl never writes into them in place
        # (Policy.logprobs), so the pre-backward hook stays, as the 1-vs-2-process gradient test checks.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return acc


def set_wrap_classes(acc, family: str) -> None:
    """Under FSDP with transformer-based wrap and no class names in the config: shard the family's decoder layers
    and vision blocks one by one (`vlmrl.family.Family.fsdp_wrap`)."""
    if not is_fsdp(acc):
        return
    plugin = acc.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = list(get_family(family).fsdp_wrap)


def transformer_blocks(model, names) -> list[torch.nn.Module]:
    """The modules of `model` whose class name is in `names`."""
    return [m for m in model.modules() if type(m).__name__.removeprefix("FSDP") in set(names)]


class Dist:
    """The process group as the trainer sees it: one process -> no collectives at all."""

    def __init__(self, acc):
        self.acc = acc
        self.world = acc.num_processes if acc is not None else 1
        self.rank = acc.process_index if acc is not None else 0
        self.sharded = is_fsdp(acc)

    def gather(self, values: list[float]) -> torch.Tensor:
        """Every rank's `values`, [world, k] float64 (one all-gather); [1, k] with one process."""
        local = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.world == 1:
            return local.unsqueeze(0)
        import torch.distributed as dist

        out = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(out, local)
        return torch.stack(out)


# --------------------------------------------------------------------------- vision keep-alive

def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict) or hasattr(x, "values") and hasattr(x, "keys"):
        for v in x.values():
            yield from _tensors(v)


class VisionKeepAlive:
    """Hooks on a Qwen-VL model so that every forward runs its vision tower: when a forward carries no image, the
    tower runs on a dummy image of 2x2 patches just before the language model, and zero times the sum of its
    outputs is added to the input embeddings (the values are unchanged; the backward pass reaches the tower's
    weights with zero gradients). Under FSDP every rank then all-gathers (and reduce-scatters) the vision blocks in
    every pass, whether or not its micro-batch has an image; under DDP every parameter gets its gradient."""

    def __init__(self, core):
        inner = core.model
        self.visual, self.lm = inner.visual, inner.language_model
        self.ran = False
        vc = self.visual.config
        patch = vc.patch_size
        temporal = getattr(vc, "temporal_patch_size", 2)
        channels = getattr(vc, "in_channels", getattr(vc, "in_chans", 3))
        merge = getattr(vc, "spatial_merge_size", 2)
        self.grid = torch.tensor([[1, merge, merge]])
        self.pixels = torch.zeros(merge * merge, channels * temporal * patch * patch)
        self.handles = [
            inner.register_forward_pre_hook(self._start),
            self.visual.register_forward_hook(self._seen),
            self.lm.register_forward_pre_hook(self._before_lm, with_kwargs=True),
        ]

    def _start(self, module, args):
        self.ran = False

    def _seen(self, module, args, out):
        self.ran = True

    def _before_lm(self, module, args, kwargs):
        if self.ran:
            return None
        emb = kwargs.get("inputs_embeds")
        if emb is None:
            return None
        dtype = next(self.visual.parameters()).dtype
        out = self.visual(self.pixels.to(emb.device, dtype), grid_thw=self.grid.to(emb.device))
        zero = sum(t.float().sum() for t in _tensors(out) if t.is_floating_point()) * 0.0
        kwargs["inputs_embeds"] = emb + zero.to(emb.dtype)
        return args, kwargs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
