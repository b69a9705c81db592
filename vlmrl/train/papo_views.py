"""PAPO's masked views: one randomly patch-masked copy of every image a trajectory saw, the same for every sample
of a group (PAPO masks a prompt's images once; its G samples share them).

Two orders (`algo.papo.mask_order`):
- "raw" (PAPO's code: verl/trainer/ray_trainer.py:603-612 there masks the dataset's raw PIL images, which are resized
  afterwards for the vision tower): the sample's source image is masked on its own pixel grid, and every view is
  rebuilt from it the way the rollout built the unmasked one (the prompt's view through the engine, a crop cut from
  the masked source and resized to the size the model saw). All views of a group share one mask of the source.
- "resized": the view the model saw is masked on its own grid (tiles on the vision patches when their sizes
  agree); a crop gets its own mask.
Sizes never change, so token ids, image grids and rope positions are reused.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from PIL import Image

from vlmrl.algos.papo import random_patch_mask
from vlmrl.family import get_family


def tile_size(patch_size: int, family: str) -> int:
    """`algo.papo.patch_size`, or for 0 the family's vision patch: 14 (Qwen2/2.5-VL), 16 (Qwen3-VL)."""
    return patch_size or get_family(family).patch


def masked_views(trajs: Sequence, sources: Mapping[int, Sequence[Image.Image]], order: str, patch_size: int,
                 prob: float, generator: torch.Generator, view_fn: Callable[[Image.Image], Image.Image],
                 resample: int = Image.BICUBIC) -> list[list[Image.Image]]:
    """Per trajectory, the masked copy of each of its images (`t.images` order). `sources` maps a group id to its
    sample's source images; `view_fn` is the rollout's prompt view of a source image (RolloutEngine.view);
    `resample` the filter crops were resized with. Images shared by a group are the same objects."""
    if order not in ("raw", "resized"):
        raise ValueError(f"mask order must be 'raw' or 'resized', got {order!r}")
    masked_source: dict = {}
    views: dict = {}
    out = []
    for t in trajs:
        row = []
        for j, im in enumerate(t.images):
            key = (t.group_id, j) if im.kind == "input" else (id(t), j)
            if key not in views:
                views[key] = _masked(t, im, order, patch_size, prob, generator, view_fn, resample, sources,
                                     masked_source)
            row.append(views[key])
        out.append(row)
    return out


def _masked(t, im, order, patch_size, prob, generator, view_fn, resample, sources, masked_source) -> Image.Image:
    if order == "resized":
        return random_patch_mask(im.image, patch_size, prob, generator=generator)
    skey = (t.group_id, im.source)
    if skey not in masked_source:
        try:
            src = sources[t.group_id][im.source]
        except (KeyError, IndexError):
            raise ValueError(f"no source image {im.source} for group {t.group_id}: mask_order 'raw' needs the "
                             "sample's images") from None
        masked_source[skey] = random_patch_mask(src, patch_size, prob, generator=generator)
    src = masked_source[skey]
    if im.kind == "input":
        view = view_fn(src)
    else:
        view = src.crop(tuple(im.box_original))
        if view.size != tuple(im.seen_size):
            view = view.resize(tuple(im.seen_size), resample)
    if view.size != tuple(im.seen_size):
        raise ValueError(f"masked view of image {im.source} is {view.size}, the model saw {tuple(im.seen_size)}")
    return view
