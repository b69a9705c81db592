"""Rollouts per prompt (`algo.budget`): uniform (rollout.group_size each) or Knapsack RL.

Knapsack RL (vlmrl/algos/knapsack.py has the rule and its sources): a step's B prompts share B x group_size
rollouts (the uniform total, so runs compare at the same cost) by each prompt's success rate, the mean accuracy of
its recent rollouts (the `accuracy` reward part, which every reward scheme logs: GRPO, DAPO, PAPO and DTPO alike).
A prompt with fewer than `algo.knapsack.min_seen` rollouts so far gets group_size rollouts. The history is kept per
sample id (`Sample.id`), updated once per step with every rollout of the step (resampling tries and filtered groups),
saved in checkpoints (trainer_state.json, key "budget") and restored on resume, so a resumed run allocates as if
never stopped. Under DDP every process adds all processes' results, so the histories stay identical.

Logged per step (`budget_metrics`, `Budget.pop_step`): budget/mean, budget/std, budget/rollouts_min,
budget/rollouts_max (rollouts per prompt), budget/known_frac (prompts with a success rate), budget/fallback (the
excess-budget fallback ran; these two are null with uniform budgets), groups/nonzero_std (fraction of the step's
groups whose total reward varies: the groups with a gradient) and groups/nonzero_std_samples (fraction of
trajectories in such groups: the paper's "effective gradient ratio", KnapsackRL's
verl/trainer/ppo/metric_utils.py:523-530).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from vlmrl.algos.knapsack import allocate_info, success_rate
from vlmrl.algos.filters import group_std

BUDGETS = ("uniform", "knapsack")


class SuccessTracker:
    """Per prompt (sample id): how many rollouts were seen, the `window` most recent results (oldest first) and the
    success-rate estimate after the last update (vlmrl.algos.knapsack.success_rate)."""

    def __init__(self, window: int = 16, min_seen: int = 8):
        self.window, self.min_seen = window, min_seen
        self.prompts: dict[str, dict] = {}

    def estimate(self, key: str) -> float | None:
        """The prompt's success rate, or None while it has been seen fewer than min_seen times."""
        st = self.prompts.get(key)
        if st is None or st["count"] < self.min_seen or st["count"] == 0:
            return None
        return st["p"]

    def observe(self, ids: list[str], results: list[float]) -> None:
        """One step's results (one per trajectory, in [0, 1]): one update per prompt (RD:129-207)."""
        if len(ids) != len(results):
            raise ValueError(f"{len(ids)} sample ids for {len(results)} results")
        by_id: OrderedDict[str, list[float]] = OrderedDict()
        for key, r in zip(ids, results):
            r = float(r)
            if not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise ValueError(f"sample {key!r}: accuracy {r!r} is not in [0, 1]; algo.budget=knapsack needs "
                                 "an accuracy reward part between 0 and 1")
            by_id.setdefault(str(key), []).append(r)
        for key, step in by_id.items():
            st = self.prompts.setdefault(key, {"count": 0, "recent": [], "p": 0.0})
            st["count"] += len(step)
            st["recent"] = (st["recent"] + step)[-self.window:]
            st["p"] = success_rate(st["recent"], step, self.window)

    def state_dict(self) -> dict:
        return {"window": self.window, "min_seen": self.min_seen,
                "prompts": {k: {"count": v["count"], "recent": list(v["recent"]), "p": v["p"]}
                            for k, v in self.prompts.items()}}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.prompts = {str(k): {"count": int(v["count"]), "recent": [float(x) for x in v["recent"]][-self.window:],
                                     "p": float(v["p"])} for k, v in state["prompts"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"the checkpoint's budget state is malformed ({type(e).__name__}: {e})") from None


class Budget:
    """`per_prompt(samples)`: the rollouts of each of a rollout call's prompts; `observe(...)`: feed a step's results
    back (knapsack only). `last_info` holds the latest allocation's fallback flags."""

    def __init__(self, cfg):
        a = cfg.algo
        if a.budget not in BUDGETS:
            raise ValueError(f"algo.budget must be one of {', '.join(BUDGETS)}, got {a.budget!r}")
        self.kind, self.group_size, self.k = a.budget, cfg.rollout.group_size, a.knapsack
        self.tracker = SuccessTracker(self.k.window, self.k.min_seen) if self.kind == "knapsack" else None
        self.known: list[bool] = []  # per prompt of the step: had a success rate
        self.fallback = False

    def per_prompt(self, samples: list) -> list[int]:
        g = self.group_size
        if self.tracker is None:
            self.known += [False] * len(samples)
            return [g] * len(samples)
        p = [self.tracker.estimate(str(getattr(s, "id", ""))) for s in samples]
        k = self.k
        try:
            n, info = allocate_info(p, len(samples) * g, k.n_low, k.n_up, n_default=g, n_zero=k.n_zero,
                                    n_one=k.n_one, alpha=k.alpha, fallback=k.fallback)
        except ValueError as e:
            raise ValueError(f"algo.budget=knapsack: {e} (the total is prompts x rollout.group_size = "
                             f"{len(samples)} x {g}; see algo.knapsack)") from None
        self.known += [x is not None for x in p]
        self.fallback |= info["fallback"]
        return n

    def observe(self, trajs: list, parts: dict, accelerator=None) -> None:
        """Add a step's per-trajectory accuracy to the history (gathered from every process under DDP)."""
        if self.tracker is None:
            return
        if trajs and "accuracy" not in parts:
            raise ValueError("algo.budget=knapsack needs an 'accuracy' reward part (the success of a rollout); "
                             f"the reward gave parts {sorted(parts)}")
        pairs = [(t.sample_id, float(a)) for t, a in zip(trajs, parts.get("accuracy", []))]
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            from accelerate.utils import gather_object

            pairs = [tuple(x) for x in gather_object(pairs)]
        self.tracker.observe([k for k, _ in pairs], [v for _, v in pairs])

    def pop_step(self) -> dict:
        """This step's budget flags (and start the next step afresh); None (logged as null) for uniform budgets."""
        out = {"budget/known_frac": None, "budget/fallback": None}
        if self.tracker is not None:
            out = {"budget/known_frac": sum(self.known) / len(self.known) if self.known else 0.0,
                   "budget/fallback": float(self.fallback)}
        self.known, self.fallback = [], False
        return out

    def state_dict(self) -> dict | None:
        return None if self.tracker is None else self.tracker.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.tracker is None:
            return
        if not state:
            print("note: the checkpoint has no knapsack success rates (saved with algo.budget=uniform?): "
                  "every prompt starts unseen")
            return
        self.tracker.load_state_dict(state)


def budget_metrics(budgets: list[int], total: list[float], group_ids: list[int]) -> dict:
    """Rollouts per prompt (min/mean/std/max) and the share of groups (and of trajectories) whose total reward
    varies, i.e. that get a non-zero group-relative gradient (std >= 1e-4, the zero_std_frac threshold)."""
    m = {}
    if budgets:
        b = torch.tensor(budgets, dtype=torch.float64)
        m = {"budget/mean": b.mean().item(), "budget/std": b.std().item() if len(b) > 1 else 0.0,
             "budget/rollouts_min": int(b.min()), "budget/rollouts_max": int(b.max())}
    if total:
        ids = torch.tensor(group_ids)
        varies = group_std(torch.tensor(total, dtype=torch.float64), ids) >= 1e-4
        sizes = torch.stack([(ids == g).sum() for g in torch.unique(ids)])
        m["groups/nonzero_std"] = varies.double().mean().item()
        m["groups/nonzero_std_samples"] = (sizes[varies].sum() / sizes.sum()).item()
    return m
