"""PAPO's masked views: mask order (raw image then resize, as PAPO's code; or the resized view), tile size per
family, one mask per group.

PAPO's code (MikeWangWZHL/PAPO @ fb63bf4533b7): verl/trainer/ray_trainer.py:603-612 masks the raw PIL images
of multi_modal_data (the dataset keeps the raw images there, verl/utils/dataset.py:350) with
verl/trainer/papo_utils.py:17-30 (square tiles from the top-left, partial edge tiles included, each blacked out
with probability black_prob), and verl/workers/fsdp_workers.py:489-503 resizes the masked images afterwards
(process_image, then the image processor), like the unmasked ones.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlmrl.rollout.trajectory import TrajImage
from vlmrl.train.papo_views import masked_views, tile_size

WHITE = Image.new("RGB", (28, 28), (255, 255, 255))


def half(im):
    return im.resize((14, 14), Image.BICUBIC)


def traj(group, crop_box=None):
    images = [TrajImage("input", (14, 14), (28, 28), 1, -1, image=half(WHITE), source=0)]
    if crop_box is not None:
        images.append(TrajImage("crop", (28, 28), (28, 28), 1, 0, None, list(crop_box), image=None, source=0))
    return SimpleNamespace(group_id=group, images=images)


def drops(seed, n):
    return (torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()


@pytest.mark.parametrize("seed", [0, 1])  # draws [[1, 0], [1, 1]] and [[0, 1], [1, 0]] (1 = dropped)
def test_raw_order_masks_the_source_then_rebuilds_each_view(seed):
    """A white 28x28 source, 14-px tiles (2 x 2), p 0.5: the draws of the generator decide which tiles go black.
    The prompt view is the masked source halved (14x14): the centre pixel of each 7x7 quadrant is 0 where its tile
    was dropped, 255 where not. The crop of the top-right tile (14, 0, 28, 14), shown at 28x28, is uniformly 0 or
    255 by the same tile's draw: all views of a group share the one mask of the source."""
    d = drops(seed, 2)
    assert {v for row in d for v in row} == {True, False}  # both kinds of tile occur
    t0, t1 = traj(0, crop_box=(14, 0, 28, 14)), traj(0)
    out = masked_views([t0, t1], {0: [WHITE]}, "raw", 14, 0.5, torch.Generator().manual_seed(seed), half)
    view = np.array(out[0][0])
    for (r, c), y, x in (((0, 0), 3, 3), ((0, 1), 3, 10), ((1, 0), 10, 3), ((1, 1), 10, 10)):
        assert view[y, x].tolist() == ([0, 0, 0] if d[r][c] else [255, 255, 255])
    crop = np.array(out[0][1])
    assert crop.shape == (28, 28, 3) and (crop == (0 if d[0][1] else 255)).all()
    assert out[1][0] is out[0][0]  # the group's samples share the masked prompt view


@pytest.mark.parametrize("seed", [0, 1])  # first draws 0.496 (dropped), 0.758 (kept)
def test_resized_order_masks_the_view_itself(seed):
    """The 14x14 view with 14-px tiles is one tile: all black or all white by the first draw; another group
    gets its own mask (its own draw)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.rand(1, 1, generator=torch.Generator().manual_seed(seed)).item() < 0.5
    out = masked_views([traj(0), traj(1)], {}, "resized", 14, 0.5, g, half)
    assert (np.array(out[0][0]) == (0 if first else 255)).all()
    assert out[0][0] is not out[1][0]


def test_tile_size_per_family_and_errors():
    """0 = the family's vision patch (vlmrl/family.py): 14 for Qwen2/2.5-VL, 16 for Qwen3-VL (a 14-px tile would
    cut across its 16-px patches)."""
    assert [tile_size(0, f) for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")] == [14, 14, 16]
    assert tile_size(7, "qwen3_vl") == 7
    with pytest.raises(ValueError, match="mask order"):
        masked_views([traj(0)], {0: [WHITE]}, "later", 14, 0.5, torch.Generator(), half)
    with pytest.raises(ValueError, match="no source image 0 for group 0"):
        masked_views([traj(0)], {}, "raw", 14, 0.5, torch.Generator(), half)


def test_papo_recipes_follow_the_released_runs():
    """PAPO-D's released runs compute the masked log-probs without gradient (verl/workers/actor/dp_actor.py:46,
    RECOMPUTE_AUG_LOG_PROBS=False; the aug log-probs come from compute_log_probs_aug under the rollout weights,
    verl/trainer/ray_trainer.py:765-769); EasyR1's dual clip 3.0 (verl/workers/actor/config.py:91 in PAPO)."""
    from vlmrl.config import load_config

    for name in ("papo_g", "papo_d"):
        a = load_config(f"recipes/{name}.yaml").algo
        assert (a.papo.masked_grad, a.papo.mask_order, a.papo.patch_size, a.dual_clip) == (False, "raw", 0, 3.0)
