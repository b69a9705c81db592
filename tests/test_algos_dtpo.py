"""DTPO: per-token advantages over mixed direct / tool-call groups, and the turn-split loss."""

import math

import pytest
import torch

from vlmrl.algos import dtpo_advantages, dtpo_loss, final_turn_mask

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# One group of 4, T = 8. Legend: P prompt, O observation (mask 0), Tk assistant turn k, _ padding.
# row 0: direct answer           P  P  T0 T0 T0 _  _  _
# row 1: crop, then answer       P  T0 T0 O  O  T1 T1 T1
# row 2: crop, crop, answer      T0 O  T1 O  T2 T2 _  _     (observation/padding ids are arbitrary)
# row 3: direct answer           P  T0 T0 T0 T0 T0 T0 T0
MASK = t([[0, 0, 1, 1, 1, 0, 0, 0],
          [0, 1, 1, 0, 0, 1, 1, 1],
          [1, 0, 1, 0, 1, 1, 0, 0],
          [0, 1, 1, 1, 1, 1, 1, 1]])
TURNS = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0],
                      [0, 0, 0, 1, 1, 1, 1, 1],
                      [0, 9, 1, -1, 2, 2, 7, 7],
                      [0, 0, 0, 0, 0, 0, 0, 0]])
R_OC = t([1.0, 0.0, 0.0, 0.0])  # z-scored: 1.5, -0.5, -0.5, -0.5 (mean 0.25, unbiased std 0.5)
R_TOOL = t([0.0, 0.1, 0.1, 0.0])  # z-scored: -s, s, s, -s with s = 0.05 / sqrt(0.01 / 3) = sqrt(3) / 2
EPS = 1e-6


def test_dtpo_advantages_every_token():
    s = math.sqrt(3) / 2
    a_oc = [0.75 / (0.5 + EPS), -0.25 / (0.5 + EPS), -0.25 / (0.5 + EPS), -0.25 / (0.5 + EPS)]
    a_tool = [-0.05 / (0.05 / s + EPS), 0.05 / (0.05 / s + EPS), 0.05 / (0.05 / s + EPS), -0.05 / (0.05 / s + EPS)]
    both = [a_oc[i] + 0.3 * a_tool[i] for i in range(4)]
    expected = t([
        [0, 0, both[0], both[0], both[0], 0, 0, 0],                      # direct: first turn gets both
        [0, both[1], both[1], 0, 0, a_oc[1], a_oc[1], a_oc[1]],         # tool turn both, answer A_oc
        [both[2], 0, both[2], 0, a_oc[2], a_oc[2], 0, 0],               # two tool turns, then answer
        [0] + [both[3]] * 7,
    ])
    adv = dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, groups=4)
    assert adv.shape == (4, 8)
    assert torch.allclose(adv, expected, atol=1e-9)
    assert a_tool[1] == pytest.approx(s, rel=1e-4)


def test_dtpo_advantages_explicit_tool_call_turns():
    """AdaptVision compute_DTPO_advantage (verl/trainer/ppo/core_algos.py:224-232 @ 9b7d57c0df97): turn 1 gets
    lambda * A_turn + A_outcome, turn 2 (the final turn) A_outcome alone, whatever it ends in. Row 1 hit the turn cap
    in a second tool call: its final turn still gets A_oc = -0.25 / (0.5 + eps) (no tool boost). Row 2's middle turn
    does not end in a tool call here: it gets A_oc alone too."""
    tool_turns = torch.tensor([[False, False, False], [True, True, False], [True, False, False], [False, False, False]])
    adv = dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, 4, tool_call_turns=tool_turns)
    a_oc = -0.25 / (0.5 + EPS)
    both = a_oc + 0.3 * 0.05 / (0.05 / (math.sqrt(3) / 2) + EPS)
    assert adv[1].tolist() == pytest.approx([0, both, both, 0, 0, a_oc, a_oc, a_oc])
    assert adv[2].tolist() == pytest.approx([both, 0, a_oc, 0, a_oc, a_oc, 0, 0])
    default = dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, 4)
    assert torch.equal(adv[[0, 3]], default[[0, 3]])
    with pytest.raises(ValueError):
        dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, 4, tool_call_turns=tool_turns[:, :2])  # turn 2 out of range


def test_dtpo_advantages_tool_weight_and_identical_rewards():
    adv = dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, 4, tool_weight=0.0)
    assert torch.allclose(adv[0, 2], t(0.75 / (0.5 + EPS)))
    same = dtpo_advantages(t([1.0] * 4), t([0.1] * 4), TURNS, MASK, 4)
    assert torch.equal(same, torch.zeros_like(same))
    with pytest.raises(ValueError):
        dtpo_advantages(R_OC[:3], R_TOOL[:3], TURNS[:3], MASK[:3], 2)


def test_final_turn_mask_from_turn_ids():
    expected = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 0, 0],
                             [0, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(final_turn_mask(TURNS, MASK), expected)


def test_dtpo_loss_hand_case():
    # ratio 1 (logp == old) so the per-token loss is -A
    logp = t([[-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]]).requires_grad_()
    old = logp.detach().clone()
    mask = t([[1, 1, 0, 0], [1, 0, 1, 1]])
    turn_ids = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
    adv = t([[1.0, 1.0, 0.0, 0.0], [2.0, 0.0, 3.0, 3.0]])
    # non-final tokens: row 1 token 0 -> mean -2; final tokens: -1, -1, -3, -3 -> mean -2
    loss, m = dtpo_loss(logp, old, adv, mask, turn_ids=turn_ids)
    assert loss.item() == pytest.approx(0.5 * -2.0 + -2.0)
    assert float(m["loss_non_final"]) == pytest.approx(-2.0) and float(m["loss_final"]) == pytest.approx(-2.0)
    loss.backward()
    assert torch.allclose(logp.grad, t([[-1 / 4, -1 / 4, 0, 0], [0.5 * -2.0, 0, -3 / 4, -3 / 4]]))
    # an explicit final-turn mask is used as given: with row 1 token 0 also called final, non-final tokens are none
    # and the final mean is (-1 - 1 - 2 - 3 - 3) / 5 = -2.0; alpha 0.3 then has nothing to weigh
    explicit, m2 = dtpo_loss(logp.detach(), old, adv, mask, final_turn_mask=mask.bool(), alpha=0.3)
    assert explicit.item() == pytest.approx(-2.0) and float(m2["loss_non_final"]) == 0.0
    # only row 1's last two tokens final: non-final -1, -1, -2 (mean -4/3), final -3, -3 (mean -3)
    split, _ = dtpo_loss(logp.detach(), old, adv, mask, final_turn_mask=t([[0, 0, 0, 0], [0, 0, 1, 1]]), alpha=0.3)
    assert split.item() == pytest.approx(0.3 * (-4 / 3) + -3.0)


def test_dtpo_loss_all_direct_has_no_non_final_term_and_clips():
    logp = torch.log(t([[1.5, 0.5]])).requires_grad_()
    old = torch.zeros(1, 2, dtype=D)
    loss, m = dtpo_loss(logp, old, t([1.0]), t([[1, 1]]), turn_ids=torch.zeros(1, 2, dtype=torch.long))
    # clip 0.2 / 0.24: ratio 1.5 -> 1.24; ratio 0.5 unclipped for A > 0
    assert loss.item() == pytest.approx(-(1.24 + 0.5) / 2)
    assert float(m["loss_non_final"]) == 0.0
    assert float(m["clip_frac_high"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dtpo_loss(logp, old, t([1.0]), t([[1, 1]]))


def test_dtpo_advantages_by_group_id_groups_of_three_and_one():
    # ids: rows 0, 1, 3 form group 2; row 2 is alone (group 5), so its advantages are all 0
    # group 2: R_OC (1, 0, 0): mean 1/3, unbiased std sqrt(1/3); R_TOOL (0, 0.1, 0): mean 1/30, std sqrt(3)/30
    sd = math.sqrt(1 / 3)
    a_oc = {0: (2 / 3) / sd, 1: -(1 / 3) / sd, 3: -(1 / 3) / sd}
    a_tool = {0: -1 / math.sqrt(3), 1: 2 / math.sqrt(3), 3: -1 / math.sqrt(3)}
    both = {i: a_oc[i] + 0.3 * a_tool[i] for i in a_oc}
    expected = t([
        [0, 0, both[0], both[0], both[0], 0, 0, 0],
        [0, both[1], both[1], 0, 0, a_oc[1], a_oc[1], a_oc[1]],
        [0] * 8,
        [0] + [both[3]] * 7,
    ])
    adv = dtpo_advantages(R_OC, R_TOOL, TURNS, MASK, torch.tensor([2, 2, 5, 2]), eps=0.0)
    assert torch.allclose(adv, expected, atol=1e-9)
