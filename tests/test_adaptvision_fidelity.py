"""AdaptVision's own rules where vlmrl offers them as settings: the format regex (reward.format_style), the area term
from the box as written (reward.area_from), crop sizes and resizing (rollout.crop_*, rollout.resample), and the
DTPO recipe that uses them.

AdaptVision/AdaptVision @ 9b7d57c0df97: verl/utils/reward_score/general_qa_bbox.py (format 122-201, area 270-280),
verl/workers/rollout/vllm_rollout/function_tools.py (crop 108-117), verl/utils/dataset/multimodal_dataset.py
(first view 90-127), scripts/run_adaptvision.sh (lambda 0.3 :26, alpha 0.5 :41, clip high 0.24 :42, entropy 0.001 :49,
rejection_sample=True :85).
"""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmrl.config import load_config
from vlmrl.rewards import format_official, format_reward
from vlmrl.rewards.trajectories import score_trajectories
from vlmrl.rollout.tools.base import ToolContext
from vlmrl.rollout.tools.crop import CropTool, map_box
from vlmrl.rollout.trajectory import TrajImage

CALL = '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>'


@pytest.mark.parametrize("turns, official, strict", [
    (["<think>a</think> so the answer is <answer>B</answer>"], 1.0, 0.0),     # text between </think> and <answer>
    (["<think>a</think><answer></answer>"], 1.0, 0.0),                        # empty answer allowed
    (["<think>a</think><answer>B</answer><|im_end|>"], 1.0, 1.0),             # end token dropped first
    (["  <think>a</think>\n<answer>B</answer>\n"], 1.0, 1.0),                 # a one-turn response is stripped
    (["<think>a</think><answer>B</answer><answer>C</answer>"], 0.0, 0.0),     # <answer> exactly once
    (["<think>a</think>" + CALL + "<answer>B</answer>"], 0.0, 0.0),           # no tool call in an answer turn
    (["<think>a</think><answer>B</answer> done"], 0.0, 0.0),                  # nothing after </answer>
    (["<think>a</think>\nI will crop.\n" + CALL, "<think>b</think><answer>B</answer>"], 1.0, 0.0),
    (["<think>a</think>" + CALL, " <think>b</think><answer>B</answer>"], 0.0, 1.0),  # final turn not stripped
    (["<think>a</think><answer>x</answer>" + CALL, "<think>b</think><answer>B</answer>"], 0.0, 0.0),
])
def test_official_format_regex(turns, official, strict):
    """general_qa_bbox.py:171-174: direct ^<think>.*</think>.*<answer>.*</answer>$ and tool-call
    ^<think>.*</think>.*<tool_call>.*</tool_call>$ (re.DOTALL, re.match), plus the tag counts of 122-165; the
    one-turn response and the tool-call turns are .strip()ped (178, 189), the final turn after a call is not (197)."""
    assert format_official(turns) == official
    sample = {"turns": turns}
    assert format_reward(turns[-1], sample)["reward"] == strict


def test_raw_box_area_and_no_expansion():
    """general_qa_bbox.py:270-280: w = min(x1 - x0, W), h = min(y1 - y0, H), area / (W * H) on the box as written.
    On a 200x100 view: [150, 20, 250, 60] -> min(100, 200) * 40 / 20000 = 0.2 (the clamped box gives 0.1);
    a 5x5 box [10, 10, 15, 15] -> 25 / 20000 = 0.00125 (expanded to 28x28 it would be 784 / 20000 = 0.0392).
    With crop_min_box 0 (AdaptVision has no expansion) the 5x5 box is cut as it is: 10x10 original pixels."""
    wide = map_box([150, 20, 250, 60], (200, 100), (400, 200))
    assert wide.raw_area_fraction == pytest.approx(0.2) and wide.seen_area_fraction == pytest.approx(0.1)
    small = map_box([10, 10, 15, 15], (200, 100), (400, 200))
    assert small.raw_area_fraction == pytest.approx(0.00125) and small.seen_area_fraction == pytest.approx(0.0392)
    exact = map_box([10, 10, 15, 15], (200, 100), (400, 200), min_seen_size=0)
    assert exact.box == (20, 20, 30, 30) and not exact.expanded


def test_crop_sizes_and_lanczos():
    """function_tools.py:108-117: crop, smart_resize(factor 28, min 4*28*28, max 3840*3840), LANCZOS. A 5x5 box on
    a 500x400 view of a 1000x800 image is 10x10 original pixels; smart_resize(10, 10): 28x28 = 784 < 3136, so
    beta = sqrt(3136 / 100) = 5.6 and each side ceil(10 * 5.6 / 28) * 28 = 56 -> 56x56, LANCZOS-resized."""
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (800, 1000, 3), dtype=np.uint8))
    seen = [TrajImage("input", (500, 400), (1000, 800), 1, -1)]
    ctx = ToolContext([original], seen, "absolute", 28, 4 * 28 * 28, 3840 * 3840, 0, min_box=0,
                      resample=Image.LANCZOS)
    obs = CropTool().run((100.0, 50.0, 105.0, 55.0), ctx)
    assert obs.record["box_original"] == [200, 100, 210, 110] and obs.record["area_raw"] == pytest.approx(25 / 200000)
    assert obs.image.image.size == (56, 56)
    assert obs.image.image.tobytes() == original.crop((200, 100, 210, 110)).resize((56, 56), Image.LANCZOS).tobytes()


def _traj(box_original, area_raw):
    call = SimpleNamespace(valid=True, box_original=box_original, record={"area_raw": area_raw})
    return SimpleNamespace(final_text="<think>x</think><answer>red</answer>", answer="red", answer_type="word",
                           choices=None, meta={"gt_boxes": [[0, 0, 100, 100]]},
                           turns=["<think>x</think>" + CALL, "<think>x</think><answer>red</answer>"],
                           tool_calls=[call], question="q", images=[SimpleNamespace(original_size=(200, 200))])


def test_dtpo_area_term_from_the_raw_box():
    """reward.area_from raw: a = the crop tool's area_raw; crop: a = the cut region / the original. Two correct,
    crop-ok trajectories: raw a = 0.3, 0.1 (mu 0.2) -> penalties clip(0.3/0.2 - 1, 0, 1) = 0.5 and 0 -> R_tool =
    0.1 - 0.2 * 0.5 = 0.0 and 0.1; crop a = 0.25, 0.25 (boxes of 100x100 on 200x200) -> no penalty, 0.1 each."""
    trajs = [_traj([0, 0, 100, 100], 0.3), _traj([0, 0, 100, 100], 0.1)]
    _, raw = score_trajectories(trajs, 2, "dtpo", area_from="raw", theta=0.2, w_crop=0.1, w_area=0.2)
    assert raw["area"] == pytest.approx([0.3, 0.1]) and raw["tool"] == pytest.approx([0.0, 0.1])
    _, crop = score_trajectories(trajs, 2, "dtpo", theta=0.2, w_crop=0.1, w_area=0.2)
    assert crop["area"] == pytest.approx([0.25, 0.25]) and crop["tool"] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="area_from"):
        score_trajectories(trajs, 2, "dtpo", area_from="box")


def test_dtpo_recipe_follows_adaptvision():
    """The DTPO recipe's settings are AdaptVision's: rejection sampling on the total reward (run_adaptvision.sh:
    :85 trainer.rejection_sample=True), the official format regex, the raw-box area, first view <= 2048*2048 and
    >= 4*28*28 (multimodal_dataset.py:125), crops in [4*28*28, 3840*3840] (function_tools.py:114), no small-box
    expansion, LANCZOS; clip 0.2/0.24, entropy 0.001, tool_weight (lambda) 0.3, alpha 0.5 (run_adaptvision.sh)."""
    cfg = load_config("recipes/dtpo.yaml")
    r, a, ro = cfg.reward, cfg.algo, cfg.rollout
    assert (a.dynamic_sampling, a.filter_metric, r.area_from) == (True, "total", "raw")
    # its rewards are written as parts (vlmrl.rewards.compose): the format part is the official regex
    assert [(p.name, p.weight) for p in r.parts] == [("dtpo_accuracy", 1.0), ("format_official", 0.5), ("dtpo_tool", 1.0)]
    assert (ro.first_view_min_pixels, ro.first_view_max_pixels) == (4 * 28 * 28, 2048 * 2048)
    assert (ro.crop_min_pixels, ro.crop_max_pixels, ro.crop_min_box, ro.resample) == (
        4 * 28 * 28, 3840 * 3840, 0, "lanczos")
    assert (a.clip_low, a.clip_high, a.entropy_coef, a.tool_weight, a.alpha) == (0.2, 0.24, 0.001, 0.3, 0.5)
    defaults = load_config(None)  # vlmrl's documented choices stay the defaults elsewhere
    assert (defaults.rollout.crop_min_pixels, defaults.rollout.crop_min_box, defaults.rollout.resample,
            defaults.reward.format_style, defaults.reward.area_from) == (256 * 28 * 28, 28.0, "bicubic", "strict", "crop")
