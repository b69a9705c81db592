"""Composed rewards as advantages (vlmrl.algos.compose): both aggregations against hand-computed groups, unequal
groups, Dr.GRPO's variant, the variance shares, and a part with 100x the variance of another."""

import math
import statistics

import pytest
import torch

from vlmrl.algos import (
    composed_advantages,
    dtpo_advantages,
    dtpo_mix,
    grpo_advantages,
    part_contributions,
    part_group_std,
    signal_group_std,
    variance_shares,
)

EPS = 1e-6


def test_sum_then_normalize_is_grpo_of_the_weighted_sum():
    """One group of 4, parts accuracy and format with weights 1 and 0.5: total [1, .5, 1.5, 0], mean .75,
    unbiased std sqrt(1.25 / 3); the contributions split (total - mean) / std into w_k (r_k - mean_k) / std."""
    parts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    std = math.sqrt((0.25 ** 2 * 2 + 0.75 ** 2 * 2) / 3)
    expected = [0.25 / std, -0.25 / std, 0.75 / std, -0.75 / std]
    adv = composed_advantages(parts, [1.0, 0.5], 4, "sum_then_normalize")
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(adv, grpo_advantages(torch.tensor([1.0, 0.5, 1.5, 0.0]), 4))
    c = part_contributions(parts, [1.0, 0.5], 4, "sum_then_normalize")
    assert c[:, 0].tolist() == pytest.approx([0.5 / std, -0.5 / std, 0.5 / std, -0.5 / std], abs=1e-5)
    assert c[:, 1].tolist() == pytest.approx([-0.25 / std, 0.25 / std, 0.25 / std, -0.25 / std], abs=1e-5)
    assert c.sum(dim=1).tolist() == pytest.approx(adv.tolist(), abs=1e-6)
    # Dr.GRPO: no division
    c0 = part_contributions(parts, [1.0, 0.5], 4, "sum_then_normalize", scale="none")
    assert c0.sum(dim=1).tolist() == pytest.approx([0.25, -0.25, 0.75, -0.75], abs=1e-6)


def test_normalize_then_sum_hand_computed_unequal_groups():
    """Groups of 2 and 3 (ids 7 and 3, interleaved). Part 1 (accuracy): [1, 0] and [1, 1, 0]; part 2 (a length in
    words): [10, 30] and [20, 20, 50]; weights 1 and 0.5. Per group z-scores (unbiased std):
    z1 = [.7071, -.7071] and [.5774, .5774, -1.1547]; z2 = [-.7071, .7071] and [-.5774, -.5774, 1.1547];
    s = z1 + .5 z2 = [.3536, -.3536] and [.2887, .2887, -.5774]; batch mean 0, unbiased std sqrt(.75 / 4) = .4330;
    advantages s / .4330 = [sqrt(2/3), -sqrt(2/3)] and [2/3, 2/3, -4/3] (GDPO: NVlabs/GDPO
    trl-GDPO/trl-0.18.0-gdpo/trl/trainer/grpo_trainer.py lines 1229-1245, TRL trl/trainer/grpo_trainer.py
    lines 2710-2716: per-reward group z-score, weighted sum, batch normalisation)."""
    ids = torch.tensor([7, 3, 7, 3, 3])  # rows 0, 2 are group 7; rows 1, 3, 4 group 3
    acc = {0: 1.0, 2: 0.0, 1: 1.0, 3: 1.0, 4: 0.0}
    length = {0: 10.0, 2: 30.0, 1: 20.0, 3: 20.0, 4: 50.0}
    parts = torch.tensor([[acc[i], length[i]] for i in range(5)])

    def z(values):
        m, s = statistics.mean(values), statistics.stdev(values)
        return [(v - m) / (s + EPS) for v in values]

    z1 = dict(zip([0, 2], z([1.0, 0.0]))) | dict(zip([1, 3, 4], z([1.0, 1.0, 0.0])))
    z2 = dict(zip([0, 2], z([10.0, 30.0]))) | dict(zip([1, 3, 4], z([20.0, 20.0, 50.0])))
    s = [z1[i] + 0.5 * z2[i] for i in range(5)]
    m, sd = statistics.mean(s), statistics.stdev(s)
    expected = [(v - m) / (sd + EPS) for v in s]
    adv = composed_advantages(parts, [1.0, 0.5], ids, "normalize_then_sum")
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    r = math.sqrt(2 / 3)
    assert adv.tolist() == pytest.approx([r, 2 / 3, -r, 2 / 3, -4 / 3], abs=1e-4)
    c = part_contributions(parts, [1.0, 0.5], ids, "normalize_then_sum")
    assert c.sum(dim=1).tolist() == pytest.approx(adv.tolist(), abs=1e-6)
    assert c[:, 1].tolist() == pytest.approx([0.5 * z2[i] / sd for i in range(5)], abs=1e-5)
    # the same rows as consecutive blocks of equal size give the same per-row values (groups by id, not position)
    assert part_group_std(parts, ids).tolist() == pytest.approx(
        [(statistics.stdev([1.0, 0.0]) + statistics.stdev([1.0, 1.0, 0.0])) / 2,
         (statistics.stdev([10.0, 30.0]) + statistics.stdev([20.0, 20.0, 50.0])) / 2], abs=1e-5)


def test_normalize_then_sum_dr_grpo_divides_by_a_batch_std_per_part():
    """Dr.GRPO (scale="none"): groups [0, 0, 1, 1]; part 1 [1, 0, 1, 1] centres to [.5, -.5, 0, 0] (batch std
    sqrt(.5 / 3)); part 2 [0, 4, 2, 6] centres to [-2, 2, -2, 2] (batch std sqrt(16 / 3)); weights 1, 1; then the
    sum's batch normalisation. No group's own std is used, so group 1 (constant part 1) is not up-weighted."""
    parts = torch.tensor([[1.0, 0.0], [0.0, 4.0], [1.0, 2.0], [1.0, 6.0]])
    c1 = [x / (math.sqrt(0.5 / 3) + EPS) for x in (0.5, -0.5, 0.0, 0.0)]
    c2 = [x / (math.sqrt(16 / 3) + EPS) for x in (-2.0, 2.0, -2.0, 2.0)]
    s = [a + b for a, b in zip(c1, c2)]
    m, sd = statistics.mean(s), statistics.stdev(s)
    adv = composed_advantages(parts, [1.0, 1.0], 2, "normalize_then_sum", scale="none")
    assert adv.tolist() == pytest.approx([(v - m) / (sd + EPS) for v in s], abs=1e-5)
    assert adv.tolist() == pytest.approx([0.4687, -0.4687, -1.1315, 1.1315], abs=1e-3)


def test_constant_groups_rows_and_errors():
    parts = torch.tensor([[1.0, 3.0], [1.0, 3.0], [0.0, 1.0], [1.0, 2.0]])
    adv = composed_advantages(parts, [1.0, 1.0], 2, "normalize_then_sum")
    assert adv[:2].tolist() == [0.0, 0.0]  # every part constant in group 0: no advantage, never NaN
    assert not torch.isnan(adv).any()
    # batch statistics over the training rows only: rows 0, 1 left out gives the same values on rows 2, 3
    only = composed_advantages(parts, [1.0, 1.0], 2, "normalize_then_sum", rows=torch.tensor([False, False, True, True]))
    assert only[2:].tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)
    assert composed_advantages(parts[:0], [1.0, 1.0], 2, "normalize_then_sum").shape == (0,)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        composed_advantages(parts, [1.0, 1.0], 2, "sum")
    with pytest.raises(ValueError, match="one weight per part"):
        composed_advantages(parts, [1.0], 2, "normalize_then_sum")
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        composed_advantages(parts[:, 0], [1.0], 2)


def test_variance_shares_hand_computed():
    c = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # A = [1, -1, 1, -1]
    assert variance_shares(c).tolist() == pytest.approx([0.5, 0.5])
    anti = torch.tensor([[2.0, -1.0], [-2.0, 1.0]])  # A = [1, -1]: Cov(c1, A) = 4 / 1, Var(A) = 2 / 1
    assert variance_shares(anti).tolist() == pytest.approx([2.0, -1.0])
    assert torch.isnan(variance_shares(torch.zeros(3, 2))).all()


def test_signal_std_sees_a_varying_part_behind_a_constant_total():
    """Parts that cancel in the sum: the total is constant (sum_then_normalize: no signal, DAPO drops the group),
    but each part varies, so normalize_then_sum has a signal once weights differ."""
    parts = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert signal_group_std(parts, [1.0, 0.5], 2, "sum_then_normalize").tolist() == [0.0]
    assert signal_group_std(parts, [1.0, 0.5], 2, "normalize_then_sum").tolist() == pytest.approx([math.sqrt(2)])
    assert signal_group_std(parts, [1.0, 0.0], 2, "normalize_then_sum").tolist() == pytest.approx([math.sqrt(0.5)])
    assert composed_advantages(parts, [1.0, 0.5], 2, "normalize_then_sum").abs().sum() > 0


def test_a_part_with_100x_the_variance_no_longer_dominates():
    """Accuracy in {0, 1} and a noisy part (e.g. a length score) whose variance is ~100x accuracy's, equal weights,
    64 groups of 8 (and the same with groups of 3 to 12). Summed first, the noisy part makes ~99% of the advantage
    variance and the advantage barely follows accuracy; normalised per part first, each makes about half."""
    g = torch.Generator().manual_seed(0)
    for sizes in ([8] * 64, [3 + (k % 10) for k in range(64)]):
        ids = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
        n = len(ids)
        acc = (torch.rand(n, generator=g) < 0.5).float()
        noise = 5.0 * torch.randn(n, generator=g)  # std 5 vs accuracy's 0.5: variance x100
        parts = torch.stack([acc, noise], dim=1)
        assert noise.var() / acc.var() == pytest.approx(100, rel=0.3)
        shares = {}
        for agg in ("sum_then_normalize", "normalize_then_sum"):
            c = part_contributions(parts, [1.0, 1.0], ids, agg)
            shares[agg] = variance_shares(c).tolist()
            adv = composed_advantages(parts, [1.0, 1.0], ids, agg)
            acc_c = c[:, 0]
            keep = acc_c != 0
            agree = ((adv[keep] > 0) == (acc_c[keep] > 0)).float().mean().item()
            shares[agg].append(agree)
        acc_sum, noise_sum, agree_sum = shares["sum_then_normalize"]
        acc_nts, noise_nts, agree_nts = shares["normalize_then_sum"]
        assert noise_sum > 0.95 and acc_sum < 0.05, shares
        assert 0.35 < acc_nts < 0.65 and 0.35 < noise_nts < 0.65, shares
        assert agree_nts > agree_sum + 0.1, shares  # the advantage's sign follows accuracy far more often


def test_dtpo_mix_is_dtpo_advantages_of_given_advantages():
    turn_ids = torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 0, 0, -1]])
    mask = (turn_ids >= 0).long()
    oc, tool = torch.tensor([1.0, 0.0]), torch.tensor([0.1, 0.0])
    full = dtpo_advantages(oc, tool, turn_ids, mask, 2, tool_weight=0.3)
    mixed = dtpo_mix(grpo_advantages(oc, 2), grpo_advantages(tool, 2), turn_ids, mask, 0.3)
    assert torch.equal(full, mixed)
