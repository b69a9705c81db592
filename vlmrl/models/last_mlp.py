"""The last decoder layer's MLP, run only at the positions whose output is read.

A forward pass with `logits_to_keep` reads the final hidden state at the kept positions only: the LM head runs
there and nowhere else. At every other position the last layer still has to produce its keys and values (later
tokens attend to them: a prompt's in a shared-prefix pass or a prefill, a tool observation's), but its MLP output
feeds nothing except the final norm and the LM head there. The MLP works on each position alone, so running it
on the kept rows only gives those rows the same values and the same gradients, and saves that MLP's work at every
other position: the prompt and tool observations in training, all but the last token of a prefill. With L layers
that is about 3/4 of 1/L of an unscored token's cost (7 layers at the benchmark's 30M size, 28-36 in real models).

`last_mlp_only_at(core, keep, shape)` does this for the duration of one forward pass, where the last layer's MLP is
a plain Qwen-VL text MLP (position-wise: no router, no hooks) and activation checkpointing is off (a checkpointed
layer is recomputed during the backward pass, outside the block). Elsewhere it changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vlmrl.models.decoding import MLP_CLASSES  # position-wise: down_proj(act_fn(gate_proj(x)) * up_proj(x))


def kept_positions(keep: int | torch.Tensor, shape: tuple[int, int], device) -> torch.Tensor | None:
    """`logits_to_keep` as a [B, T] bool mask of the positions the LM head reads: an int k keeps the last k
    columns (0: all), a bool tensor is the mask itself. None when every position is read."""
    B, T = shape
    if isinstance(keep, torch.Tensor):
        if keep.dtype != torch.bool or tuple(keep.shape) != (B, T):
            return None
        return keep.to(device)
    if keep <= 0 or keep >= T:
        return None
    rows = torch.zeros(B, T, dtype=torch.bool, device=device)
    rows[:, T - keep:] = True
    return rows


def checkpointing(core) -> bool:
    """Whether the transformers model recomputes its layers in the backward pass (activation checkpointing): its own
    switch, or torch's checkpoint_wrapper around its decoder layers (accelerate's fsdp_activation_checkpointing)."""
    on = getattr(core, "is_activation_checkpointing", None)  # transformers >= 5.x's name
    if bool(getattr(core, "is_gradient_checkpointing", False) if on is None else on):
        return True
    layers = getattr(getattr(getattr(core, "model", None), "language_model", None), "layers", None) or []
    return any(hasattr(layer, "_checkpoint_wrapped_module") for layer in list(layers)[-1:])


def applies(core) -> bool:
    """Whether the last decoder layer's MLP may run on a subset of positions."""
    layers = getattr(getattr(getattr(core, "model", None), "language_model", None), "layers", None)
    if checkpointing(core) or not layers:
        return False
    mlp = getattr(layers[-1], "mlp", None)
    return (type(mlp).__name__ in MLP_CLASSES and not mlp._forward_hooks and not mlp._forward_pre_hooks
            and "forward" not in vars(mlp))


@contextmanager
def last_mlp_only_at(core, keep: int | torch.Tensor, shape: tuple[int, int]):
    """Within the block, the last decoder layer's MLP runs only at the positions `keep` (a `logits_to_keep`
    value for inputs of `shape` [B, T]) marks; its output elsewhere is 0 (never read)."""
    if not applies(core):
        yield
        return
    mlp = core.model.language_model.layers[-1].mlp
    rows = kept_positions(keep, shape, core.device)
    if rows is None:
        yield
        return
    full = type(mlp).forward
    idx = torch.nonzero(rows.flatten()).flatten()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[:2] != rows.shape:  # not the pass the mask was made for
            return full(mlp, x)
        flat, at = x.reshape(-1, x.shape[-1]), idx.to(x.device)  # the layer may sit on another device
        return flat.new_zeros(flat.shape).index_copy(0, at, full(mlp, flat[at])).view_as(x)

    mlp.forward = forward  # an instance attribute: shadows the class's forward until deleted
    try:
        yield
    finally:
        del mlp.forward
