"""Knapsack RL budget allocation (Li et al., 2025, "Knapsack RL: Unlocking Exploration of LLMs via Optimizing
Budget Allocation"): how many rollouts each prompt of a step gets, from its estimated success rate.

Pure functions (no state): `value`, `cost`, `success_rate`, `allocate` / `allocate_info`. The trainer side (the
per-prompt success-rate history, the `algo.budget` setting, checkpoints) is vlmrl/train/budget.py.

Official code: github:liziniu/KnapsackRL (snapshot ca5d5f5), `verl/trainer/ppo/exploration_utils.py`
(`sampling_budget_by_knapsack`, `solve_by_dp`; cited below as `EU:<line>`) and
`verl/utils/dataset/rl_dataset.py` (`update_sample_state`, `get_sample_state`; cited as `RD:<line>`); the
settings of `examples/knapsack_trainer/run_knapsack_grpo_7b.sh` are this module's defaults (min_n = 2,
negative_n = positive_n = 2, max_n = 128, reward_buffer_length = 16, min_buffer_length = 8, alpha 0.9).

The rule (`allocate`), prompt by prompt:
- no success rate yet (seen fewer than `min_seen` rollouts): `n_default` rollouts (the uniform share; EU:101-102);
- success rate 0 (all failed): `n_zero`; 1 (all solved): `n_one` (EU:91-96);
- 0 < p < 1: `n_low`, and the rest of the budget is shared among these prompts by dynamic programming, maximising
  sum_i value(N_i, p_i) with n_low <= N_i <= n_up and sum_i N_i = the budget (EU:170-180, 257-414);
- fallbacks: when no prompt has 0 < p < 1, the rest goes to the all-failed prompts in equal shares (EU:113-129),
  or, without any, every prompt gets the uniform share (EU:130-134); when the prompts with 0 < p < 1 need fewer
  rollouts than the rest of the budget (their `cost` summed, each capped at n_up), the excess goes to the
  all-failed prompts, or, without any, to the other prompts without 0 < p < 1 (EU:138-167); budget the DP cannot
  place (every prompt at n_up) is shared equally among the 0 < p < 1 prompts, beyond n_up (EU:383-412).
Equal shares put the remainder's extra rollout on the first prompts, in the step's order (EU:120-125, 156-161).
A prompt with no success rate yet counts as all-failed in the fallbacks, as in the official code (its success-rate
entry stays 0, EU:70, and the fallbacks test `success_rates == 0`, EU:116 and EU:148). DP ties go the official way:
the later prompt gets the fewest extra rollouts (options tried in increasing order with a strict `>`, EU:356-381,
then backtracking from the last prompt, EU:390-396).

Deviations from the official code, each deliberate:
- the DP maximises the paper's objective exactly: a prompt left at n_low counts value(n_low, p); the official DP
  scores "no extra rollouts" as 0 instead (EU:356-358 vs EU:365-372), which slightly favours giving every such
  prompt at least one extra rollout.
- when every prompt has 0 < p < 1 and the fallback would trigger, the official code divides by zero (EU:156: no
  candidates); here the fallback is skipped and the DP gets the whole budget.
- the budget left after the fixed shares must be >= 0 (the official code asserts at the end, EU:183): here a
  ValueError says which setting to change.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def value(n: int, p: float) -> float:
    """Value(N, p) = (1 - p^N - (1-p)^N) * p * (1-p)^2: the chance that N rollouts of a prompt with success rate p
    hold both a success and a failure (a non-zero GRPO gradient), times the paper's gradient-gain weight
    p (1-p)^2 (EU:365-372). 0 for p in {0, 1} and for N < 2 (N = 0 is special-cased: the formula would give
    -p (1-p)^2; the official code never evaluates N < min_n >= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"value: N must be an integer >= 0, got {n!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"value: p must be in [0, 1], got {p!r}")
    if n == 0:
        return 0.0
    q = 1.0 - p
    return (1.0 - p ** n - q ** n) * p * q * q


def cost(p: float, alpha: float = 0.9) -> float:
    """The official "probability" cost of a prompt with success rate 0 < p < 1: the number of rollouts after which
    both outcomes have been seen with probability about alpha, log(1 - alpha) / log(max(p, 1 - p)) (EU:80-84)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"cost: p must be in (0, 1), got {p!r}")
    return math.log(1.0 - alpha) / math.log(max(p, 1.0 - p))


def success_rate(recent: Sequence[float], last_step: Sequence[float], window: int = 16) -> float:
    """A prompt's success-rate estimate after a step (the official "robust epoch estimation", RD:179-194): the
    mean of that step's results when it had at least `window` of them, else the mean of the `window` most recent
    results (`recent`, oldest first, this step's last)."""
    if not last_step:
        raise ValueError("success_rate: the step gave no results for this prompt")
    if len(last_step) >= window:
        return float(np.mean(np.asarray(last_step, dtype=np.float64)))
    return float(np.mean(np.asarray(list(recent)[-window:], dtype=np.float64)))


def _equal_shares(amount: int, k: int) -> list[int]:
    """`amount` split into k shares, the remainder's +1 on the first ones (EU:120-125)."""
    base, rem = divmod(amount, k)
    return [base + (1 if j < rem else 0) for j in range(k)]


def _dp(ps: list[float], budget: int, n_low: int, n_up: int) -> list[int]:
    """Extra rollouts (0 .. n_up - n_low) per prompt, summing to min(budget, len * (n_up - n_low)), that maximise
    sum_i value(n_low + extra_i, p_i). Exact: dp[w] over budgets used so far, item by item (EU:257-400)."""
    k_max = n_up - n_low
    usable = min(budget, k_max * len(ps))  # every total in [0, len * k_max] is reachable (EU:383-386)
    if usable <= 0:
        return [0] * len(ps)
    dp = np.full(usable + 1, -np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(ps), usable + 1), dtype=np.int64)
    for i, p in enumerate(ps):
        gains = [value(n_low + k, p) for k in range(min(k_max, usable) + 1)]
        new = dp + gains[0]  # no extra rollouts: the first option tried (EU:355-358)
        ch = np.zeros(usable + 1, dtype=np.int64)
        for k in range(1, len(gains)):  # then k = 1, 2, ... with a strict ">" (EU:361-381)
            cand = dp[:-k] + gains[k]
            better = cand > new[k:]
            new[k:][better] = cand[better]
            ch[k:][better] = k
        dp, choice[i] = new, ch
    extra, w = [0] * len(ps), usable
    for i in range(len(ps) - 1, -1, -1):  # backtrack from the last prompt (EU:390-396)
        extra[i] = int(choice[i][w])
        w -= extra[i]
    assert w == 0, "knapsack DP backtracking did not end at budget 0"
    return extra


def allocate_info(p: Sequence[float | None], total: int, n_low: int = 2, n_up: int = 128, *,
                  n_default: int | None = None, n_zero: int | None = None, n_one: int | None = None,
                  alpha: float = 0.9, fallback: bool = True) -> tuple[list[int], dict]:
    """`allocate`, plus what happened: {"fallback": the excess-budget fallback ran (EU:144-167), "no_effective": no
    prompt had 0 < p < 1 (EU:113-134), "effective": how many prompts had 0 < p < 1}."""
    b = len(p)
    for name, x in (("total", total), ("n_low", n_low), ("n_up", n_up)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"allocate: {name} must be an integer >= 0, got {x!r}")
    if n_up < max(n_low, 1):
        raise ValueError(f"allocate: n_up ({n_up}) must be >= n_low ({n_low}) and >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"allocate: alpha must be in (0, 1), got {alpha!r}")
    if b == 0:
        if total:
            raise ValueError(f"allocate: a budget of {total} rollouts for no prompts")
        return [], {"fallback": False, "no_effective": True, "effective": 0}
    n_default = total // b if n_default is None else n_default
    n_zero = n_low if n_zero is None else n_zero
    n_one = n_low if n_one is None else n_one
    for name, x in (("n_default", n_default), ("n_zero", n_zero), ("n_one", n_one)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"allocate: {name} must be an integer >= 0, got {x!r}")
    for i, x in enumerate(p):
        if x is not None and not (isinstance(x, (int, float, np.floating)) and 0.0 <= float(x) <= 1.0):
            raise ValueError(f"allocate: p[{i}] must be None (not seen enough) or a success rate in [0, 1], got {x!r}")

    known = [x is not None for x in p]
    rate = [float(x) if x is not None else 0.0 for x in p]  # unseen prompts read as 0 in the fallbacks (EU:70)
    effective = [i for i in range(b) if known[i] and 0.0 < rate[i] < 1.0]
    zero_like = [i for i in range(b) if rate[i] == 0.0]  # all-failed and unseen prompts (EU:116, EU:148)
    budget = []
    for i in range(b):  # the fixed shares (EU:75-104)
        budget.append(n_default if not known[i] else n_zero if rate[i] == 0.0 else n_one if rate[i] == 1.0
                      else n_low)
    left = total - sum(budget)
    if left < 0:
        raise ValueError(
            f"allocate: the fixed shares need {sum(budget)} rollouts ({b} prompts: n_low={n_low} per prompt with "
            f"0 < p < 1, n_zero={n_zero} / n_one={n_one} per all-failed / all-solved prompt, n_default={n_default} "
            f"per prompt not seen enough) but the total budget is {total}: lower them or raise the budget")
    info = {"fallback": False, "no_effective": not effective, "effective": len(effective)}
    if not effective:
        if left > 0:
            if zero_like:  # EU:115-127
                for i, extra in zip(zero_like, _equal_shares(left, len(zero_like))):
                    budget[i] += extra
            else:  # every prompt all-solved: the uniform allocation (EU:130-134)
                budget = _equal_shares(total, b)
        return budget, info
    est = sum(int(min(n_up, cost(rate[i], alpha))) for i in effective)  # EU:138-141
    if fallback and est < left:
        others = [i for i in range(b) if i not in effective]
        candidates = zero_like or others  # EU:148-154
        if candidates:
            info["fallback"] = True
            for i, extra in zip(candidates, _equal_shares(left - est, len(candidates))):
                budget[i] += extra
            left = est  # EU:167
    extra = _dp([rate[i] for i in effective], left, n_low, n_up)
    for i, e in zip(effective, extra):
        budget[i] += e
    rest = left - sum(extra)  # more than every prompt at n_up: shared equally, beyond n_up (EU:402-412)
    if rest > 0:
        for i, e in zip(effective, _equal_shares(rest, len(effective))):
            budget[i] += e
    assert sum(budget) == total, (budget, total)
    return budget, info


def allocate(p: Sequence[float | None], total: int, n_low: int = 2, n_up: int = 128, *,
             n_default: int | None = None, n_zero: int | None = None, n_one: int | None = None,
             alpha: float = 0.9, fallback: bool = True) -> list[int]:
    """Rollouts per prompt (a list aligned with `p`, summing to `total`) by the Knapsack RL rule (module doc).

    p: each prompt's success rate in [0, 1], or None for a prompt not seen often enough (it gets `n_default`,
    by default total // len(p), the uniform share). n_low / n_up: the range of a prompt with 0 < p < 1 (the DP's
    N_low / N_up); n_zero / n_one: the rollouts of an all-failed / all-solved prompt (default n_low). alpha: the
    confidence of the fallback's cost estimate; fallback=False never moves budget to all-failed prompts while
    some have 0 < p < 1."""
    return allocate_info(p, total, n_low, n_up, n_default=n_default, n_zero=n_zero, n_one=n_one, alpha=alpha,
                         fallback=fallback)[0]
