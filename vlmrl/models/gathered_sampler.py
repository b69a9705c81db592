"""Sampling when the policy's weights are sharded (FSDP): from a full copy, gathered once per weight update.

Under FSDP every forward of the wrapped model all-gathers each layer's weights. Sampling through it would
all-gather per decoding step, and, since each rank decodes its own prompts for its own number of steps, the ranks'
collectives would not match and the run would hang. `GatheredSampler` instead keeps one unsharded copy of the model
on each rank and samples from it with the HF sampler (every CPU speed trick of it kept); `sync_weights(model)`,
which the trainer calls on every rank right after each optimizer step (a point all ranks reach together),
all-gathers the trainable weights once into the copy. Rollouts then run with no collectives at all.

Cost: a full copy of the weights per rank (what sampling from them needs anyway), on top of the shards; the
gradients and optimizer state stay sharded. The vLLM backend, where present, is the other way to keep it off the
training processes.
"""

from __future__ import annotations

import copy

import torch

from vlmrl.models.hf_sampler import HFSampler
from vlmrl.models.sampler import Sampler


_CKPT = "_checkpoint_wrapped_module."  # torch's checkpoint_wrapper inserts it into parameter names


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (an all-gather), a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class GatheredSampler(Sampler):
    """An HFSampler over `Policy(copy of the model)`. Build it before the model is sharded (`copy_of` is the
    unwrapped model; its weights may be on the meta device, as cpu-ram-efficient loading leaves them on all ranks
    but the first): the copy is materialised on `device` (the process's device) and filled by the first
    `sync_weights`, which must run on every rank."""

    def __init__(self, policy, config=None, copy_of=None, device=None):
        from vlmrl.models.policy import Policy

        src = copy_of if copy_of is not None else policy.model
        replica = copy.deepcopy(src)
        if any(p.device.type == "meta" for p in replica.parameters()):  # filled by the first sync_weights
            replica = replica.to_empty(device=device or "cpu")
        replica.requires_grad_(False).eval()
        self.replica = Policy(replica, policy.processor, policy.family)
        self.replica.codec = policy.codec  # one memo of encoded images for training and sampling
        self.inner = HFSampler(self.replica, config)
        self._synced_once = False
        self.gathers = 0  # how many times the weights were gathered (tests, logs)

    def generate(self, prompts, params):
        if not self._synced_once:
            raise RuntimeError("GatheredSampler.generate before the first sync_weights(model): the copy holds no "
                               "weights yet (the trainer syncs once right after sharding the model)")
        return self.inner.generate(prompts, params)

    def release(self) -> None:
        self.inner.release()

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Copy the (sharded) model's weights into the full copy: every parameter and buffer the first time,
        the trainable parameters after that. A collective: every rank calls it at the same point."""
        dst_params = dict(self.replica.model.named_parameters())
        dst_buffers = dict(self.replica.model.named_buffers())
        src = model
        while hasattr(src, "module") and isinstance(src.module, torch.nn.Module):  # DDP / accelerate wrappers
            src = src.module
        names = set()
        for name, p in src.named_parameters():
            if self._synced_once and not p.requires_grad:
                continue
            name = name.replace(_CKPT, "")  # activation checkpointing wraps blocks (FSDP's fsdp_activation_checkpointing)
            if name not in dst_params:
                raise KeyError(f"GatheredSampler: the copy has no parameter {name!r} (was the model changed after "
                               "the sampler was built?)")
            dst_params[name].copy_(_full(p.detach()))
            names.add(name)
        if not self._synced_once:
            for name, b in src.named_buffers():
                name = name.replace(_CKPT, "")
                if name in dst_buffers and b.device.type != "meta":
                    dst_buffers[name].copy_(_full(b))
        self.gathers += 1
        self._synced_once = True
        self.inner.release()

    def sync_all_weights(self, model) -> None:
        """`sync_weights` of every parameter and buffer, frozen ones included (after loading a checkpoint)."""
        self._synced_once = False
        self.sync_weights(model)
