"""DTPO rewards: outcome reward with the tool discount and the balance rule, tool reward and crop checks."""

import math

import pytest
import torch

from vlmrl.algos import dtpo_advantages
from vlmrl.rewards import box_coverage, crop_area_fraction, crop_coverage, dtpo_group_rewards, dtpo_rewards, judge_crop


def test_outcome_and_tool_rewards_hand_group():
    # t0 direct correct; t1, t2 tool correct crop ok (areas .2, .4); t3 tool wrong; t4 tool correct crop not ok
    acc = [1, 1, 1, 0, 1]
    fmt = [1, 1, 0, 1, 1]
    called = [False, True, True, True, True]
    crop_ok = [0, 1, 1, 1, 0]
    area = [0.0, 0.2, 0.4, 0.9, 0.5]
    out = dtpo_rewards(acc, fmt, called, crop_ok, area, groups=5)
    # r = 1 direct correct / 4 correct = 0.25 >= theta 0.2: no balance, the direct answer keeps 1.0
    assert out["outcome"] == pytest.approx([1.5, 1.4, 0.9, 0.5, 1.4])
    assert out["balance_applied"] == [0.0] * 5
    assert out["direct_ratio"] == pytest.approx([0.25] * 5)
    # mu_a over correct & crop-ok tool rows (t1, t2) = 0.3; t2: clip(0.4/0.3 - 1, 0, 1) = 1/3
    assert out["area_penalty"] == pytest.approx([0, 0, 1 / 3, 0, 0])
    assert out["tool"] == pytest.approx([0.0, 0.1, 0.1 - 0.2 / 3, 0.1, 0.0])


def test_balance_rule_and_area_cap():
    # 1 direct correct among 6 correct: r = 1/6 in (0, 0.2) -> the direct answer also gets 0.9
    acc = [1] * 6 + [0, 0]
    called = [False] + [True] * 5 + [False, True]
    crop_ok = [0] + [1] * 5 + [0, 1]
    area = [0, 0.1, 0.1, 0.1, 0.1, 0.6, 0, 0.05]
    out = dtpo_rewards(acc, [1] * 8, called, crop_ok, area, groups=8)
    assert out["outcome"] == pytest.approx([1.4] * 6 + [0.5, 0.5])
    assert out["balance_applied"] == [1.0] + [0.0] * 7
    # mu_a = (4 * 0.1 + 0.6) / 5 = 0.2; t5: 0.6 / 0.2 - 1 = 2 -> clipped to 1; t7 wrong: no area term
    assert out["tool"] == pytest.approx([0, 0.1, 0.1, 0.1, 0.1, 0.1 - 0.2, 0, 0.1])


@pytest.mark.parametrize("acc, called, direct_reward", [
    ([1, 1, 1, 1], [False] * 4, 1.0),  # r = 1: all direct, no discount
    ([1, 0, 0, 0], [False, True, True, True], 1.0),  # r = 1
    ([0, 1, 1, 1], [False, True, True, True], 0.0),  # r = 0: no correct direct answer
])
def test_balance_rule_edges(acc, called, direct_reward):
    out = dtpo_rewards(acc, [0] * 4, called, [0] * 4, [0] * 4, groups=4)
    assert out["outcome"][0] == pytest.approx(direct_reward)
    assert all(out["outcome"][i] == pytest.approx(0.9 * acc[i]) for i in range(4) if called[i])


def test_groups_are_independent_and_shapes_checked():
    a = dtpo_rewards([1, 1], [1, 1], [False, True], [0, 1], [0, 0.5], 2)
    b = dtpo_rewards([1, 1, 1, 1], [1, 1, 1, 1], [False, True, True, True], [0, 1, 1, 1], [0, 0.5, 0.1, 0.3], 2)
    assert b["outcome"][:2] == a["outcome"] and b["tool"][:2] == a["tool"]
    with pytest.raises(ValueError):
        dtpo_rewards([1, 1, 1], [1, 1, 1], [True] * 3, [1] * 3, [0.1] * 3, 2)


def test_groups_by_id_of_three_two_and_one():
    # interleaved rows: group 5 = rows 0, 2, 5; group 2 = rows 1, 4; group 7 = row 3
    ids = [5, 2, 5, 7, 2, 5]
    out = dtpo_rewards(acc=[1, 1, 1, 1, 1, 0], fmt=[1, 1, 1, 1, 0, 1],
                       tool_called=[True, True, False, False, True, True], crop_ok=[1, 1, 0, 0, 1, 1],
                       area=[0.2, 0.1, 0.0, 0.0, 0.3, 0.4], groups=ids)
    # group 5: correct rows 0 (tool) and 2 (direct): r = 1/2, no balance; mu_a over row 0 only = 0.2;
    #   row 5 is wrong, so no area term. group 2: r = 0; mu_a = (0.1 + 0.3) / 2 = 0.2, row 4: 0.3/0.2 - 1 = 0.5.
    #   group 7: one correct direct answer, r = 1.
    assert out["outcome"] == pytest.approx([1.4, 1.4, 1.5, 1.5, 0.9, 0.5])
    assert out["area_penalty"] == pytest.approx([0, 0, 0, 0, 0.5, 0])
    assert out["tool"] == pytest.approx([0.1, 0.1, 0.0, 0.0, 0.1 - 0.2 * 0.5, 0.1])
    assert out["direct_ratio"] == pytest.approx([0.5, 0.0, 0.5, 1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="one id per row"):
        dtpo_rewards([1, 1], [1, 1], [True, True], [1, 1], [0.1, 0.1], groups=[0])


def test_coverage_and_area():
    assert box_coverage([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(0.25)
    assert box_coverage([0, 0, 10, 10], [0, 0, 10, 20]) == pytest.approx(0.5)
    assert box_coverage([20, 20, 30, 30], [0, 0, 10, 10]) == 0.0
    assert box_coverage([0, 0, 10, 10], [3, 3, 3, 3]) == 0.0  # an empty gt box
    assert crop_coverage([[0, 0, 10, 10]], [[5, 5, 15, 15], [0, 0, 10, 20]]) == pytest.approx(0.5)  # max
    assert crop_area_fraction([[0, 0, 50, 40], [0, 0, 10, 10]], (100, 200)) == pytest.approx(2100 / 20000)


def test_judge_crop_rules():
    sample = {"meta": {"gt_boxes": [[0, 0, 10, 20]]}}
    assert judge_crop([[0, 0, 10, 10]], sample) == (1.0, True)  # coverage 0.5 >= 0.5
    assert judge_crop([[0, 0, 10, 9]], sample) == (0.0, True)
    assert judge_crop([], sample) == (0.0, True)
    no_boxes = {"meta": {}}
    assert judge_crop([[0, 0, 1, 1]], no_boxes) == (0.0, False)  # unjudged
    seen = []

    def judge(sample, crops):
        seen.append(crops)
        return True

    assert judge_crop([[0, 0, 1, 1]], no_boxes, judge) == (1.0, True)
    assert seen == [[[0, 0, 1, 1]]]
    assert judge_crop([[0, 0, 1, 1]], no_boxes, lambda s, c: None) == (0.0, False)


def test_dtpo_group_rewards_end_to_end_and_into_advantages():
    call = '<think>zoom</think><tool_call>{"name": "crop", "arguments": {"bbox_2d": [0, 0, 50, 50]}}</tool_call>'
    good, bad = "<think>ok</think><answer>B</answer>", "<think>ok</think><answer>C</answer>"
    base = {"answer": "B", "answer_type": "choice", "choices": ["a", "b", "c"],
            "meta": {"gt_boxes": [[10, 10, 30, 30]]}}

    def item(turns, crops):
        sample = dict(base, turns=turns, tool_calls=len(turns) - 1)
        return {"response": turns[-1], "sample": sample, "crops": crops, "image_size": (100, 100)}

    items = [
        item([good], []),                            # direct, correct
        item([call, good], [[0, 0, 50, 50]]),        # tool, correct, covers the gt box, area .25
        item([call, bad], [[0, 0, 50, 50]]),         # tool, wrong
        item([call, good], [[60, 60, 100, 100]]),    # tool, correct, misses the gt box
    ]
    out = dtpo_group_rewards(items, groups=4)
    assert out["accuracy"] == [1.0, 1.0, 0.0, 1.0] and out["format"] == [1.0] * 4
    assert out["crop_ok"] == [0.0, 1.0, 1.0, 0.0] and out["unjudged"] == [0.0] * 4
    assert out["area"] == pytest.approx([0.0, 0.25, 0.25, 0.16])
    assert out["outcome"] == pytest.approx([1.5, 1.4, 0.5, 1.4])  # r = 1/3: no balance
    assert out["tool"] == pytest.approx([0.0, 0.1, 0.1, 0.0])  # mu_a = 0.25 (one row): no penalty

    unboxed = [dict(it, sample=dict(it["sample"], meta={})) for it in items]
    assert dtpo_group_rewards(unboxed, 4)["unjudged"] == [0.0, 1.0, 1.0, 1.0]

    # advantages by hand: R_oc = [1.5, 1.4, 0.5, 1.4], mean 1.2, unbiased std sqrt(0.66 / 3) = 0.46904;
    # R_tool = [0, .1, .1, 0], std sqrt(0.01 / 3) = 0.057735, z = -+0.86603. Row 0 answers directly (one turn,
    # A_oc + 0.3 A_tool); rows 1-3 crop in turn 0 (A_oc + 0.3 A_tool) and answer in turn 1 (A_oc alone).
    turns = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    adv = dtpo_advantages(torch.tensor(out["outcome"], dtype=torch.float64),
                          torch.tensor(out["tool"], dtype=torch.float64), turns, torch.ones(4, 4), groups=4)
    sd_oc, sd_tool = math.sqrt(0.66 / 3) + 1e-6, math.sqrt(0.01 / 3) + 1e-6
    a_oc = [0.3 / sd_oc, 0.2 / sd_oc, -0.7 / sd_oc, 0.2 / sd_oc]
    a_tool = [-0.05 / sd_tool, 0.05 / sd_tool, 0.05 / sd_tool, -0.05 / sd_tool]
    assert a_oc[0] == pytest.approx(0.63960, abs=1e-5) and a_tool[1] == pytest.approx(0.86601, abs=1e-5)
    for i in range(4):
        first, final = a_oc[i] + 0.3 * a_tool[i], a_oc[i] if i else a_oc[i] + 0.3 * a_tool[i]
        assert adv[i].tolist() == pytest.approx([first, first, final, final], abs=1e-9)
