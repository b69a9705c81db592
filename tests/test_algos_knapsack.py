"""Knapsack RL budget allocation (vlmrl/algos/knapsack.py) against hand-computed cases, a brute force, and the
official rules of github:liziniu/KnapsackRL (snapshot ca5d5f5), `verl/trainer/ppo/exploration_utils.py` (EU:<line>)
and `verl/utils/dataset/rl_dataset.py` (RD:<line>)."""

import itertools
import math
import random

import pytest

from vlmrl.algos.knapsack import allocate, allocate_info, cost, success_rate, value


def test_value_hand_computed():
    """EU:365-372: (1 - p^N - (1-p)^N) * p * (1-p)^2."""
    assert value(2, 0.5) == 0.5 * 0.25 * 0.5  # (1 - 1/4 - 1/4) * 1/2 * 1/4 = 1/16
    assert value(3, 0.5) == pytest.approx(0.75 * 0.125)
    assert value(4, 0.2) == pytest.approx((1 - 0.2 ** 4 - 0.8 ** 4) * 0.2 * 0.64)
    assert value(8, 0.0) == 0.0 and value(8, 1.0) == 0.0  # all-failed / all-solved prompts: no value
    assert value(1, 0.3) == 0.0 and value(0, 0.3) == 0.0  # one rollout never has both outcomes
    # increasing in N with decreasing steps p^N (1-p) + (1-p)^N p (times p (1-p)^2): concave
    for p in (0.1, 0.5, 0.9):
        steps = [value(n + 1, p) - value(n, p) for n in range(1, 12)]
        assert all(s > 0 for s in steps) and all(a > b for a, b in zip(steps, steps[1:]))
    with pytest.raises(ValueError, match="p must be in"):
        value(4, 1.5)
    with pytest.raises(ValueError, match="N must be"):
        value(-1, 0.5)


def test_cost_is_the_official_probability_estimate():
    """EU:83: log(1 - alpha) / log(max(p, 1 - p))."""
    assert cost(0.5) == pytest.approx(math.log(0.1) / math.log(0.5))  # 3.32
    assert cost(0.9) == pytest.approx(math.log(0.1) / math.log(0.9)) == pytest.approx(cost(0.1))  # 21.85


def test_three_prompts_budget_twelve_by_hand():
    """p = 0.5, 0.2, 0.9, total 12, N in [2, 8]: the 6 rollouts above n_low go one by one to the largest marginal
    gain (optimal as value is concave in N; marginal gains (p^N (1-p) + (1-p)^N p) p (1-p)^2):
    0.5: N3 .03125, N4 .015625, N5 .0078; 0.2: N3 .02048, N4 .01393, N5 .01065, N6 .00842, N7 .00672;
    0.9: N3 .00081. Order: .03125(a) .02048(b) .015625(a) .01393(b) .01065(b) .00842(b) -> [4, 6, 2]."""
    n = allocate([0.5, 0.2, 0.9], 12, n_low=2, n_up=8)
    assert n == [4, 6, 2]
    assert sum(value(k, p) for k, p in zip(n, [0.5, 0.2, 0.9])) == pytest.approx(0.109375 + 0.0944365 + 0.00162,
                                                                                 abs=1e-6)
    # with n_up = 5 the 0.2 prompt stops at 5 and the 0.5 prompt takes the next best step (N5 .0078 > 0.9's N3)
    assert allocate([0.5, 0.2, 0.9], 12, n_low=2, n_up=5) == [5, 5, 2]


def test_ties_go_to_the_earlier_prompt():
    """Two equal prompts and an odd extra: the official DP keeps the first (smallest) optimal option with a strict
    `>` (EU:356-381) and backtracks from the last prompt (EU:390-396), so the later prompt gets fewer rollouts."""
    assert allocate([0.5, 0.5], 7, n_low=2, n_up=8) == [4, 3]
    assert allocate([0.3, 0.3, 0.3], 10, n_low=2, n_up=8) == [4, 3, 3]


def test_fallback_rules():
    """EU:75-167 on hand cases (n_low = n_zero = n_one = 2, total = 4 per prompt)."""
    # no prompt with 0 < p < 1: the rest to the all-failed prompts, remainder first (EU:113-127)
    assert allocate([0.0, 1.0, 1.0], 12) == [8, 2, 2]
    assert allocate([1.0, 0.0, 0.0, 1.0], 16) == [2, 6, 6, 2]
    assert allocate([1.0, 0.0, 0.0], 13, n_default=4) == [2, 6, 5]
    # every prompt all-solved: the uniform allocation (EU:130-134)
    assert allocate([1.0, 1.0, 1.0], 12) == [4, 4, 4]
    # unseen prompts get the uniform share (EU:101-102) and count as all-failed in the fallback (EU:70, 116)
    assert allocate([None, 1.0], 8) == [6, 2]
    # excess budget: 0.5 needs int(cost) = 3 rollouts, the rest after the fixed shares is 16 - (4+2+2+2) = 6 > 3,
    # so 6 - 3 = 3 go to the all-failed and unseen prompts [2, 1] and the DP shares the 3 left (EU:138-167)
    n, info = allocate_info([0.0, 0.5, 1.0, None], 16)
    assert n == [4, 5, 2, 5] and info == {"fallback": True, "no_effective": False, "effective": 1}
    # without all-failed prompts the excess goes to the other non-(0 < p < 1) prompts (EU:154)
    assert allocate([1.0, 0.5], 12) == [7, 5]
    # fallback off: the DP takes it all; it stops every prompt at n_up, then shares the rest beyond it (EU:402-412)
    assert allocate([0.0, 0.5, 0.5], 24, n_up=8, fallback=False) == [2, 11, 11]
    # only prompts with 0 < p < 1 and a budget beyond their cost: no candidates (the official code divides by
    # zero, EU:156), the DP keeps the budget
    assert allocate([0.5, 0.5], 40, n_up=8) == [20, 20]
    # a prompt with p near 0/1 costs many rollouts, so no fallback: the DP gives the budget by value
    n, info = allocate_info([0.0, 0.05, 0.5], 12)
    assert not info["fallback"] and sum(n) == 12 and n[0] == 2


def test_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"p\[1\] must be None .* got 1.5"):
        allocate([0.5, 1.5], 8)
    with pytest.raises(ValueError, match="fixed shares need 12 rollouts .* total budget is 8"):
        allocate([0.5, 0.5, 0.5], 8, n_low=4)
    with pytest.raises(ValueError, match=r"n_up \(1\) must be >= n_low \(2\)"):
        allocate([0.5], 4, n_low=2, n_up=1)
    assert allocate([], 0) == []


def _brute(ps, total, lo, hi):
    best = -1.0
    for ns in itertools.product(range(lo, hi + 1), repeat=len(ps)):
        if sum(ns) == total:
            best = max(best, sum(value(n, p) for n, p in zip(ns, ps)))
    return best


def test_dp_matches_brute_force_on_random_small_cases():
    """Prompts with 0 < p < 1 and no fallback: the allocation's total value is the best of all N vectors in
    [n_low, n_up]^B summing to the budget (exhaustive search), and it respects the bounds."""
    rng = random.Random(0)
    for _ in range(150):
        b = rng.randint(1, 4)
        lo = rng.randint(1, 3)
        hi = rng.randint(lo, 8)
        total = rng.randint(b * lo, b * hi)
        ps = [rng.choice([rng.random(), rng.choice([0.1, 0.25, 0.5, 0.75, 0.9])]) for _ in range(b)]
        ps = [min(max(p, 0.01), 0.99) for p in ps]
        n = allocate(ps, total, lo, hi, fallback=False)
        assert sum(n) == total and all(lo <= k <= hi for k in n), (ps, total, lo, hi, n)
        got = sum(value(k, p) for k, p in zip(n, ps))
        assert got == pytest.approx(_brute(ps, total, lo, hi), rel=1e-12, abs=1e-15), (ps, total, lo, hi, n)


def test_mixed_random_cases_keep_the_budget_and_the_fixed_shares():
    rng = random.Random(1)
    for _ in range(200):
        b = rng.randint(1, 8)
        g = rng.randint(2, 8)
        ps = [rng.choice([None, 0.0, 1.0, round(rng.random(), 2) or 0.5]) for _ in range(b)]
        n, info = allocate_info(ps, b * g, 2, 16)
        assert sum(n) == b * g
        for k, p in zip(n, ps):
            if p == 1.0 and any(q is None or q == 0.0 for q in ps):
                assert k == 2  # all-solved prompts keep n_one while all-failed or unseen prompts take the rest
            if p is not None and 0 < p < 1:
                assert k >= 2


def test_success_rate_is_the_robust_epoch_estimate():
    """RD:179-194: the step's mean when it had >= window results, else the mean of the window most recent."""
    recent = [1.0] * 10 + [0.0] * 6 + [1.0, 0.0, 0.0, 0.0]  # the step's 4 results last
    assert success_rate(recent, [1.0, 0.0, 0.0, 0.0], window=16) == pytest.approx((6 + 1) / 16)
    assert success_rate([0.0] * 20, [1.0] * 16, window=16) == 1.0
    assert success_rate([1.0, 0.0], [1.0, 0.0], window=16) == 0.5
    with pytest.raises(ValueError):
        success_rate([1.0], [], window=16)
